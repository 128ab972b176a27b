"""Opt-in downloads (core.data.download, `python -m core download`) against real local servers on 127.0.0.1:

* a fake Hugging Face Hub (the endpoints huggingface_hub 1.x/2.x's snapshot_download and HfApi call:
  ``/api/{models,datasets}/REPO[/revision/REV]``, ``/api/.../tree/REV``, HEAD/GET ``[datasets/]REPO/resolve/REV/PATH``
  with ``X-Repo-Commit`` / ``ETag`` / ``Content-Length`` and ``Range``) serving a tiny SD model in its repo layout
  plus decoys that must never be requested (pickle weights, an fp16 variant, a root single-file checkpoint, a
  safety checker), and a parquet dataset with image / domain / label columns;
* a plain HTTP server serving zip archives of a DomainBed mini dataset, which can drop the connection half-way
  through a body.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest

from core.data import download as dl
from core.data.datasets import load_dataset

SHA = "0123456789abcdef0123456789abcdef01234567"


# ----------------------------------------------------------------------------------------- servers


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 (random port) with a request log; ``route(handler, path, body)``."""

    def __init__(self, route):
        log = self.log = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                log.append(("GET", unquote(urlparse(self.path).path), self.headers.get("Range")))
                route(self, server, True)

            def do_HEAD(self):
                log.append(("HEAD", unquote(urlparse(self.path).path), self.headers.get("Range")))
                route(self, server, False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _ in self.log if method is None or m == method]


def _send(h, status: int, body: bytes, headers: dict, with_body: bool, drop_after: int | None = None) -> None:
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, str(v))
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if with_body:
        h.wfile.write(body if drop_after is None else body[:drop_after])
        h.wfile.flush()
    if drop_after is not None:
        h.close_connection = True


