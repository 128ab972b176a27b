"""Domain-generalization what-if, leave one domain out, on cached features.

For a feature setting (model, layer, timestep) and each domain held out in turn:

* **pseudo-domains** (GUIDE): k-means (k-means++) fitted on the features of the other domains; every held-out
  image lands on its nearest centroid. Where they land: the share per pseudo-domain and its entropy (0 = all
  on one pseudo-domain; ``entropy_norm`` 1 = spread evenly).
* **class probe**: a standardized logistic regression (fixed seed) trained on the other domains, tested on the
  held-out domain (``heldout_acc``), beside the same probe's in-domain accuracy (stratified k-fold
  cross-validation on the other domains, ``in_domain_acc``). ``gap = in_domain_acc - heldout_acc`` is the
  domain shift the features carry for that domain.
* **pseudo-domain augmentation** (as GUIDE feeds the pseudo-domain to the model): the same probe on the
  features concatenated with the one-hot pseudo-domain (held-out images: their nearest centroid's);
  ``aug_delta`` = held-out accuracy with minus without.

:func:`rank_settings` does this for every (model, layer, timestep) asked for (features from the cache,
computed when missing) and ranks the settings by mean held-out accuracy and by mean gap;
:func:`export_domainbed` writes a setting's pseudo-domain assignment per training image and its centroids
in the form a GUIDE/DomainBed training run reads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.analysis.metrics import _check, kmeans_labels

logger = logging.getLogger(__name__)

FOLD_COLUMNS = ["model", "block", "timestep", "heldout_domain", "n_train", "n_test", "heldout_acc",
                "in_domain_acc", "gap", "heldout_acc_aug", "aug_delta", "landing_entropy", "landing_entropy_norm",
                "top_pseudo_domain", "top_share"]
RANK_COLUMNS = FOLD_COLUMNS + ["rank_heldout_acc", "rank_gap"]
MEAN_ROW = "mean"


def _probe(seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.5, random_state=seed))


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(labels), k), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def nearest_centroid(X: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean) of each row of ``X``."""
    d = ((X[:, None, :].astype(np.float64) - centroids[None, :, :]) ** 2).sum(-1)  # (n, k)
    return d.argmin(1)


@dataclass
class HeldOut:
    """One held-out domain of one setting."""

    domain: str
    train_idx: np.ndarray  # rows of the feature set used for training (the other domains)
    test_idx: np.ndarray  # rows of the held-out domain
    pseudo_train: np.ndarray  # (n_train,) pseudo-domain of each training image
    pseudo_test: np.ndarray  # (n_test,) nearest centroid of each held-out image
    centroids: np.ndarray  # (k, n_features)
    pseudo_names: list[str]  # per pseudo-domain: "pd<i> (mostly <domain>)"
    shares: np.ndarray  # (k,) share of the held-out images landing on each pseudo-domain
    entropy: float  # nats
    heldout_acc: float
    in_domain_acc: float
    heldout_acc_aug: float

    @property
    def gap(self) -> float:
        return self.in_domain_acc - self.heldout_acc

    @property
    def aug_delta(self) -> float:
        return self.heldout_acc_aug - self.heldout_acc

    @property
    def entropy_norm(self) -> float:
        k = len(self.shares)
        return float(self.entropy / np.log(k)) if k > 1 else 0.0


