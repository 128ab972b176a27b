"""What the DomainLens pages share, as one namespace (``from pages import _common as ui``). The code lives
in small modules next to this one:

* :mod:`pages._env`: where the app may read (data and model roots, typed paths and models), defaults from
  the environment, the device label, :data:`EXPECTED_ERRORS`;
* :mod:`pages._access`: cached access to models, datasets, thumbnails, k-means labels; the UMAP warm-up;
* :mod:`pages._sidebar`: the shared sidebar (dataset and model choice) and the :class:`Settings` it yields;
* :mod:`pages._controls`: model and setting controls (layer, timestep, prompt, class label, noise mode, token
  pooling) for what a backbone declares, and the layout / colour / image-mode controls;
* :mod:`pages._progress`: running a core call with a progress bar, image counts and ETA;
* :mod:`pages._output`: score and faithfulness metrics, point labels, selections, image grids, spatial maps;
* :mod:`pages._exports`: the reproduce command and configuration, and the download panel.

Pages stay thin (widgets -> one config -> a core call -> st output); every number comes from ``core``.
Caching: loaded models in ``st.cache_resource`` keyed by plain strings; small derived arrays and
thumbnails in ``st.cache_data`` with every input an explicit argument; the on-disk cache in ``core`` is
the source of truth for features, layouts and scores. ``st.session_state`` holds UI choices only.
"""

from __future__ import annotations

import streamlit as st

from pages._env import (APP_PATH, EXPECTED_ERRORS, HUB_ID, data_roots, default_max_per_domain,
                        default_model_name, device_label, find_datasets, model_roots, PathNotAllowed,
                        resolve_inside_roots, resolve_typed_model)  # noqa: F401
from pages._access import (cluster_labels, dataset_summary, get_model, png_export_available, scanned_dataset,
                           start_umap_warmup, thumbnail, warm_umap)  # noqa: F401
from pages._sidebar import (DEFAULT_TIMESTEP, OTHER_MODEL, SETTINGS_KEY, TYPED_PATH, contrast_model,
                            current_model, explain_model_error, family_label, model_choices, model_label,
                            n_domains, Settings, settings, short_model_name, sidebar)  # noqa: F401
from pages._controls import (COLOUR_LABELS, PROMPT_LABELS, REDUCER_LABELS, TEMPLATE, colour_control,
                             ensure_state, image_mode_control, layer_label, pooling_control,
                             reduction_controls, setting_controls)  # noqa: F401
from pages._progress import progress_text, run_core  # noqa: F401
from pages._output import (PLOT_CONFIG, faithfulness_metrics, hover_texts, image_grid, labels_for,
                           point_images, score_metrics, selected_rows, spatial_panel)  # noqa: F401
from pages._exports import cli_command, export_panel, npy_bytes, reproduce_spec, scores_frame  # noqa: F401


if __name__ == "__main__":  # only when Streamlit runs this file as a page (a cold-start URL /_common): not one
    st.switch_page(str(APP_PATH))
