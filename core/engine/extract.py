"""The engine: one config -> cached features for a dataset, model, timestep and prompt.

The CLI and the dashboard pages both call :func:`get_features` with an :class:`ExtractionConfig`. The engine
talks to models only through the backbone seam (:class:`core.backbones.base.Backbone`): ``preprocess``,
``encode`` (memoised), ``forward_features`` and ``key_conditioning``; it never names a family.

Batch size never changes a number: on the CPU the model always runs on micro-batches of
:data:`MICRO_BATCH` images at fixed positions of the cache chunk (the last one padded), so the kernels see
the same shapes whatever ``batch_size`` the user picked; on a GPU the batch size is the micro-batch (GPU
kernels are not bit-reproducible across shapes anyway; features agree to float rounding).

The path is overlapped (``overlap=True``, the default): images are decoded ahead (threads, or DataLoader worker
processes with ``workers``), a chunk's pixels go to the device once (pinned memory and an asynchronous copy on
CUDA), its clean encodings stay on the device for the forward passes (a host copy is kept for the latent memo),
pooling happens on the device, and chunk files are written by a background thread while the next chunk is
computed. None of this changes a number: on the CPU the features are bit-identical to ``overlap=False`` (the
earlier, sequential path: latents round-trip through the host, writes in line), which tests check.
``profile=StageTimes(device)`` times each stage (:mod:`core.engine.profile`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from core.backbones.base import Backbone
from core.backbones.registry import DEFAULT_MODEL, load_backbone
from core.data.datasets import Dataset, ImageRecord, load_dataset
from core.engine.cache import CACHE_VERSION, FeatureCache, stable_hash
from core.engine.chunks import ChunkPlan, LayerFeatures, split_evenly
from core.engine.compute import (LATENT_MEMO, MICRO_BATCH, compute_chunk, micro_batch_size,  # noqa: F401
                                 request_of, run_batches)
from core.engine.prompts import ExtractionError, PromptSpec

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (images done, images total)

NOISE_MODES = ("noised", "clean")


@dataclass(frozen=True)
class ExtractionConfig:
    """Everything that defines a set of features (the cache key is derived from it)."""

    dataset: str = "synthetic-pacs:heldout"
    model: str = DEFAULT_MODEL
    timestep: int = 50
    prompt: PromptSpec = field(default_factory=PromptSpec)
    seed: int = 0
    ensemble: int = 1
    resolution: int | None = None  # None: the model's own
    max_per_domain: int | None = None
    max_per_class: int | None = None
    pooling: str = "mean"  # how maps are pooled: the spatial mean (the only choice; in every cache key)
    # token pooling of models that offer a choice (``Backbone.poolings``, e.g. "cls" / "mean" for vision
    # encoders); None: the backbone's documented default. Checked against the backbone before any work.
    token_pooling: str | None = None
    class_label: int | None = None  # class-conditional backbones only; None: the null class
    noise_mode: str = "noised"  # "noised" (x_t) or "clean" (x0 with the timestep embedding), where declared
    storage_dtype: str = "auto"  # float16 / float32 on disk; auto: float16 on CUDA, float32 otherwise

    def __post_init__(self):
        if self.storage_dtype not in ("auto", "float32", "float16"):
            raise ExtractionError(f"storage_dtype must be auto, float32 or float16, got {self.storage_dtype!r}")
        if self.noise_mode not in NOISE_MODES:
            raise ExtractionError(f"`noise_mode` must be noised or clean, got {self.noise_mode!r}")
        if self.pooling != "mean":
            raise ExtractionError(f"pooling must be 'mean' (the paper's spatial mean), got {self.pooling!r}")
        if self.token_pooling is not None and (not isinstance(self.token_pooling, str) or not self.token_pooling):
            raise ExtractionError(f"token_pooling must be None (the model's default) or a pooling name such as "
                                  f"'cls' or 'mean', got {self.token_pooling!r}")
        from core.engine.limits import check_size

        check_size("ensemble", self.ensemble)
        check_size("resolution", self.resolution)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompt"] = {"mode": self.prompt.mode, "text": self.prompt.text}
        if self.token_pooling is None:  # left out at the default: every spec and memo key built before it stays
            del d["token_pooling"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExtractionConfig":
        d = dict(d)
        d["prompt"] = PromptSpec(**d.get("prompt", {}))
        return cls(**d)


@dataclass
class FeatureSet:
    """Features of the images that could be read, in a fixed order (sorted by image id)."""

    ids: list[str]
    paths: list[str]
    domains: list[str]
    classes: list[str]
    domain_names: list[str]
    class_names: list[str]
    features: dict[str, np.ndarray]  # block -> (n_images, channels) float32
    skipped: list[tuple[str, str]]
    config: ExtractionConfig
    cache_key: str
    n_unet_images: int = 0  # images that went through the model in this call (0 = all from cache)

    @property
    def domain_labels(self) -> np.ndarray:
        idx = {d: i for i, d in enumerate(self.domain_names)}
        return np.array([idx[d] for d in self.domains], dtype=np.int64)

    @property
    def class_labels(self) -> np.ndarray:
        idx = {c: i for i, c in enumerate(self.class_names)}
        return np.array([idx[c] for c in self.classes], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)


def _selection(config: ExtractionConfig, dataset: Dataset | None) -> tuple[Dataset, tuple, dict]:
    """(dataset, the selected records, a memo of values derived from them), kept on the dataset object."""
    ds = dataset or load_dataset(config.dataset)
    # a kept dataset (the app keeps its scan) remembers its selections: at 586k images the stratified ranking
    # costs about a second, and every slider move asks for the same selection again; so are the selection's
    # digest and its id/path/domain/class columns (each a pass over 586k records, ~0.1-0.5 s per move)
    memo = ds.__dict__.setdefault("_selections", {})
    k = (config.max_per_domain, config.max_per_class, config.seed, len(ds.records), ds.fingerprint)
    if k not in memo:
        memo[k] = (tuple(ds.subsample(config.max_per_domain, config.max_per_class, config.seed)), {})
    return ds, *memo[k]


def select_images(config: ExtractionConfig, dataset: Dataset | None = None) -> tuple[Dataset, list[ImageRecord]]:
    ds, records, _ = _selection(config, dataset)
    return ds, list(records)


def selection_digest(records: Sequence[ImageRecord], memo: dict | None = None) -> str:
    """The digest of the selected ids (part of the cache key); memoised in ``memo`` (see :func:`_selection`)."""
    if memo is not None and "digest" in memo:
        return memo["digest"]
    d = stable_hash([r.id for r in records], 32)
    if memo is not None:
        memo["digest"] = d
    return d


def with_config_pooling(config: ExtractionConfig, model: Backbone) -> Backbone:
    """``model`` with the config's token pooling (None: the model's default); an :class:`ExtractionError` that
    names the valid choices for a pooling the model does not offer."""
    return model.with_token_pooling(config.token_pooling)


def cache_key(config: ExtractionConfig, model: Backbone, dataset: Dataset, records: Sequence[ImageRecord],
              memo: dict | None = None) -> str:
    """Everything that changes the numbers; the conditioning part holds exactly what the backbone declares
    (the token pooling, for a backbone that offers a choice, enters through its ``key_conditioning``)."""
    model = with_config_pooling(config, model)
    return stable_hash({
        "v": CACHE_VERSION,
        "model": model.identity,
        "dtype": model.key_dtype(),
        "dataset": dataset.fingerprint,
        "selection": selection_digest(records, memo),
        "resolution": config.resolution or model.resolution,
        **model.key_conditioning(config.timestep, (config.prompt.mode, config.prompt.text), config.class_label,
                                 config.seed, config.ensemble, config.noise_mode),
        "pooling": config.pooling,
    }, 32)


def storage_dtype(config: ExtractionConfig, model) -> str:
    """The dtype features are stored in: ``config.storage_dtype``, or for ``auto`` float16 when the model runs on
    CUDA (half the disk and read time; NMI within 0.005 of float32, bench 13) and float32 otherwise."""
    if config.storage_dtype != "auto":
        return config.storage_dtype
    dev = getattr(model, "device", None)
    return "float16" if getattr(dev, "type", str(dev)) == "cuda" else "float32"


def feature_key(config: ExtractionConfig, model, dataset: Dataset, records: Sequence[ImageRecord],
                memo: dict | None = None) -> str:
    """The setting's cache key: :func:`cache_key`, extended with the storage dtype only when it is not float32
    (so every float32 key is unchanged)."""
    key = cache_key(config, model, dataset, records, memo)
    st = storage_dtype(config, model)
    return key if st == "float32" else stable_hash({"base": key, "storage": st}, 32)


def _prepare(config, blocks, model, device, dtype, batch_size, cache_dir, dataset):
    """Validation, image selection and the setting's chunk plan (shared by get_features and extract_chunks)."""
    from core.engine.limits import check_size

    check_size("batch_size", batch_size)
    model = with_config_pooling(config, model or load_backbone(config.model, device, dtype))
    if blocks is None or blocks == "all":
        blocks = list(model.blocks)
    elif isinstance(blocks, str):
        blocks = [b.strip() for b in blocks.split(",") if b.strip()]
    unknown = [b for b in blocks if b not in model.blocks]
    if unknown:
        raise ExtractionError(f"unknown block(s) {unknown} for model {config.model!r}; it has {model.blocks}")
    if not blocks:
        raise ExtractionError(f"no block given; pass 'all' or some of {model.blocks}")
    blocks = sorted(blocks, key=model.blocks.index)
    model.check_request(request_of(config, [config.prompt.example()]))
    ds, records, memo = _selection(config, dataset)
    key = feature_key(config, model, ds, records, memo)
    plan = ChunkPlan(FeatureCache(cache_dir), key, records, blocks, storage_dtype(config, model), memo=memo)
    return model, ds, plan