def leave_one_domain_out(features: np.ndarray, domains: Sequence[str], classes: Sequence[str], *,
                         n_clusters: int | None = None, seed: int = 0, n_splits: int = 5,
                         domain_names: Sequence[str] | None = None) -> list[HeldOut]:
    """The what-if for each domain held out in turn (see the module docstring).

    ``n_clusters``: pseudo-domains fitted on the other domains (default: their number, at least 2).
    ``seed``: k-means, the cross-validation split and the logistic regression.
    """
    X, d = _check(features, np.asarray(domains))
    y = np.asarray(classes)
    names = list(domain_names) if domain_names is not None else sorted(set(d.tolist()))
    present = [n for n in names if (d == n).any()]
    if len(present) < 3:
        raise ValueError(f"leave-one-domain-out needs at least 3 domains (2 to train on), got {len(present)}: "
                         f"{present}")
    out = []
    for h in present:
        test = np.flatnonzero(d == h)
        train = np.flatnonzero(d != h)
        if len(np.unique(y[train])) < 2:
            raise ValueError(f"holding out {h!r} leaves fewer than 2 classes to train on")
        k = int(n_clusters or max(2, len(present) - 1))
        k = min(k, len(train))
        pseudo, cent = kmeans_labels(X[train], k, seed)
        pseudo = np.asarray(pseudo, dtype=np.int64)
        cent = np.asarray(cent, dtype=np.float32)
        land = nearest_centroid(X[test], cent)
        shares = np.bincount(land, minlength=k) / max(1, len(land))
        nz = shares[shares > 0]
        entropy = float(-(nz * np.log(nz)).sum())
        pnames = []
        for c in range(k):
            members = d[train][pseudo == c]
            top = pd.Series(members).value_counts().idxmax() if len(members) else "empty"
            pnames.append(f"pd{c} (mostly {top})")
        clf = _probe(seed).fit(X[train], y[train])
        heldout = float((clf.predict(X[test]) == y[test]).mean())
        _, counts = np.unique(y[train], return_counts=True)
        splits = int(min(n_splits, counts.min()))
        if splits >= 2:
            cv = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
            in_dom = float(cross_val_score(_probe(seed), X[train], y[train], cv=cv).mean())
        else:
            in_dom = float("nan")
        Xa_train = np.hstack([X[train], _one_hot(pseudo, k)])
        Xa_test = np.hstack([X[test], _one_hot(land, k)])
        aug = float((_probe(seed).fit(Xa_train, y[train]).predict(Xa_test) == y[test]).mean())
        out.append(HeldOut(h, train, test, pseudo, land, cent, pnames, shares, entropy, heldout, in_dom, aug))
    return out


@dataclass
class DGResult:
    """The what-if of one setting."""

    model: str
    block: str
    timestep: int | None
    folds: list[HeldOut]
    ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    n_model_images: int = 0

    @property
    def setting(self) -> str:
        return self.block if self.timestep is None else f"{self.block} @ t={self.timestep}"

    def frame(self) -> pd.DataFrame:
        """One row per held-out domain plus the mean row (columns :data:`FOLD_COLUMNS`)."""
        rows = []
        for f in self.folds:
            top = int(np.argmax(f.shares))
            rows.append({"model": self.model, "block": self.block, "timestep": self.timestep,
                         "heldout_domain": f.domain, "n_train": len(f.train_idx), "n_test": len(f.test_idx),
                         "heldout_acc": f.heldout_acc, "in_domain_acc": f.in_domain_acc, "gap": f.gap,
                         "heldout_acc_aug": f.heldout_acc_aug, "aug_delta": f.aug_delta,
                         "landing_entropy": f.entropy, "landing_entropy_norm": f.entropy_norm,
                         "top_pseudo_domain": f.pseudo_names[top], "top_share": float(f.shares[top])})
        df = pd.DataFrame(rows, columns=FOLD_COLUMNS)
        mean = {c: df[c].mean() for c in ("heldout_acc", "in_domain_acc", "gap", "heldout_acc_aug", "aug_delta",
                                          "landing_entropy", "landing_entropy_norm", "top_share")}
        mean.update(model=self.model, block=self.block, timestep=self.timestep, heldout_domain=MEAN_ROW,
                    n_train=int(df["n_train"].mean()), n_test=int(df["n_test"].sum()), top_pseudo_domain="")
        return pd.concat([df, pd.DataFrame([mean], columns=FOLD_COLUMNS)], ignore_index=True)

    def landing(self) -> pd.DataFrame:
        """Held-out domain (rows) x pseudo-domain (columns): share of the held-out images landing there."""
        rows = []
        for f in self.folds:
            rows.append({"held-out domain": f.domain, **{n: float(s) for n, s in zip(f.pseudo_names, f.shares)},
                         "entropy (nats)": f.entropy, "entropy / log K": f.entropy_norm})
        return pd.DataFrame(rows)

    def fold(self, domain: str) -> HeldOut:
        for f in self.folds:
            if f.domain == domain:
                return f
        raise ValueError(f"no held-out domain {domain!r}; have {[f.domain for f in self.folds]}")


