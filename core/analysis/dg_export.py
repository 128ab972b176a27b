"""A domain-generalization what-if's results as files a GUIDE / DomainBed training run reads, and the command that
reproduces a ranking. Label text never becomes a path part unsanitised (:func:`safe_part`); the zip download is
built in memory."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from core.analysis.dg import DEFAULT_LEARNER, DGResult


def safe_part(name: str, max_len: int = 60) -> str:
    """``name`` as one file-name part: every run of characters other than ASCII letters, digits, ``-`` and
    ``_`` becomes ``_`` (so no ``/``, ``\\``, ``.``, ``..`` or drive letters survive); empty -> ``_``. Callers
    prefix an index, so two names that sanitise alike still get different parts."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_")[:max_len]
    return s or "_"


def domainbed_files(result: DGResult, dataset_root: str | None = None) -> dict[str, bytes]:
    """The files of :func:`export_domainbed` as ``{relative posix path: bytes}``, built in memory.

    Per held-out (test) domain ``test_env_<i>_<safe name>/`` (``i``: the domain's index in sorted order,
    :func:`safe_part` of its name): ``pseudo_domains.csv`` (``path,pseudo_domain`` of every training image;
    ``path`` relative to ``dataset_root`` when given, as DomainBed lists images), ``centroids.npy`` (float32
    (k, n_features)) and ``centroids.csv``; plus ``setting.json`` with ``test_envs`` (folder -> the domain's
    real name)."""
    import io

    out: dict[str, bytes] = {}
    doms = sorted({f.domain for f in result.folds})
    envs = {}
    root = Path(dataset_root).resolve() if dataset_root else None
    for f in result.folds:
        env = f"test_env_{doms.index(f.domain)}_{safe_part(f.domain)}"
        envs[env] = f.domain
        paths = [result.paths[i] for i in f.train_idx]
        if root is not None:
            paths = [str(Path(p).resolve().relative_to(root)) if Path(p).resolve().is_relative_to(root) else p
                     for p in paths]
        out[f"{env}/pseudo_domains.csv"] = pd.DataFrame(
            {"path": paths, "pseudo_domain": f.pseudo_train.astype(int)}).to_csv(index=False).encode()
        buf = io.BytesIO()
        np.save(buf, f.centroids.astype(np.float32), allow_pickle=False)
        out[f"{env}/centroids.npy"] = buf.getvalue()
        cdf = pd.DataFrame(f.centroids, columns=[f"f{j}" for j in range(f.centroids.shape[1])])
        cdf.insert(0, "pseudo_domain", np.arange(len(f.centroids)))
        out[f"{env}/centroids.csv"] = cdf.to_csv(index=False, float_format="%.7g").encode()
    meta = {"model": result.model, "block": result.block, "timestep": result.timestep,
            "held_out_domains": doms, "test_envs": envs, "n_pseudo_domains": int(len(result.folds[0].centroids)),
            "pseudo_domain_names": {f.domain: f.pseudo_names for f in result.folds},
            "note": "pseudo-domains: k-means (k-means++) on the features of the training domains; each training "
                    "image's pseudo-domain is its nearest centroid (GUIDE). Folder names are index + sanitised "
                    "domain name; test_envs maps them to the real names."}
    out["setting.json"] = json.dumps(meta, indent=2).encode()
    return out


def export_domainbed(result: DGResult, folder: str | Path, dataset_root: str | None = None) -> list[Path]:
    """Write :func:`domainbed_files` under ``folder``; returns the written files. Every path is checked to stay
    inside ``folder`` (label text never leaves it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = folder.resolve()
    written = []
    for rel, data in domainbed_files(result, dataset_root).items():
        p = folder / rel
        if not p.resolve().is_relative_to(base):  # cannot happen with safe_part; a last guard
            raise ValueError(f"refusing to write {rel!r} outside {str(folder)!r}")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        written.append(p)
    return written


def domainbed_zip(result: DGResult, dataset_root: str | None = None) -> bytes:
    """:func:`domainbed_files` as one zip archive, built in memory (nothing is written to disk)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for rel, data in domainbed_files(result, dataset_root).items():
            z.writestr(rel, data)
    return buf.getvalue()


def dg_command(dataset: str, models: Sequence[str], blocks: Sequence[str] | None, timesteps: Sequence[int], *,
               max_per_domain: int | None = None, seed: int = 0, analysis_seed: int = 0,
               n_clusters: int | None = None, out: str = "ranking.csv", learner: str = DEFAULT_LEARNER,
               rank_by: str = "pd_gain") -> str:
    """The ``python -m core dg`` command for these settings."""
    import shlex

    parts = ["python", "-m", "core", "dg", "--dataset", dataset, "--model", ",".join(models),
             "--blocks", ",".join(blocks) if blocks else "all", "--timesteps", ",".join(str(int(t)) for t in timesteps)]
    if max_per_domain:
        parts += ["--max-per-domain", str(max_per_domain)]
    parts += ["--seed", str(seed), "--analysis-seed", str(analysis_seed)]
    if n_clusters:
        parts += ["--clusters", str(n_clusters)]
    if learner != DEFAULT_LEARNER:
        parts += ["--learner", learner]
    if rank_by != "pd_gain":
        parts += ["--rank-by", rank_by]
    return shlex.join(parts + ["--out", out])