def _run_chunks(plan, todo, config, model, ds, batch_size, progress, workers, total=None, done0=0,
                profile=None, overlap: bool = True) -> int:
    """The engine's loop over the missing chunks of ``plan`` (``todo``: chunk -> missing blocks)."""
    if not todo:
        return 0
    from core.engine.profile import timed_pooling
    from core.engine.loader import chunk_decoder

    plan.cache.write_meta(plan.key, {"config": config.to_dict(), "model_identity": model.identity,
                                     "dataset_fingerprint": ds.fingerprint, "dataset_root": str(ds.root),
                                     "n_images": len(plan.records), "blocks": list(model.blocks),
                                     "storage_dtype": plan.storage, "chunk": plan.chunk})
    resolution = config.resolution or model.resolution
    from core.engine.limits import activation_bytes_per_image, check_memory

    from core.engine.loader import PREFETCH

    check_memory(resolution, min(len(plan.records), plan.chunk), micro_batch_size(model, batch_size),
                 per_image_activations=activation_bytes_per_image(model, resolution),  # before decoding anything
                 chunks_decoded=1 + PREFETCH * max(0, int(workers)))

    def compute(ci, recs, blocks, pool, progress_in_chunk):
        return compute_chunk(model, config, recs, blocks, resolution, batch_size, pool, progress_in_chunk,
                              ds.fingerprint, profile, overlap)

    on_cuda = getattr(getattr(model, "device", None), "type", "") == "cuda"
    if profile is not None:
        profile.workers = workers
    with timed_pooling(model, profile):
        # overlapped, a chunk's pixels are stacked into one pinned buffer (compute.chunk_inputs): workers need not pin
        return plan.run(todo, compute, progress, workers, chunk_decoder(model, resolution), total=total,
                        done0=done0, pin_memory=on_cuda and not overlap, profile=profile,
                        background_writes=overlap)


