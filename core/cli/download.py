"""``python -m core download MODEL_ID|DATASET``: the only command that fetches anything (see
:mod:`core.data.download`).

* ``download PACS`` (a catalogue name: PACS, VLCS, OfficeHome, TerraIncognita, DomainNet) installs the dataset in
  the DomainBed layout under ``$DOMAINLENS_DATA_HOME`` (or ``--dir``); ``--archive FILE`` installs it from an
  archive fetched by hand.
* ``download OWNER/NAME`` downloads a Hub model's safetensors and configs into the Hugging Face cache (or into the
  folder ``--dir``); with ``--dataset`` it is a Hub parquet dataset with image / domain / label columns.
* ``download URL --name NAME [--sha256 HEX]`` installs a zip / tar archive of a DomainBed folder.
* ``download --list`` lists the catalogue and what is installed.
"""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    d = sub.add_parser("download", help="download a model (safetensors + configs) or a DomainBed dataset (opt-in)",
                       description="The only command that downloads. Offline stays the default everywhere else.")
    d.add_argument("target", nargs="?", default=None,
                   help="a dataset name (PACS, VLCS, OfficeHome, TerraIncognita, DomainNet), a Hub model id "
                        "OWNER/NAME, a Hub dataset id with --dataset, or an archive URL with --name")
    d.add_argument("--list", action="store_true", help="list the dataset catalogue and what is installed")
    d.add_argument("--dir", default=None,
                   help="datasets: the folder that receives <Name>/ (default $DOMAINLENS_DATA_HOME or "
                        "~/.cache/domainlens/datasets); models: the model folder itself (default: the Hugging Face "
                        "cache, where --model OWNER/NAME finds it)")
    d.add_argument("--dataset", action="store_true", help="OWNER/NAME is a Hub dataset of parquet files with "
                                                          "image / domain / label columns")
    d.add_argument("--name", default=None, help="folder name of a dataset from a URL or Hub dataset")
    d.add_argument("--archive", nargs="+", default=None, metavar="FILE",
                   help="install from archive file(s) fetched by hand (no network)")
    d.add_argument("--sha256", default=None, help="the SHA-256 the archive must have (64 hex digits)")
    d.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit; default main)")
    d.add_argument("--endpoint", default=None, help="Hub endpoint (default $HF_ENDPOINT or https://huggingface.co)")
    d.add_argument("--image-column", default="image")
    d.add_argument("--domain-column", default="domain")
    d.add_argument("--label-column", default="label")
    d.add_argument("--split", default=None, help="Hub dataset: only parquet files of this split (e.g. train)")
    d.add_argument("--max-size", default=None,
                   help="largest download accepted, e.g. 50GB (default: 32 GB per file, 100 GB per model)")
    d.add_argument("--force", action="store_true", help="download again and replace an installed dataset")
    d.add_argument("--retries", type=int, default=3,
                   help="datasets: resume an interrupted transfer this many times within the run (default 3)")
    d.add_argument("--no-progress", action="store_true")


