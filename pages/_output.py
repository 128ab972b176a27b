"""What the pages show: the four scores and the layout-faithfulness metrics, point labels and hover texts,
selections, image grids, image-mode thumbnails and spatial feature maps."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import streamlit as st

from core import figures
from core.engine.extract import ExtractionConfig
from core.analysis.metrics import Scores

from pages._access import cluster_labels, scanned_dataset, thumbnail
from pages._progress import run_core
from pages._env import APP_PATH


def labels_for(fs, colour: str, block: str, seed: int) -> tuple[list[str], list[str]]:
    """Point labels and their category order for a colouring."""
    if colour == "class":
        return list(fs.classes), list(fs.class_names)
    if colour == "cluster":
        k = len(fs.domain_names)
        lab = cluster_labels(fs.features[block], k, seed)
        return [f"cluster {c}" for c in lab], [f"cluster {c}" for c in range(k)]
    return list(fs.domains), list(fs.domain_names)


def hover_texts(fs) -> list[str]:
    return [f"<b>{d}</b> · {c}<br>{i}" for d, c, i in zip(fs.domains, fs.classes, fs.ids)]


PLOT_CONFIG = {"displaylogo": False,
               "toImageButtonOptions": {"format": "png", "scale": 2, "filename": "domainlens"}}


def selected_rows(event: Any) -> list[int]:
    """Row indices (``customdata[0]``) of the points selected in a :func:`core.figures.scatter` chart."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return []
    rows = []
    for p in points or []:
        cd = p.get("customdata")
        if cd is None:
            continue
        if isinstance(cd, dict):  # the browser sends a one-element array as {"0": row}
            cd = cd.get("0", next(iter(cd.values()), None))
        elif isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if cd is not None:
            rows.append(int(cd))
    return list(dict.fromkeys(rows))