def get_features(
    config: ExtractionConfig,
    blocks: Sequence[str] | str | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 32,
    cache_dir: str | None = None,
    progress: ProgressFn | None = None,
    model: Backbone | None = None,
    dataset: Dataset | None = None,
    workers: int = 0,
    only_cached: bool = False,
    profile=None,
    overlap: bool = True,
) -> FeatureSet:
    """Features for ``blocks`` (a list, ``"all"`` or None = all) from the cache, computing what is missing.

    Missing chunks are computed in batches of ``batch_size`` (which never changes the numbers) and
    written as they complete, so an interrupted call resumes where it stopped. ``workers`` > 0 decodes
    images in that many DataLoader worker processes. The returned ``features`` mapping reads a layer from the
    cache when it is first accessed (only that layer's files). ``only_cached``: raise :class:`NotCached` instead
    of computing anything. ``profile`` (a :class:`core.engine.profile.StageTimes`) collects seconds per stage;
    ``overlap=False`` runs the sequential path (same numbers; see the module docstring).
    """
    model, ds, plan = _prepare(config, blocks, model, device, dtype, batch_size, cache_dir, dataset)
    total = len(plan.records)
    todo = plan.missing(range(plan.n_chunks))
    if todo and only_cached:
        raise NotCached(f"{len(todo)} of {plan.n_chunks} chunk(s) of this setting are not cached")
    done0 = total - sum(len(plan.chunk_records(ci)) for ci in todo)
    n_model = _run_chunks(plan, todo, config, model, ds, batch_size, progress, workers, total, done0, profile,
                          overlap)
    if progress and not todo:
        progress(total, total)
    skipped = plan.skipped()
    if skipped:
        kept = plan.kept_records()
        cols = ([r.id for r in kept], [r.path for r in kept], [r.domain for r in kept], [r.cls for r in kept])
        _check_every_domain_readable(ds, plan.records, cols[0], skipped)
    else:  # every image readable: the selection's columns, built once per selection (memo)
        if "columns" not in plan.memo:
            recs = plan.records
            plan.memo["columns"] = (tuple(r.id for r in recs), tuple(r.path for r in recs),
                                    tuple(r.domain for r in recs), tuple(r.cls for r in recs))
        cols = [list(c) for c in plan.memo["columns"]]
    fs = FeatureSet(
        ids=cols[0], paths=cols[1], domains=cols[2], classes=cols[3], domain_names=list(ds.domains),
        class_names=list(ds.classes), features={}, skipped=skipped, config=config, cache_key=plan.key,
        n_unet_images=n_model,
    )

    def repair(ci, block):  # a chunk that fails its checksum when read: recompute it
        fs.n_unet_images += _run_chunks(plan, {ci: [block]}, config, model, ds, batch_size, None, 0)

    fs.features = LayerFeatures(plan, repair)
    return fs