def _bar(enabled: bool, desc: str):
    """A byte progress bar on stderr, created on the first update (an early error prints no empty bar)."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    state = {}

    def update(done, total):
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total or 0, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                                      file=sys.stderr)
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update, lambda: state["bar"].close() if "bar" in state else None


def print_catalogue(data_dir=None) -> None:
    from core.data import download as dl

    installed = dict(dl.installed_datasets(data_dir))
    print("datasets (python -m core download NAME):")
    for e in dl.CATALOGUE.values():
        where = installed.get(e.name)
        how = {"hub-parquet": f"Hub parquet {e.hub_repo}", "archives": f"{len(e.sources)} archive(s) over HTTP",
               "manual": "fetch by hand, then --archive FILE"}[e.source_type]
        print(f"  {e.name:15s} {e.description}")
        print(f"  {'':15s} source: {how}; checksums: {e.checksums}")
        print(f"  {'':15s} {'installed: ' + str(where) + ' (--dataset ' + e.name + ')' if where else 'not installed'}")
    extra = [(n, p) for n, p in installed.items() if dl.catalogue_entry(n) is None]
    for n, p in extra:
        print(f"  {n:15s} installed: {p} (--dataset {n})")
    print(f"data home: {dl.data_home(data_dir)}")


def cmd_download(args) -> int:
    from core.data import download as dl

    if args.list or not args.target:
        print_catalogue(args.dir)
        if not args.target and not args.list:
            print("give a dataset name or a Hub model id, e.g. `python -m core download PACS` or "
                  "`python -m core download openai/clip-vit-base-patch16`", file=sys.stderr)
            return 2
        return 0
    max_size = None
    if args.max_size:
        from core.engine.cachetool import parse_size

        max_size = parse_size(args.max_size)
    target = args.target.strip()
    update, close = _bar(not args.no_progress, target)
    try:
        if dl.catalogue_entry(target) is not None and not args.dataset:
            res = dl.download_dataset(target, data_dir=args.dir, endpoint=args.endpoint, archive=args.archive,
                                      progress=update, force=args.force, max_bytes=max_size, retries=args.retries,
                                      sha256=args.sha256)
        elif args.archive:
            res = dl.install_archive(args.archive, args.name or target, data_dir=args.dir, sha256=args.sha256,
                                     force=args.force)
        elif target.startswith(("http://", "https://")):
            if not args.name:
                raise dl.DownloadError("an archive URL needs --name NAME (the dataset's folder name)")
            res = dl.download_archive(target, args.name, data_dir=args.dir, sha256=args.sha256, progress=update,
                                      force=args.force, max_bytes=max_size or dl.MAX_FILE_BYTES, retries=args.retries)
        elif args.dataset:
            res = dl.download_hub_dataset(target, args.name, data_dir=args.dir, endpoint=args.endpoint,
                                          revision=args.revision, image_column=args.image_column,
                                          domain_column=args.domain_column, label_column=args.label_column,
                                          split=args.split, progress=update, force=args.force,
                                          max_bytes=max_size or dl.MAX_EXTRACT_BYTES, retries=args.retries)
        elif dl.HUB_ID.fullmatch(target):
            return _model(dl, target, args, update, max_size)
        else:
            raise dl.DownloadError(f"{target!r} is not a known dataset ({', '.join(dl.CATALOGUE)}), a Hub id "
                                   "OWNER/NAME or an http(s) URL; `python -m core download --list` shows the catalogue")
    finally:
        close()
    if res.already:
        print(f"{res.name} is already installed at {res.root} (--force downloads it again)")
    else:
        for note in res.notes:
            print(f"note: {note}")
        print(f"installed {res.name} at {res.root}")
    print(f"use it with --dataset {res.name if dl.installed_root(res.name, args.dir) == res.root else res.root} "
          "(in the app: the dataset picker lists it)")
    return 0


def _model(dl, target, args, update, max_size) -> int:
    res = dl.download_model(target, local_dir=args.dir, revision=args.revision, endpoint=args.endpoint,
                            progress=update, max_bytes=max_size or dl.MAX_MODEL_BYTES)
    print(f"downloaded {len(res.files)} file(s), {res.bytes / 1e6:.1f} MB, of {res.repo} into {res.folder}")
    if res.skipped:
        print(f"not downloaded (DomainLens does not load them): {', '.join(res.skipped[:6])}"
              + (f" and {len(res.skipped) - 6} more" if len(res.skipped) > 6 else ""))
    try:
        from core.backbones.registry import check_safetensors, detect_family

        check_safetensors(res.folder)
        fam = detect_family(res.folder)
        print(f"family: {fam.family} ({fam.family_label})")
    except ValueError as e:  # ModelError: downloaded, but not a family DomainLens reads
        print(f"warning: {e}", file=sys.stderr)
    print(f"use it with --model {args.dir if args.dir else target}")
    return 0