def dg_whatif(fs, block: str, *, uses_timestep: bool = True, n_clusters: int | None = None,
              seed: int = 0) -> DGResult:
    """:func:`leave_one_domain_out` on one block of a :class:`core.engine.extract.FeatureSet`
    (``uses_timestep=False`` for a model without a timestep: the setting then has none)."""
    if block not in fs.features:
        raise ValueError(f"unknown block {block!r}; the feature set has {list(fs.features)}")
    folds = leave_one_domain_out(fs.features[block], fs.domains, fs.classes, n_clusters=n_clusters, seed=seed,
                                 domain_names=fs.domain_names)
    return DGResult(model=fs.config.model, block=block, timestep=int(fs.config.timestep) if uses_timestep else None,
                    folds=folds, ids=list(fs.ids), paths=list(fs.paths), domains=list(fs.domains),
                    classes=list(fs.classes), n_model_images=fs.n_unet_images)


def rank_frame(results: Sequence[DGResult]) -> pd.DataFrame:
    """Every setting's rows, the settings ordered by mean held-out accuracy (best first); the mean rows carry
    ``rank_heldout_acc`` (1 = highest mean held-out accuracy) and ``rank_gap`` (1 = smallest mean gap)."""
    if not results:
        raise ValueError("no settings to rank")
    frames = [r.frame() for r in results]
    means = pd.DataFrame([f.iloc[-1] for f in frames]).reset_index(drop=True)
    r_acc = means["heldout_acc"].rank(ascending=False, method="min").astype(int)
    r_gap = means["gap"].rank(ascending=True, method="min").astype(int)
    order = sorted(range(len(frames)), key=lambda i: (r_acc[i], r_gap[i], i))
    out = []
    for i in order:
        f = frames[i].copy()
        f["rank_heldout_acc"] = pd.array([pd.NA] * (len(f) - 1) + [int(r_acc[i])], dtype="Int64")
        f["rank_gap"] = pd.array([pd.NA] * (len(f) - 1) + [int(r_gap[i])], dtype="Int64")
        out.append(f)
    df = pd.concat(out, ignore_index=True)
    df["timestep"] = df["timestep"].astype("Int64")
    return df[RANK_COLUMNS]


def mean_rows(ranking: pd.DataFrame) -> pd.DataFrame:
    """The mean rows of :func:`rank_frame`, best first."""
    return ranking[ranking["heldout_domain"] == MEAN_ROW].sort_values(["rank_heldout_acc", "rank_gap"]) \
        .reset_index(drop=True)


def rank_settings(
    dataset: str,
    models: Sequence[str],
    blocks: Sequence[str] | str | None = None,
    timesteps: Sequence[int] = (50,),
    *,
    max_per_domain: int | None = None,
    seed: int = 0,
    analysis_seed: int = 0,
    n_clusters: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 32,
    cache_dir: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    loaded: dict | None = None,
) -> tuple[pd.DataFrame, dict[tuple[str, str, int | None], DGResult]]:
    """The what-if for every (model, block, timestep): the ranking (:func:`rank_frame`) and the results.

    ``blocks``: ``None``/``"all"`` = every block of each model; a model with none of the given blocks (a
    baseline) uses all of its own. ``seed``: image sample and diffusion noise (part of the feature cache
    key); ``analysis_seed``: k-means, cross-validation split and probe."""
    from core.backbones.registry import load_backbone as load_model
    from core.engine.extract import ExtractionConfig, get_features

    loaded = dict(loaded or {})
    wanted = None if blocks is None or blocks == "all" else (
        [b.strip() for b in blocks.split(",") if b.strip()] if isinstance(blocks, str) else list(blocks))
    plan = []
    for m in models:
        model = loaded.get(m) or load_model(m, device, dtype)
        loaded[m] = model
        bl = list(model.blocks) if not wanted else ([b for b in wanted if b in model.blocks] or list(model.blocks))
        ts = [int(t) for t in dict.fromkeys(timesteps)] if model.uses_timestep else [None]
        plan += [(m, model, bl, t) for t in ts]
    from core.analysis.report import check_blocks

    check_blocks(wanted, loaded)
    results: dict[tuple[str, str, int | None], DGResult] = {}
    for i, (m, model, bl, t) in enumerate(plan):
        cfg = ExtractionConfig(dataset=dataset, model=m, timestep=50 if t is None else t, seed=seed,
                               max_per_domain=max_per_domain)
        step = (lambda d, n, i=i: progress(i * n + d, len(plan) * n)) if progress else None
        fs = get_features(cfg, bl, device=device, dtype=dtype, batch_size=batch_size, cache_dir=cache_dir,
                          progress=step, model=model)
        for b in bl:
            r = dg_whatif(fs, b, uses_timestep=t is not None, n_clusters=n_clusters, seed=analysis_seed)
            results[(m, b, t)] = r
    return rank_frame(list(results.values())), results