def _serve_bytes(h, data: bytes, headers: dict, with_body: bool, drop_after: int | None = None) -> None:
    """200, or 206 for ``Range: bytes=N-``."""
    rng = h.headers.get("Range")
    m = re.fullmatch(r"bytes=(\d+)-", rng or "")
    if m and int(m.group(1)) < len(data):
        start = int(m.group(1))
        _send(h, 206, data[start:], {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
              with_body)
    else:
        _send(h, 200, data, headers, with_body, drop_after)


def _hub_route(h, server, with_body):
    path = unquote(urlparse(h.path).path)
    m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
    if m and (m.group(1)[:-1], m.group(2)) in server.repos:
        files = server.repos[(m.group(1)[:-1], m.group(2))]
        body = json.dumps({"id": m.group(2), "sha": SHA, "siblings": [{"rfilename": p} for p in files]}).encode()
        return _send(h, 200, body, {"Content-Type": "application/json"}, with_body)
    m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/[^/]+", path)
    if m and (m.group(1)[:-1], m.group(2)) in server.repos:
        files = server.repos[(m.group(1)[:-1], m.group(2))]
        tree = []
        for p, data in sorted(files.items()):
            e = {"type": "file", "path": p, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
            if p.endswith((".safetensors", ".parquet", ".bin")):
                e["lfs"] = {"oid": server.lfs_override.get(p, hashlib.sha256(data).hexdigest()), "size": len(data),
                            "pointerSize": 134}
            tree.append(e)
        return _send(h, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, with_body)
    m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
    if m:
        kind = "dataset" if m.group(1) else "model"
        data = server.repos.get((kind, m.group(2)), {}).get(m.group(4))
        if data is not None:
            lfs = m.group(4).endswith((".safetensors", ".parquet", ".bin"))
            etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(data).hexdigest()
            return _serve_bytes(h, data, {"X-Repo-Commit": SHA, "ETag": f'"{etag}"'}, with_body)
    _send(h, 404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound", "X-Repo-Commit": SHA}, with_body)


def _png(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


DOMAINS = ("art_painting", "sketch")
CLASSES = ("dog", "horse")


def _pacs_parquet() -> bytes:
    """A parquet file as `datasets` writes PACS: image {bytes, path}, domain (string), label (ClassLabel int)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(d, c, i) for d in DOMAINS for c in range(len(CLASSES)) for i in range(2)]
    images = [{"bytes": _png((40 * k, 10 * c, 200 - 30 * k)), "path": f"{k}.png"} for k, (_, c, _) in enumerate(rows)]
    table = pa.table({"image": images, "domain": [d for d, _, _ in rows], "label": [c for _, c, _ in rows]})
    features = {"image": {"_type": "Image"}, "domain": {"dtype": "string", "_type": "Value"},
                "label": {"names": list(CLASSES), "_type": "ClassLabel"}}
    table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _mini_domainbed(wrapper: str = "kfold", seed: int = 0) -> dict[str, bytes]:
    return {f"{wrapper}/{d}/{c}/{i}.png": _png((seed + 60 * i, 30 * j, 90 * k))
            for k, d in enumerate(("photo", "sketch")) for j, c in enumerate(("cat", "dog")) for i in range(2)}


@pytest.fixture(scope="module")
def hub(tiny_sd_dir):
    files = {p.relative_to(tiny_sd_dir).as_posix(): p.read_bytes() for p in tiny_sd_dir.rglob("*") if p.is_file()}
    decoys = {"unet/diffusion_pytorch_model.bin": b"PICKLE" * 10,
              "unet/diffusion_pytorch_model.fp16.safetensors": b"not-needed" * 10,
              "v1-5-pruned-emaonly.safetensors": b"single-file" * 10,
              "safety_checker/model.safetensors": b"checker" * 10, "safety_checker/config.json": b"{}",
              "README.md": b"# tiny"}
    server = _Server(_hub_route)
    parquet = _pacs_parquet()
    server.repos = {("model", "tiny/sd"): {**files, **decoys},
                    ("model", "tiny/pickles"): {"config.json": b'{"architectures": ["CLIPModel"]}',
                                                "pytorch_model.bin": b"PICKLE"},
                    ("dataset", "flwrlabs/pacs"): {"data/train-00000-of-00001.parquet": parquet, "README.md": b"x"},
                    ("dataset", "tiny/badsum"): {"data/train-00000-of-00001.parquet": parquet}}
    server.lfs_override = {}
    server.decoys = set(decoys)
    yield server
    server.close()


@pytest.fixture()
def online(monkeypatch, tmp_path):
    """Downloads allowed in this process (conftest sets HF_HUB_OFFLINE=1 for every other test), into a data home
    of this test's own."""
    from huggingface_hub import constants

    monkeypatch.setenv("DOMAINLENS_DATA_HOME", str(tmp_path / "data-home"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DOMAINLENS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


# ------------------------------------------------------------------------------------------------- models


def test_model_download_cli_hf_cache_then_loads_by_id_offline(hub, tiny_sd_dir, tmp_path, monkeypatch, online,
                                                              capsys):
    """`python -m core download tiny/sd` with HF_ENDPOINT at the fake Hub (in-process: a subprocess would spend
    ~8 s importing torch): safetensors + configs only, into the HF cache; then the normal loader finds it by id
    with the Hub offline, and the weights are the served bytes."""
    from huggingface_hub import constants

    from core.backbones.registry import load_backbone, resolve_folder
    from core.cli import main

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    hub.log.clear()
    assert main(["download", "tiny/sd", "--no-progress"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "family: sd-unet" in out and "use it with --model tiny/sd" in out
    assert "diffusion_pytorch_model.bin" in out  # listed as not downloaded
    requested = {p.split(f"/resolve/{SHA}/", 1)[1] for p in hub.paths() if "/resolve/" in p}
    assert requested and not requested & hub.decoys, requested & hub.decoys
    assert "unet/diffusion_pytorch_model.safetensors" in requested and "model_index.json" in requested

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.log.clear()
    folder, _ = resolve_folder("tiny/sd")  # offline: from the cache only
    for rel in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "tokenizer/tokenizer.json"):
        assert (folder / rel).read_bytes() == (tiny_sd_dir / rel).read_bytes()
    assert not (folder / "unet" / "diffusion_pytorch_model.bin").exists()
    model = load_backbone("tiny/sd", "cpu")
    assert model.family == "sd-unet" and "up_blocks.1" in model.layers
    assert hub.log == []


def test_model_download_local_dir_progress_and_refusals(hub, tmp_path, online, monkeypatch):
    seen = []
    res = dl.download_model("tiny/sd", local_dir=tmp_path / "m", endpoint=hub.url,
                            progress=lambda done, total: seen.append((done, total)))
    assert res.folder == (tmp_path / "m").resolve() or res.folder == tmp_path / "m"
    assert seen[-1] == (res.bytes, res.bytes) and res.bytes > 0
    assert not any(d in res.files for d in hub.decoys) and "unet/diffusion_pytorch_model.bin" in res.skipped
    from core.backbones.registry import detect_family

    assert detect_family(tmp_path / "m").family == "sd-unet"
    assert not list((tmp_path / "m").rglob("*.bin"))

    hub.log.clear()  # a repository with pickle weights only: refused before any file is fetched
    with pytest.raises(dl.DownloadError, match=r"no safetensors weights.*pytorch_model\.bin.*never unpickles"):
        dl.download_model("tiny/pickles", local_dir=tmp_path / "p", endpoint=hub.url)
    assert not [p for p in hub.paths() if "/resolve/" in p]
    with pytest.raises(dl.DownloadError, match="was not found on"):
        dl.download_model("tiny/missing", endpoint=hub.url, local_dir=tmp_path / "x")
    with pytest.raises(dl.DownloadError, match="over the limit"):
        dl.download_model("tiny/sd", local_dir=tmp_path / "y", endpoint=hub.url, max_bytes=1000)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline stays the default: refused with what to do, nothing asked
    hub.log.clear()
    with pytest.raises(dl.DownloadError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\); unset it"):
        dl.download_model("tiny/sd", endpoint=hub.url, local_dir=tmp_path / "z")
    assert hub.log == []
    assert "offline mode" in dl.unavailable_reason("tiny/sd", endpoint=hub.url)


def test_loader_error_names_the_download_command(monkeypatch):
    from core.backbones.base import ModelError
    from core.backbones.registry import resolve_folder

    with pytest.raises(ModelError, match=r"run `python -m core download domainlens-test/not-cached-2`"):
        resolve_folder("domainlens-test/not-cached-2")


# ----------------------------------------------------------------------------------------------- datasets


def test_hub_parquet_dataset_into_domainbed_layout(hub, tmp_path, online, capsys):
    """PACS by its catalogue name, from the (fake) Hub's flwrlabs/pacs parquet: DomainBed layout, found by name."""
    with pytest.raises(Exception, match=r"not downloaded yet.*python -m core download PACS"):
        load_dataset("PACS")
    seen = []
    res = dl.download_dataset("PACS", endpoint=hub.url, progress=lambda d, t: seen.append((d, t)))
    assert not res.already and res.root == dl.data_home() / "PACS"
    assert seen[-1][0] == seen[-1][1] > 0
    ds = load_dataset("PACS")  # by name, as --dataset PACS and the app's picker use it
    assert ds.domains == list(DOMAINS) and ds.classes == list(CLASSES) and len(ds) == 8
    assert ds.counts() == {d: {c: 2 for c in CLASSES} for d in DOMAINS}
    assert ("PACS", res.root) in dl.installed_datasets()
    from core.cli import main

    assert main(["datasets"]) == 0 and f"PACS             downloaded: {res.root}" in capsys.readouterr().out
    lock = dl.read_lock(dl.data_home())
    parquet = hub.repos[("dataset", "flwrlabs/pacs")]["data/train-00000-of-00001.parquet"]
    assert [v["sha256"] for k, v in lock.items() if "flwrlabs/pacs" in k] == [hashlib.sha256(parquet).hexdigest()]
    assert dl.download_dataset("PACS", endpoint=hub.url).already

    # the Hub lists another SHA-256 than the bytes served: refused, nothing installed, nothing left behind
    hub.lfs_override["data/train-00000-of-00001.parquet"] = "f" * 64
    try:
        with pytest.raises(dl.DownloadError, match=r"Checksum mismatch.*expected SHA-256 f{64}.*nothing was installed"):
            dl.download_hub_dataset("tiny/badsum", "Bad", endpoint=hub.url)
    finally:
        hub.lfs_override.clear()
    assert not (dl.data_home() / "Bad").exists()
    assert not [p for p in dl.data_home().rglob("*") if p.name.endswith(".part") or p.name.startswith(".Bad-")]


@pytest.fixture()
def archive_server():
    server = _Server(lambda h, s, body: _archive_route(h, s, body))
    server.files, server.drop_next = {}, set()
    yield server
    server.close()


def _archive_route(h, server, with_body):
    path = unquote(urlparse(h.path).path)
    data = server.files.get(path)
    if data is None:
        return _send(h, 404, b"not found", {}, with_body)
    drop = None
    if with_body and path in server.drop_next and not h.headers.get("Range"):
        drop = len(data) // 2
        server.drop_next.discard(path)
    _serve_bytes(h, data, {"Content-Type": "application/zip"}, with_body, drop)


def test_archive_interrupted_download_resumes_with_range(archive_server, tmp_path, online, capsys):
    from core.cli import main

    data = _zip(_mini_domainbed())
    archive_server.files["/mini.zip"] = data
    archive_server.drop_next.add("/mini.zip")  # the first response closes the connection half-way through
    url = f"{archive_server.url}/mini.zip"
    args = ["download", url, "--name", "Mini", "--no-progress"]
    assert main(args + ["--retries", "0"]) == 2  # (by default a run retries an interrupted body itself)
    err = capsys.readouterr().err
    assert re.search(r"interrupted after .* \(the connection closed early\).*run the same command again to resume",
                     err), err
    parts = list((dl.data_home() / ".downloads").glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size == len(data) // 2
    assert not (dl.data_home() / "Mini").exists()

    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "installed Mini at" in out and "recorded SHA-256" in out
    gets = [(p, r) for m, p, r in archive_server.log if m == "GET"]
    assert gets == [("/mini.zip", None), ("/mini.zip", f"bytes={len(data) // 2}-")]  # resumed, not restarted
    ds = load_dataset("Mini")
    assert ds.domains == ["photo", "sketch"] and ds.classes == ["cat", "dog"] and len(ds) == 8
    assert dl.read_lock(dl.data_home())[url]["sha256"] == hashlib.sha256(data).hexdigest()
    assert not (dl.data_home() / ".downloads").exists()  # archive and part removed after the install


def test_checksum_mismatch_refused_and_nothing_half_installed(archive_server, tmp_path, online):
    good, other = _zip(_mini_domainbed()), _zip(_mini_domainbed(seed=7))
    archive_server.files["/set.zip"] = good
    url = f"{archive_server.url}/set.zip"
    home = tmp_path / "data"
    with pytest.raises(dl.DownloadError, match=r"Checksum mismatch for .*set\.zip: expected SHA-256 a{64}, got "
                                               + hashlib.sha256(good).hexdigest()):
        dl.download_archive(url, "Set", data_dir=home, sha256="a" * 64)
    assert not (home / "Set").exists() and not list(home.rglob("*.part")) and not list(home.glob(".Set-*"))

    first = dl.download_archive(url, "Set", data_dir=home)  # no checksum published: recorded on first download
    assert any("recorded SHA-256" in n for n in first.notes)
    archive_server.files["/set.zip"] = other  # the source changes afterwards: the recorded checksum refuses it
    with pytest.raises(dl.DownloadError, match="Checksum mismatch"):
        dl.download_archive(url, "Set", data_dir=home, force=True)
    ds = load_dataset(str(home / "Set"))  # the installed copy is untouched
    assert len(ds) == 8 and (home / "Set" / "photo" / "cat" / "0.png").read_bytes() == \
        _mini_domainbed()["kfold/photo/cat/0.png"]


def test_unsafe_archives_are_refused(archive_server, tmp_path, online):
    home = tmp_path / "data"
    evil = _zip({**_mini_domainbed(), "kfold/../../evil.txt": b"owned"})
    archive_server.files["/evil.zip"] = evil
    with pytest.raises(dl.DownloadError, match=r"member 'kfold/\.\./\.\./evil\.txt' has a '\.\.' component"):
        dl.download_archive(f"{archive_server.url}/evil.zip", "Evil", data_dir=home)
    assert not list(tmp_path.rglob("evil.txt")) and not (home / "Evil").exists() and not list(home.glob(".Evil-*"))
    assert not (home / ".downloads").exists()  # the refused archive is not kept either

    tar_path = tmp_path / "link.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        for name, data in _mini_domainbed().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("kfold/photo/cat/passwd.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(dl.DownloadError, match="has a link"):
        dl.install_archive(tar_path, "Link", data_dir=home)
    abs_zip = tmp_path / "abs.zip"
    abs_zip.write_bytes(_zip({"/tmp/x.png": b"x"}))
    with pytest.raises(dl.DownloadError, match="an absolute path"):
        dl.install_archive(abs_zip, "Abs", data_dir=home)
    with pytest.raises(dl.DownloadError, match="over the limit"):
        dl.safe_extract(tmp_path / "abs.zip", tmp_path / "out", max_members=0)
    assert not [p for p in home.iterdir() if not p.name.startswith(("domainlens-", ".downloads"))]

    ok = tmp_path / "ok.tar.gz"  # the same archive without the link installs (manual sources: --archive FILE)
    with tarfile.open(ok, "w:gz") as tf:
        for name, data in _mini_domainbed("OfficeHomeDataset_10072016").items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    res = dl.download_dataset("OfficeHome", archive=ok, data_dir=home)
    assert res.root == home / "OfficeHome" and len(load_dataset(str(res.root))) == 8


def test_manual_sources_say_what_to_run(online):
    with pytest.raises(dl.DownloadError, match=r"VLCS cannot be downloaded automatically.*drive\.google\.com.*"
                                               r"python -m core download VLCS --archive FILE"):
        dl.download_dataset("VLCS")
    assert dl.catalogue_entry("officehome").name == "OfficeHome" and dl.catalogue_entry("nope") is None
    assert "cannot be fetched automatically" in dl.unavailable_reason("TerraIncognita")


def test_app_download_panel(hub, online, monkeypatch):
    """The sidebar's Download panel: off with the reason when offline; online (fake Hub), the button installs
    PACS with the same core call and says where to pick it."""
    from streamlit.testing.v1 import AppTest

    from pages import _download

    def script():
        import streamlit as st

        from pages._download import download_panel

        download_panel(st.sidebar)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _download._unavailable.clear()
    at = AppTest.from_function(script).run()
    assert at.button(key="dl_go").disabled
    assert any("offline mode is on (HF_HUB_OFFLINE=1)" in c.value for c in at.sidebar.caption)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    _download._unavailable.clear()
    at = AppTest.from_function(script).run()
    assert at.selectbox(key="dl_dataset").value == "PACS" and not at.button(key="dl_go").disabled
    at.button(key="dl_go").click().run(timeout=30)
    assert not at.exception and not at.error
    assert "PACS is installed at" in at.success[0].value
    assert len(load_dataset("PACS")) == 8
    _download._unavailable.clear()


def test_model_file_selection_rules():
    sd = ["model_index.json", "v2-1_512-ema-pruned.safetensors", "v2-1_512-ema-pruned.ckpt", "README.md",
          "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
          "unet/diffusion_pytorch_model.bin", "safety_checker/model.safetensors", "tokenizer/merges.txt",
          "tokenizer/vocab.json", "text_encoder/model.fp16-00001-of-00002.safetensors",
          "text_encoder/model.fp16-00002-of-00002.safetensors", "text_encoder/model.safetensors.index.fp16.json",
          "text_encoder_3/spiece.model", "feature_extractor/preprocessor_config.json"]
    assert dl.select_model_files(sd) == [
        "feature_extractor/preprocessor_config.json", "model_index.json",
        "text_encoder/model.fp16-00001-of-00002.safetensors", "text_encoder/model.fp16-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.fp16.json",  # only a variant exists there: kept
        "text_encoder_3/spiece.model", "tokenizer/merges.txt", "tokenizer/vocab.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors"]
    flat = ["model_index.json", "config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
            "scheduler_config.json"]  # google/ddpm-cifar10-32
    assert dl.select_model_files(flat) == ["config.json", "diffusion_pytorch_model.safetensors", "model_index.json",
                                           "scheduler_config.json"]
    clip = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack",
            "merges.txt", "vocab.json", "preprocessor_config.json"]
    assert dl.select_model_files(clip) == ["config.json", "merges.txt", "model.safetensors",
                                           "preprocessor_config.json", "vocab.json"]