def _fmt_nmi(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def _fmt(v: float, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.1%}" if pct else f"{v:.3f}"


def score_metrics(scores: Scores, n_domains_: int, container: Any = st, reference: Scores | None = None) -> None:
    """The four scores as ``st.metric``s (in ``container``, or one per container of a list of four);
    with ``reference``, deltas against it."""
    slots = list(container) if isinstance(container, (list, tuple)) else [container] * 4

    def delta(a: float, b: float | None, pct: bool = False) -> str | None:
        if b is None or any(isinstance(x, float) and math.isnan(x) for x in (a, b)):
            return None
        return f"{(a - b) * (100 if pct else 1):+.1f} pp" if pct else f"{a - b:+.3f}"

    ref = reference
    runs = f"{scores.n_init} k-means run{'s' if scores.n_init != 1 else ''} per seed" if scores.n_init else ""
    seeds = scores.n_seeds or 5
    slots[0].metric("Domain NMI", _fmt_nmi(scores.domain_nmi, scores.domain_nmi_std),
                     delta=delta(scores.domain_nmi, ref and ref.domain_nmi),
                     help="k-means (K = number of domains) on the full features against the domain labels; "
                          f"mean ± std over {seeds} k-means seeds ({runs or 'see Settings'}). Higher: the features "
                          "separate domains. AMI: the same corrected for chance (0 = chance, 1 = perfect); chance: "
                          "the NMI the same clusters reach against shuffled labels; 95 % interval over k-means "
                          "seeds and a bootstrap over images (docs/METHODS.md).")
    chance_caption(slots[0], scores, "domain")
    slots[1].metric("Class NMI", _fmt_nmi(scores.class_nmi, scores.class_nmi_std),
                     delta=delta(scores.class_nmi, ref and ref.class_nmi), delta_color="inverse",
                     help="The same with K = number of classes. For a domain tool, lower is purer. With many "
                          "classes per image even noise features score well above 0: read the AMI and the "
                          "chance floor.")
    chance_caption(slots[1], scores, "class")
    slots[2].metric("Domain predictability", _fmt(scores.domain_probe_acc, pct=True),
                     delta=delta(scores.domain_probe_acc, ref and ref.domain_probe_acc, pct=True),
                     help=f"5-fold cross-validated logistic-regression accuracy predicting the domain "
                          f"(chance ≈ {1 / max(1, n_domains_):.0%}).")
    slots[3].metric("Domain silhouette", _fmt(scores.domain_silhouette),
                     delta=delta(scores.domain_silhouette, ref and ref.domain_silhouette),
                     help="Silhouette of the domain labels (cosine, standardized features), from -1 to 1.")


def chance_line(scores: Scores, which: str = "domain") -> str:
    """"AMI 0.41 · chance 0.003 · 95 % [0.39, 0.44]" for the domain or class NMI of ``scores`` ("" when the
    scores predate AMI), with a "within chance" mark when the NMI is within its chance floor's spread."""
    ami = getattr(scores, f"{which}_ami")
    if ami is None or math.isnan(ami):
        return ""
    parts = [f"AMI {ami:.3f}"]
    chance = getattr(scores, f"{which}_nmi_chance")
    if not math.isnan(chance):
        parts.append(f"chance {chance:.3f}")
    lo, hi = getattr(scores, f"{which}_nmi_lo"), getattr(scores, f"{which}_nmi_hi")
    if not (math.isnan(lo) or math.isnan(hi)):
        parts.append(f"95 % [{lo:.3f}, {hi:.3f}]")
    line = " · ".join(parts)
    if getattr(scores, f"{which}_within_chance"):
        line += " · :orange[**within chance**]"
    return line


def chance_caption(container: Any, scores: Scores, which: str = "domain") -> None:
    line = chance_line(scores, which)
    if line:
        container.caption(line)


def image_grid(fs, rows: Sequence[int], limit: int = 48, size: int = 96, container: Any = st) -> None:
    """Thumbnails of ``rows`` with their domain and class."""
    rows = list(rows)
    shown = rows[:limit]
    container.caption(f"{len(rows)} image(s) selected" + (f"; showing the first {limit}" if len(rows) > limit else ""))
    container.image([thumbnail(fs.paths[i], size) for i in shown],
                    caption=[f"{fs.domains[i]} · {fs.classes[i]}" for i in shown], width=size)


def faithfulness_metrics(f, container: Any = st) -> None:
    """Trustworthiness and the k-NN domain accuracy in 2-D vs the full features, as two ``st.metric``s."""
    slots = list(container) if isinstance(container, (list, tuple)) else [container] * 2
    sample = f" (on a random {f.n_trust:,} of the {f.n_images:,} images)" if f.n_trust < f.n_images else ""
    slots[0].metric("Layout trustworthiness", f"{f.trustworthiness:.3f}",
                    help=f"scikit-learn's trustworthiness with k = {f.k}{sample}: 1 when each image's nearest "
                         "neighbours in the picture are also near it in the full feature space; lower when the "
                         "picture puts far-apart images together. Judge clusters in the picture by it.")
    slots[1].metric("k-NN domain accuracy, 2-D", _fmt(f.knn_acc_2d, pct=True),
                    delta=f"{(f.knn_acc_2d - f.knn_acc_full) * 100:+.1f} pp vs full features ({f.knn_acc_full:.1%})",
                    delta_color="off",
                    help=f"Leave-one-out {f.k}-nearest-neighbour vote for the domain, in the 2-D layout vs in the "
                         f"full feature space (chance ≈ {f.chance:.0%}"
                         + (f"; on a random {f.n_knn:,} of the {f.n_images:,} images" if 0 < f.n_knn < f.n_images
                            else "") + "). Far below the full-space figure: the picture hides domain structure the "
                         "scores see; far above: it exaggerates it.")


def point_images(fs, embedding: np.ndarray, size: int = 64) -> dict[int, str]:
    """{row: thumbnail URI} for image mode: every image up to the cap, else one per region of the layout."""
    return {int(r): thumbnail(fs.paths[int(r)], size) for r in figures.image_rows(embedding)}


def spatial_panel(model: Any, config: ExtractionConfig, block: str, fs, rows: Sequence[int], size: int = 160,
                  per_row: int = 1, show_image: bool = True, key: str = "spatial") -> None:
    """Beside a clicked image (or under a small selection): the block's spatial feature map in the colours of
    a PCA fitted on that block's maps over a sample of the dataset (core.analysis.spatial)."""
    from core.analysis import spatial

    if len(rows) > spatial.MAX_SHOWN:
        st.caption(f"Spatial maps of the first {spatial.MAX_SHOWN} of {len(rows)} selected images.")
    rows = list(rows)[:spatial.MAX_SHOWN]
    view = run_core(spatial.spatial_view, model, config, scanned_dataset(config.dataset), block,
                    [fs.ids[i] for i in rows], label=f"Fitting the colours of {block}'s maps",
                    sample_size=spatial.DEFAULT_SAMPLE, stop=False)
    if view is None:  # e.g. a layer whose output has no spatial layout: the warning says so
        return
    ev = ", ".join(f"{v:.0%}" for v in view.pca.explained)
    per = 2 if show_image else 1
    cols = st.columns(per * per_row, gap="small")
    for k, (r, rgb) in enumerate(zip(view.records, view.rgb)):
        c1, c2 = cols[per * (k % per_row)], cols[per * (k % per_row) + per - 1]
        if show_image:
            c1.image(thumbnail(r.path, size), width=size, caption=f"{r.domain} · {r.cls}")
        c2.image(spatial.map_image(rgb, size), width=size, caption=f"{block} map {rgb.shape[1]}×{rgb.shape[0]}")
    st.caption(f"Colours: the first 3 principal components of {block}'s map pixels over {len(view.pca.sample_ids)} "
               f"images spread over the domains (variance {ev}); the same colours mean similar features in "
               "every image.")
    st.download_button("spatial maps (PNG)", data=spatial.grid_png(view), file_name=f"{key}-maps.png",
                       mime="image/png", on_click="ignore", key=f"{key}-png", icon=":material/download:")


if __name__ == "__main__":  # only when Streamlit runs this file as a page (a cold-start URL): not one
    st.switch_page(str(APP_PATH))