class NotCached(ExtractionError):
    pass


@dataclass
class ExtractStats:
    """What one process (rank or shard) of an extraction did."""

    rank: int
    world: int
    computed: int  # images this process ran through the model
    n_images: int  # the selection
    chunks: int  # chunks this process was given
    cache_key: str


def extract_chunks(
    config: ExtractionConfig,
    blocks: Sequence[str] | str | None = None,
    *,
    split=None,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 32,
    cache_dir: str | None = None,
    progress: ProgressFn | None = None,
    model: Backbone | None = None,
    dataset: Dataset | None = None,
    workers: int = 0,
    profile=None,
    overlap: bool = True,
) -> ExtractStats:
    """This process's share of an extraction (:class:`core.engine.distributed.Split`; None = everything).

    In a process group every rank finds the missing chunks, then the missing chunks (not images: chunk files
    stay whole) are dealt out contiguously without padding, so a re-run after a rank died shares out only
    what is left. A ``--shard i/n`` job (no process group) takes the i-th contiguous slice of all chunks and
    computes what is missing in it.
    """
    from core.engine.distributed import Split

    split = split or Split()
    model, ds, plan = _prepare(config, blocks, model, device, dtype, batch_size, cache_dir, dataset)
    if split.group:
        todo = plan.missing(range(plan.n_chunks))
        split.barrier()  # every rank has looked before any rank writes
        mine = split_evenly(sorted(todo), split.rank, split.world)
        if progress is not None and todo:  # rank 0 reports every rank's progress, from the shared folder
            from core.engine.distributed import FolderProgress

            layer = todo[min(todo)][-1]
            folder = plan.cache.layer_chunk_path(plan.key, layer, 0).parent
            fp = FolderProgress(folder, plan.chunk, sum(len(plan.chunk_records(ci)) for ci in todo),
                                FolderProgress.count(folder))
            progress = (lambda d, t, _p=progress: _p(*fp())) if split.is_main else None
        todo = {ci: todo[ci] for ci in mine}
    else:
        mine = split_evenly(range(plan.n_chunks), split.rank, split.world)
        todo = plan.missing(mine)
    n_model = _run_chunks(plan, todo, config, model, ds, batch_size, progress, workers, profile=profile,
                          overlap=overlap)
    if split.group:
        split.barrier()
        if split.is_main:  # every rank's chunks are in: one pass over the headers writes the layer indexes
            plan.missing(range(plan.n_chunks))
    return ExtractStats(split.rank, split.world, n_model, len(plan.records), len(mine), plan.key)


def _check_every_domain_readable(ds: Dataset, records, ids, skipped) -> None:
    """A domain whose every selected image failed to decode would silently drop out of the scores."""
    if not skipped:
        return
    idset = set(ids)
    have = {r.domain for r in records if r.id in idset}
    lost = sorted({r.domain for r in records} - have)
    if lost:
        why = "; ".join(f"{i}: {w}" for i, w in skipped[:3])
        raise ExtractionError(
            f"no image of domain(s) {lost} could be read ({why}{' ...' if len(skipped) > 3 else ''}); replace "
            f"or remove the unreadable files (`python -m core validate {ds.root}` lists them) or drop the domain.")


def iter_settings(timesteps: Sequence[int], prompts: Sequence[PromptSpec], base: ExtractionConfig):
    for p in prompts:
        for t in timesteps:
            yield replace(base, timestep=int(t), prompt=p)
