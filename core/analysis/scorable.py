"""What the scores can say about a given set of labels, checked where the scores are computed
(:func:`defined_scores` decorates :func:`core.analysis.sweep.cached_scores`, which the sweep, the report,
Explore and the views all use).

* **Too few images per domain** is an error with the reason and the fix, before any clustering: when no
  domain holds two images (every image its own domain), k-means with K = number of domains puts each image in
  its own cluster (NMI is 1 by construction) and the silhouette is undefined (scikit-learn's own message,
  "Number of labels is 2. Valid values are 2 to n_samples - 1", said nothing about the data).
* **One class (or one domain)**: NMI against a single label is undefined, not 0 (there is no grouping to
  find: the entropy of the labels is 0, and 0/0 has no value). The class (domain) NMI and every score derived
  from it are NaN, which every table prints as "nan" / leaves empty, instead of a 0.000 that reads as "the
  features carry no class information". :func:`undefined_reason` gives the sentence to show beside it.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import fields, replace
from collections.abc import Sequence
from typing import Any


def check_scorable(domain_labels: Sequence[Any]) -> None:
    """Raise ``ValueError`` (the reason and the fix) when the images cannot be scored against their domains:
    no image at all, or no domain with at least 2 images."""
    counts = Counter(str(d) for d in domain_labels)
    if not counts:
        raise ValueError("no images to score; check the dataset and the image selection")
    if max(counts.values()) < 2:
        raise ValueError(f"too few images per domain to score: {len(counts)} domain(s) with 1 image each; the "
                         "scores compare images within and across domains (k-means, silhouette, probe), so use "
                         "at least 2 images per domain (--max-per-domain 2 or more; 20+ for steady scores)")


def undefined_reason(n_labels: int, what: str = "class") -> str | None:
    """Why the ``what`` NMI is undefined for ``n_labels`` distinct labels, or None when it is defined."""
    if n_labels >= 2:
        return None
    return (f"{what} NMI is undefined with {n_labels} {what}{'es' if what == 'class' else 's'}: a single label has "
            "no grouping to recover (0/0), so it is shown as nan, not 0")


def mark_undefined(scores, domain_labels: Sequence[Any], class_labels: Sequence[Any]):
    """``scores`` (a dataclass such as :class:`core.analysis.metrics.Scores`) with every float field of the
    class (domain) scores set to NaN when there is only one class (domain): see the module doc."""
    nan = {}
    for prefix, labels in (("class_", class_labels), ("domain_", domain_labels)):
        if len({str(x) for x in labels}) < 2:
            nan.update({f.name: math.nan for f in fields(scores)
                        if f.name.startswith(prefix) and isinstance(getattr(scores, f.name), float)})
    return replace(scores, **nan) if nan else scores


def defined_scores(fn):
    """Decorate a scoring function ``fn(fs, ...) -> Scores`` of a :class:`core.engine.extract.FeatureSet`:
    :func:`check_scorable` before it runs, :func:`mark_undefined` on what it returns (fresh or cached)."""

    @functools.wraps(fn)
    def wrapper(fs, *args, **kwargs):
        check_scorable(fs.domain_labels)
        return mark_undefined(fn(fs, *args, **kwargs), fs.domain_labels, fs.class_labels)

    return wrapper