def export_domainbed(result: DGResult, folder: str | Path, dataset_root: str | None = None) -> list[Path]:
    """GUIDE/DomainBed-ready files of one setting, per held-out (test) domain ``test_env_<i>_<domain>/``:
    ``pseudo_domains.csv`` (``path,pseudo_domain`` of every training image; ``path`` relative to
    ``dataset_root`` when given, as DomainBed lists images) and the centroids (``centroids.npy``, float32
    (k, n_features), and ``centroids.csv``); plus ``setting.json``. Returns the written files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    doms = sorted({f.domain for f in result.folds})
    for f in result.folds:
        sub = folder / f"test_env_{doms.index(f.domain)}_{f.domain.replace(' ', '_')}"
        sub.mkdir(parents=True, exist_ok=True)
        paths = [result.paths[i] for i in f.train_idx]
        if dataset_root:
            paths = [str(Path(p).resolve().relative_to(Path(dataset_root).resolve())) if
                     Path(p).resolve().is_relative_to(Path(dataset_root).resolve()) else p for p in paths]
        pd.DataFrame({"path": paths, "pseudo_domain": f.pseudo_train.astype(int)}).to_csv(
            sub / "pseudo_domains.csv", index=False)
        np.save(sub / "centroids.npy", f.centroids.astype(np.float32), allow_pickle=False)
        cdf = pd.DataFrame(f.centroids, columns=[f"f{j}" for j in range(f.centroids.shape[1])])
        cdf.insert(0, "pseudo_domain", np.arange(len(f.centroids)))
        cdf.to_csv(sub / "centroids.csv", index=False, float_format="%.7g")
        written += [sub / "pseudo_domains.csv", sub / "centroids.npy", sub / "centroids.csv"]
    meta = {"model": result.model, "block": result.block, "timestep": result.timestep,
            "held_out_domains": doms, "n_pseudo_domains": int(len(result.folds[0].centroids)),
            "pseudo_domain_names": {f.domain: f.pseudo_names for f in result.folds},
            "note": "pseudo-domains: k-means (k-means++) on the features of the training domains; each training "
                    "image's pseudo-domain is its nearest centroid (GUIDE)."}
    (folder / "setting.json").write_text(json.dumps(meta, indent=2))
    written.append(folder / "setting.json")
    return written


def layout_labels(result: DGResult, domain: str) -> tuple[list[str], list[str]]:
    """Point labels for a layout of every image of one fold: training images by their pseudo-domain,
    held-out images by the pseudo-domain they land on; and the category order."""
    f = result.fold(domain)
    labels = [""] * (len(f.train_idx) + len(f.test_idx))
    for j, i in enumerate(f.train_idx):
        labels[i] = f"train · {f.pseudo_names[f.pseudo_train[j]]}"
    for j, i in enumerate(f.test_idx):
        labels[i] = f"held-out {domain} → {f.pseudo_names[f.pseudo_test[j]]}"
    cats = [f"train · {n}" for n in f.pseudo_names] + [f"held-out {domain} → {n}" for n in f.pseudo_names]
    return labels, cats


def domainbed_zip(result: DGResult, dataset_root: str | None = None) -> bytes:
    """:func:`export_domainbed`'s files as one zip archive (for a download)."""
    import io
    import tempfile
    import zipfile

    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        files = export_domainbed(result, tmp, dataset_root)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in files:
                z.write(f, Path(f).relative_to(tmp).as_posix())
    return buf.getvalue()


def dg_command(dataset: str, models: Sequence[str], blocks: Sequence[str] | None, timesteps: Sequence[int], *,
               max_per_domain: int | None = None, seed: int = 0, analysis_seed: int = 0,
               n_clusters: int | None = None, out: str = "ranking.csv") -> str:
    """The ``python -m core dg`` command for these settings."""
    import shlex

    parts = ["python", "-m", "core", "dg", "--dataset", dataset, "--model", ",".join(models),
             "--blocks", ",".join(blocks) if blocks else "all", "--timesteps", ",".join(str(int(t)) for t in timesteps)]
    if max_per_domain:
        parts += ["--max-per-domain", str(max_per_domain)]
    parts += ["--seed", str(seed), "--analysis-seed", str(analysis_seed)]
    if n_clusters:
        parts += ["--clusters", str(n_clusters)]
    return shlex.join(parts + ["--out", out])
