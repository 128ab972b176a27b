"""Tests for the dataset layer: core/datasets.py (scan, manifest, validation, decoding, subsample,
fingerprint) and core/builtin.py (generated built-in datasets).

Every dataset here is built in a tmp folder with PIL; the built-ins are generated once per session into
a tmp_path_factory folder (never into ~/.cache).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import builtin
from core.data.datasets import (
    DEFAULT_MAX_PIXELS,
    Dataset,
    DatasetError,
    ImageRecord,
    UnreadableImage,
    load_dataset,
    load_rgb,
    read_manifest,
    scan_folder,
    stratified_subsample,
    to_rgb,
    verify_images,
)

# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True)
def _isolated_data_home(tmp_path, monkeypatch):
    """Stricter than conftest: a test that generates implicitly gets its own empty data home."""
    monkeypatch.setenv("DOMAINLENS_DATA_HOME", str(tmp_path / "_data_home"))


def img(path: Path, color=(200, 30, 30), size=(8, 8), mode="RGB", **save_kw) -> Path:
    """Write a small solid-colour image; the format follows the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save_kw)
    return path


def png_bytes(color=(10, 200, 10), size=(16, 16)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, color).save(b, "PNG")
    return b.getvalue()


def noisy_bytes(fmt: str, size=(48, 48), seed=0) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(a).save(b, fmt)
    return b.getvalue()


def header_only_png(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h pixels but holds no pixel data (cheap way to test size limits)."""

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def make_tree(root: Path, layout: dict[str, dict[str, int]], ext=".png") -> Path:
    """``{domain: {class: n_images}}`` -> DomainBed folder with distinct-colour images."""
    k = 0
    for d, classes in layout.items():
        for c, n in classes.items():
            (root / d / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                k += 1
                img(root / d / c / f"img_{i:03d}{ext}", color=(k % 256, (k * 7) % 256, (k * 13) % 256))
    return root


def ids(records) -> list[str]:
    return [r.id for r in records]


def skipped_ids(ds: Dataset) -> dict[str, str]:
    return dict(ds.skipped)


def pixel_hash(path) -> str:
    with Image.open(path) as im:
        return hashlib.sha256(np.asarray(im.convert("RGB")).tobytes()).hexdigest()


# --------------------------------------------------------------------------------- DomainBed layout


def test_domainbed_domains_and_classes_are_sorted_folder_names(tmp_path):
    root = make_tree(tmp_path / "ds", {
        "sketch": {"zebra": 2, "apple": 1},
        "Art": {"apple": 1, "zebra": 1},
        "cartoon": {"zebra": 1, "apple": 3},
    })
    ds = scan_folder(root)
    assert ds.domains == ["Art", "cartoon", "sketch"]
    assert ds.classes == ["apple", "zebra"]
    assert ds.name == "ds"
    assert ds.root == str(root.resolve())
    assert len(ds) == 9
    assert ds.counts() == {
        "Art": {"apple": 1, "zebra": 1},
        "cartoon": {"apple": 3, "zebra": 1},
        "sketch": {"apple": 1, "zebra": 2},
    }
    assert ds.warnings == [] and ds.skipped == []
    for r in ds.records:
        # id: POSIX path relative to the root; path: absolute and pointing at that file
        assert r.id == f"{r.domain}/{r.cls}/{Path(r.path).name}"
        assert os.path.isabs(r.path) and os.path.isfile(r.path)
        assert Path(r.path) == root.resolve() / r.id
    # records are grouped by sorted domain, then sorted class, then sorted file name
    assert ids(ds.records) == sorted(ids(ds.records))
    assert scan_folder(root, name="custom").name == "custom"


def test_labels_index_sorted_domains_and_classes(tmp_path):
    ds = scan_folder(make_tree(tmp_path / "ds", {"b": {"y": 1, "x": 1}, "a": {"x": 2}}))
    assert ds.domain_labels().tolist() == [ds.domains.index(r.domain) for r in ds.records]
    assert ds.class_labels().tolist() == [ds.classes.index(r.cls) for r in ds.records]
    sub = ds.records[-1:]
    assert ds.domain_labels(sub).tolist() == [1]
    assert ds.class_labels(sub).tolist() == [ds.classes.index(sub[0].cls)]
    # an empty selection has no labels (not the labels of the whole dataset)
    assert ds.domain_labels([]).tolist() == []
    assert ds.class_labels([]).tolist() == []


def test_all_image_extensions_accepted_case_insensitively(tmp_path):
    root = tmp_path / "ds"
    names = ["a.jpg", "b.JPG", "c.jpeg", "d.JPEG", "e.png", "f.Png", "g.bmp", "h.BMP", "i.webp", "j.WebP",
             "k.tif", "l.TIF", "m.tiff", "n.TiFf", "o.gif", "p.GIF"]
    for n in names:
        img(root / "d1" / "cls" / n)
    img(root / "d2" / "cls" / "x.png")
    (root / "d1" / "cls" / "notes.txt").write_text("not an image")
    (root / "d1" / "cls" / "image.svg").write_text("<svg/>")
    ds = scan_folder(root)
    got = sorted(Path(r.id).name for r in ds.records if r.domain == "d1")
    assert got == sorted(names)
    sk = skipped_ids(ds)
    assert sk["d1/cls/notes.txt"] == "not an image file extension"
    assert sk["d1/cls/image.svg"] == "not an image file extension"
    # every accepted file decodes to RGB
    assert verify_images(ds.records) == []


def test_hidden_files_and_folders_are_ignored(tmp_path):
    root = make_tree(tmp_path / "ds", {"a": {"x": 1}, "b": {"x": 1}})
    img(root / ".hidden_domain" / "x" / "h.png")
    img(root / "__MACOSX" / "x" / "h.png")
    img(root / "a" / ".hidden_class" / "h.png")
    img(root / "a" / "__pycache__" / "h.png")
    img(root / "a" / "x" / ".thumbs" / "h.png")
    img(root / "a" / "x" / "._resource_fork.png")
    (root / "a" / "x" / ".DS_Store").write_bytes(b"junk")
    ds = scan_folder(root)
    assert ds.domains == ["a", "b"]
    assert ds.classes == ["x"]
    assert ids(ds.records) == ["a/x/img_000.png", "b/x/img_000.png"]
    assert not any("hidden" in i or "DS_Store" in i or "MACOSX" in i or "._" in i for i, _ in ds.skipped)


def test_nested_subfolders_inside_a_class_belong_to_that_class(tmp_path):
    root = make_tree(tmp_path / "ds", {"a": {"x": 1}, "b": {"x": 1}})
    img(root / "a" / "x" / "deeper" / "more" / "n.png")
    ds = scan_folder(root)
    rec = {r.id: r for r in ds.records}
    assert "a/x/deeper/more/n.png" in rec
    assert (rec["a/x/deeper/more/n.png"].domain, rec["a/x/deeper/more/n.png"].cls) == ("a", "x")


def test_gif_first_frame_is_decoded(tmp_path):
    frames = [Image.new("RGB", (6, 6), (255, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 255))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as im:
        assert im.n_frames == 2
    out = load_rgb(str(p))
    assert out.mode == "RGB" and out.size == (6, 6)
    assert np.all(np.asarray(out) == (255, 0, 0))


def test_file_directly_in_domain_folder_is_not_a_record(tmp_path):
    root = make_tree(tmp_path / "ds", {"a": {"x": 1}, "b": {"x": 1}})
    img(root / "a" / "stray.png")
    ds = scan_folder(root)
    assert "a/stray.png" not in ids(ds.records)
    assert ds.classes == ["x"]


# ------------------------------------------------------------------------------------ CSV manifest


def write_csv(path: Path, rows, header="path,domain,class", bom=False) -> Path:
    text = header + "\n" + "".join(",".join(r) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_manifest_paths_are_relative_to_the_csv_folder(tmp_path, monkeypatch):
    base = tmp_path / "project" / "data"
    img(base / "imgs" / "p1.png", (255, 0, 0))
    img(base / "imgs" / "p2.jpg", (0, 255, 0))
    img(base / "other" / "q1.png", (0, 0, 255))
    img(base / "other" / "q2.PNG", (9, 9, 9))
    csv_p = write_csv(base / "manifest.csv", [
        ("imgs/p1.png", "photo", "dog"),
        ("imgs/p2.jpg", "photo", "cat"),
        ("other\\q1.png", "sketch", "dog"),  # backslashes are accepted as separators
        ("other/q2.PNG", "sketch", "cat"),
    ], bom=True)  # Excel-style BOM before the header
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    ds = read_manifest(csv_p)
    assert ds.name == "manifest"
    assert ds.root == str(base.resolve())
    assert ds.domains == ["photo", "sketch"] and ds.classes == ["cat", "dog"]
    by_id = {r.id: r for r in ds.records}
    assert set(by_id) == {"imgs/p1.png", "imgs/p2.jpg", "other/q1.png", "other/q2.PNG"}
    assert (by_id["imgs/p1.png"].domain, by_id["imgs/p1.png"].cls) == ("photo", "dog")
    assert (by_id["other/q1.png"].domain, by_id["other/q1.png"].cls) == ("sketch", "dog")
    for r in ds.records:
        assert os.path.isabs(r.path) and Path(r.path) == (base / r.id).resolve()
    assert ds.skipped == [] and ds.warnings == []
    # scan_folder / load_dataset dispatch a .csv path (any case) to the manifest reader
    assert ids(scan_folder(csv_p).records) == ids(ds.records)
    assert ids(load_dataset(str(csv_p)).records) == ids(ds.records)
    upper = shutil.copy(csv_p, base / "LIST.CSV")
    assert ids(scan_folder(upper).records) == ids(ds.records)


def test_manifest_missing_columns_error(tmp_path):
    img(tmp_path / "a.png")
    csv_p = write_csv(tmp_path / "m.csv", [("a.png", "d")], header="path,domain")
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['class'\]"):
        read_manifest(csv_p)
    csv_p = write_csv(tmp_path / "m2.csv", [("a.png",)], header="file")
    with pytest.raises(DatasetError, match=r"\['class', 'domain', 'path'\]"):
        read_manifest(csv_p)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DatasetError, match="lacks column"):
        read_manifest(empty)
    with pytest.raises(DatasetError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")


def test_manifest_refuses_escaping_and_absolute_paths_and_reports_missing(tmp_path):
    outside = img(tmp_path / "outside.png")  # exists, but outside the manifest's folder
    base = tmp_path / "m"
    img(base / "a" / "1.png")
    img(base / "b" / "1.png")
    img(base / "b" / "2.png")
    (base / "a" / "empty.png").write_bytes(b"")
    (base / "a" / "readme.txt").write_text("x")
    csv_p = write_csv(base / "list.csv", [
        ("a/1.png", "A", "x"),
        ("b/1.png", "B", "x"),
        ("../outside.png", "A", "x"),
        ("a/../../outside.png", "A", "x"),
        (str(outside), "A", "x"),
        (str((base / "b" / "2.png").resolve()), "B", "x"),  # absolute but inside: accepted
        ("a/missing.png", "A", "x"),
        ("a/empty.png", "A", "x"),
        ("a/readme.txt", "A", "x"),
        ("a/1.png", "A", "x"),  # listed twice
        ("", "A", "x"),
        ("b/1.png", "", "x"),
    ])
    ds = read_manifest(csv_p)
    assert ids(ds.records) == ["a/1.png", "b/1.png", "b/2.png"]
    sk = ds.skipped
    reasons = dict(sk)
    assert "leaves" in reasons["../outside.png"] and "refused" in reasons["../outside.png"]
    assert "leaves" in reasons["a/../../outside.png"]
    assert "leaves" in reasons[str(outside)]
    assert reasons["a/missing.png"] == "file does not exist"
    assert reasons["a/empty.png"] == "zero bytes"
    assert reasons["a/readme.txt"] == "not an image file extension"
    assert ("a/1.png", "listed twice (same file as line 2)") in sk
    assert ("line 12", "empty path, domain or class") in sk  # header is line 1
    assert ("line 13", "empty path, domain or class") in sk
    assert len(sk) == 9
    assert all(not r.path.endswith("outside.png") for r in ds.records)


def test_manifest_symlink_leaving_folder_is_refused(tmp_path):
    outside = img(tmp_path / "outside.png")
    base = tmp_path / "m"
    img(base / "a.png")
    img(base / "b.png")
    (base / "link.png").symlink_to(outside)
    csv_p = write_csv(base / "l.csv", [("a.png", "A", "x"), ("b.png", "B", "x"), ("link.png", "B", "x")])
    ds = read_manifest(csv_p)
    assert ids(ds.records) == ["a.png", "b.png"]
    assert "leaves" in dict(ds.skipped)["link.png"]


def test_manifest_with_one_domain_is_refused(tmp_path):
    img(tmp_path / "a.png")
    img(tmp_path / "b.png")
    csv_p = write_csv(tmp_path / "one.csv", [("a.png", "only", "x"), ("b.png", "only", "y")])
    with pytest.raises(DatasetError, match=r"1 domain\(s\).*only.*at least 2"):
        read_manifest(csv_p)
    csv_p = write_csv(tmp_path / "none.csv", [("missing.png", "d1", "x"), ("gone.png", "d2", "x")])
    with pytest.raises(DatasetError, match=r"0 domain\(s\).*none.*at least 2"):
        read_manifest(csv_p)


# -------------------------------------------------------------------------------------- validation


def test_error_path_does_not_exist(tmp_path):
    with pytest.raises(DatasetError, match=r"does not exist.*DomainBed folder.*CSV manifest"):
        scan_folder(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(str(tmp_path / "nowhere"))


def test_error_fewer_than_two_domains(tmp_path):
    root = make_tree(tmp_path / "one", {"only": {"x": 2, "y": 1}})
    with pytest.raises(DatasetError, match=r"1 domain\(s\) with images \(only\); at least 2 are needed"):
        scan_folder(root)
    (tmp_path / "zero").mkdir()
    with pytest.raises(DatasetError, match=r"0 domain\(s\).*at least 2"):
        scan_folder(tmp_path / "zero")
    # images loose in the root are not domains
    img(tmp_path / "loose" / "a.png")
    img(tmp_path / "loose" / "b.png")
    with pytest.raises(DatasetError, match="at least 2"):
        scan_folder(tmp_path / "loose")


def test_error_class_folder_with_no_images(tmp_path):
    root = make_tree(tmp_path / "ds", {"a": {"x": 1, "y": 1}, "b": {"x": 1}})
    (root / "b" / "y").mkdir()
    with pytest.raises(DatasetError, match=r"no usable image: b/y\b"):
        scan_folder(root)
    # a class folder holding only hidden files, non-images and a zero-byte image is just as empty
    (root / "b" / "y" / ".DS_Store").write_bytes(b"x")
    (root / "b" / "y" / "notes.txt").write_text("x")
    (root / "b" / "y" / "zero.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"no usable image: b/y\b"):
        scan_folder(root)
    img(root / "b" / "y" / "ok.png")
    assert scan_folder(root).counts()["b"]["y"] == 1


def test_error_domain_folder_with_no_images(tmp_path):
    root = make_tree(tmp_path / "ds", {"a": {"x": 1}, "b": {"x": 1}})
    (root / "c").mkdir()
    with pytest.raises(DatasetError, match=r"no usable image: c/(?!\w)"):
        scan_folder(root)
    (root / "c").rmdir()
    (root / "c" / "x").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"c/x, c/"):
        scan_folder(root)


def test_error_lists_every_empty_folder(tmp_path):
    root = make_tree(tmp_path / "ds", {"a": {"x": 1}, "b": {"x": 1}})
    for i in range(12):
        (root / "a" / f"empty{i:02d}").mkdir()
    with pytest.raises(DatasetError, match=r"a/empty00.*a/empty09 \.\.\.") as e:
        scan_folder(root)
    assert "a/empty10" not in str(e.value)


def test_error_non_csv_file(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("path,domain,class\n")
    with pytest.raises(DatasetError, match=r"is a file but not a \.csv manifest"):
        scan_folder(f)
    z = img(tmp_path / "pic.png")
    with pytest.raises(DatasetError, match=r"not a \.csv manifest"):
        load_dataset(str(z))


def test_warning_when_class_sets_differ(tmp_path):
    root = make_tree(tmp_path / "ds", {
        "art": {"dog": 1, "cat": 1, "fish": 1},
        "photo": {"dog": 1},
        "sketch": {"dog": 1, "cat": 1, "fish": 1},
    })
    ds = scan_folder(root)
    assert len(ds.warnings) == 1
    w = ds.warnings[0]
    assert "'photo'" in w and "['cat', 'fish']" in w and "differ" in w
    assert "art" not in w and "sketch" not in w
    assert ds.counts()["photo"] == {"cat": 0, "dog": 1, "fish": 0}


# ---------------------------------------------------------------------------------------- symlinks


def test_symlinks_leaving_the_root_are_refused(tmp_path):
    outside = make_tree(tmp_path / "outside", {"ext": {"x": 2}})
    outside_img = outside / "ext" / "x" / "img_000.png"
    root = make_tree(tmp_path / "ds", {"a": {"x": 1}, "b": {"x": 1}})
    (root / "evil_domain").symlink_to(outside / "ext", target_is_directory=True)
    (root / "a" / "evil_class").symlink_to(outside / "ext" / "x", target_is_directory=True)
    (root / "b" / "x" / "evil.png").symlink_to(outside_img)
    (root / "b" / "x" / "evil_rel.png").symlink_to(Path("..") / ".." / ".." / "outside" / "ext" / "x" / "img_001.png")
    assert (root / "b" / "x" / "evil_rel.png").resolve() == (outside / "ext" / "x" / "img_001.png").resolve()
    ds = scan_folder(root)
    assert ds.domains == ["a", "b"] and ds.classes == ["x"]
    assert ids(ds.records) == ["a/x/img_000.png", "b/x/img_000.png"]
    sk = skipped_ids(ds)
    for k in ("evil_domain", "a/evil_class", "b/x/evil.png", "b/x/evil_rel.png"):
        assert "symlink leaves the dataset root" in sk[k], k
    assert all(str(outside.resolve()) not in r.path for r in ds.records)


def test_symlinks_inside_the_root_are_fine(tmp_path):
    root = make_tree(tmp_path / "ds", {"a": {"x": 1}, "b": {"x": 1}, "shared": {"y": 1}})
    (root / "a" / "x" / "alias.png").symlink_to(root / "b" / "x" / "img_000.png")
    (root / "b" / "x" / "rel_alias.png").symlink_to(Path("..") / ".." / "a" / "x" / "img_000.png")
    (root / "a" / "y").symlink_to(root / "shared" / "y", target_is_directory=True)
    ds = scan_folder(root)
    got = ids(ds.records)
    assert "a/x/alias.png" in got and "b/x/rel_alias.png" in got and "a/y/img_000.png" in got
    assert ds.skipped == []
    assert verify_images(ds.records) == []


def test_scan_through_symlinked_root(tmp_path):
    real = make_tree(tmp_path / "real", {"a": {"x": 1}, "b": {"x": 1}})
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    ds = scan_folder(link)
    assert ds.root == str(real.resolve())
    assert ids(ds.records) == ["a/x/img_000.png", "b/x/img_000.png"]


# ------------------------------------------------------------------------------ unreadable images


@pytest.fixture()
def broken_ds(tmp_path):
    root = make_tree(tmp_path / "ds", {"a": {"x": 2}, "b": {"x": 2}})
    bad = root / "a" / "x"
    (bad / "zero.png").write_bytes(b"")
    (bad / "corrupt.jpg").write_bytes(np.random.default_rng(7).bytes(300))
    png = noisy_bytes("PNG")
    (bad / "trunc.png").write_bytes(png[: len(png) // 2])
    jpg = noisy_bytes("JPEG")
    (bad / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    (bad / "text.png").write_text("hello, I am not a PNG\n" * 10)
    img(root / "b" / "x" / "huge.png", size=(200, 100))  # 20,000 px: over a 10,000 px limit
    (root / "b" / "x" / "bomb.png").write_bytes(header_only_png(10_000, 10_000))  # 100M px > default
    return root


BAD_IDS = {"a/x/corrupt.jpg", "a/x/trunc.png", "a/x/trunc.jpg", "a/x/text.png", "b/x/huge.png", "b/x/bomb.png"}


def test_zero_byte_file_is_skipped_at_scan_with_reason(broken_ds):
    ds = scan_folder(broken_ds)
    assert "a/x/zero.png" not in ids(ds.records)
    assert skipped_ids(ds)["a/x/zero.png"] == "zero bytes"
    # scanning does not decode: the other broken files are records until verified
    assert BAD_IDS <= set(ids(ds.records))
    assert len(ds) == 4 + len(BAD_IDS)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_verify_images_reports_every_unreadable_image(broken_ds):
    ds = scan_folder(broken_ds)
    bad = verify_images(ds.records, max_pixels=10_000)
    assert len(bad) == len(BAD_IDS) == 6
    assert {i for i, _ in bad} == BAD_IDS
    reasons = dict(bad)
    assert "pixel limit" in reasons["b/x/huge.png"] and "200x100" in reasons["b/x/huge.png"]
    assert "pixel limit" in reasons["b/x/bomb.png"]
    for k in ("a/x/corrupt.jpg", "a/x/trunc.png", "a/x/trunc.jpg", "a/x/text.png"):
        assert reasons[k].startswith("cannot decode"), (k, reasons[k])
    # with the default limit the 200x100 image is fine, the 100M px header is not
    bad_default = {i for i, _ in verify_images(ds.records)}
    assert bad_default == BAD_IDS - {"b/x/huge.png"}
    # a generator works too, and good images are never reported
    good = [r for r in ds.records if r.id not in BAD_IDS]
    assert verify_images(r for r in good) == []


@pytest.mark.parametrize("name", ["corrupt.jpg", "trunc.png", "trunc.jpg", "text.png", "zero.png"])
def test_load_rgb_raises_unreadable_for_broken_files(broken_ds, name):
    with pytest.raises(UnreadableImage, match="cannot decode"):
        load_rgb(str(broken_ds / "a" / "x" / name))


def test_load_rgb_pixel_limit(tmp_path):
    p = img(tmp_path / "wide.png", size=(100, 50))
    assert load_rgb(str(p), max_pixels=5_000).size == (100, 50)  # exactly at the limit is allowed
    with pytest.raises(UnreadableImage, match=r"100x50 is over the pixel limit of 4999"):
        load_rgb(str(p), max_pixels=4_999)
    big = tmp_path / "big.png"
    big.write_bytes(header_only_png(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(UnreadableImage, match=f"over the pixel limit of {DEFAULT_MAX_PIXELS}"):
            load_rgb(str(big))
    # beyond Pillow's own bomb limit, its DecompressionBombError is reported the same way
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(header_only_png(20_000, 20_000))
    with pytest.raises(UnreadableImage, match="over the pixel limit"):
        load_rgb(str(bomb))


def test_load_rgb_missing_file_is_unreadable(tmp_path):
    with pytest.raises(UnreadableImage):
        load_rgb(str(tmp_path / "gone.png"))


# ---------------------------------------------------------------------------------- mode conversion


def rgb_array(path) -> np.ndarray:
    out = load_rgb(str(path))
    assert out.mode == "RGB"
    return np.asarray(out)


def test_grayscale_L_to_rgb(tmp_path):
    a = np.array([[0, 77, 255]], dtype=np.uint8)
    p = tmp_path / "g.png"
    Image.fromarray(a, "L").save(p)
    with Image.open(p) as im:
        assert im.mode == "L"
    assert rgb_array(p).tolist() == [[[0, 0, 0], [77, 77, 77], [255, 255, 255]]]


def test_one_bit_to_rgb(tmp_path):
    p = tmp_path / "b.png"
    im = Image.new("1", (2, 1), 0)
    im.putpixel((1, 0), 1)
    im.save(p)
    assert rgb_array(p).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_palette_with_transparency_to_rgb(tmp_path):
    p = tmp_path / "p.png"
    im = Image.fromarray(np.array([[0, 1, 2, 3]], dtype=np.uint8), "P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    im.save(p, transparency=2)  # index 2 (black in the palette) is transparent
    with Image.open(p) as chk:
        assert chk.mode == "P" and chk.info.get("transparency") == 2
    assert rgb_array(p).tolist() == [[[255, 0, 0], [0, 255, 0], [255, 255, 255], [0, 0, 255]]]


def test_palette_gif_with_transparency_to_rgb(tmp_path):
    p = tmp_path / "t.gif"
    im = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    im.putpalette([10, 20, 30, 0, 0, 0] + [0] * (256 * 3 - 6))
    im.save(p, transparency=1)
    assert rgb_array(p).tolist() == [[[10, 20, 30], [255, 255, 255]]]


@pytest.mark.parametrize("ext,tol", [("tif", 0), ("jpg", 6)])
def test_cmyk_to_rgb(tmp_path, ext, tol):
    im = Image.new("CMYK", (32, 16))
    for i, c in enumerate([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (0, 255, 255, 0)]):
        im.paste(c, (8 * i, 0, 8 * i + 8, 16))
    p = tmp_path / f"c.{ext}"
    im.save(p, quality=95) if ext == "jpg" else im.save(p)
    with Image.open(p) as chk:
        assert chk.mode == "CMYK"
    a = rgb_array(p).astype(int)
    centres = [a[8, 8 * i + 4] for i in range(4)]
    expected = [(255, 255, 255), (0, 255, 255), (0, 0, 0), (255, 0, 0)]
    for got, exp in zip(centres, expected):
        assert np.abs(got - np.array(exp)).max() <= tol, (got, exp)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 255, 32768, 65535, 4096]], dtype=np.uint16)
    p = tmp_path / "d.png"
    Image.fromarray(a).save(p)
    with Image.open(p) as chk:
        assert chk.mode.startswith("I")  # I;16 in current Pillow
    out = rgb_array(p)
    assert out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    v = out[0, :, 0].tolist()
    assert v[0] == 0
    assert v[1] <= 1  # 255 of 65535 is nearly black, not clipped to white
    assert abs(v[2] - 128) <= 1
    assert v[3] == 255
    assert abs(v[4] - 16) <= 1


def test_16bit_png_with_only_small_values_is_still_scaled_as_16bit(tmp_path):
    # a dark 16-bit image: every value <= 255 must stay near black, not be read as 8-bit
    a = np.array([[0, 100, 255]], dtype=np.uint16)
    p = tmp_path / "dark.png"
    Image.fromarray(a).save(p)
    assert rgb_array(p)[0, :, 0].max() <= 1


def test_to_rgb_32bit_integer_mode_scaled(tmp_path):
    im = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32), "I")
    assert im.mode == "I"
    v = np.asarray(to_rgb(im))[0, :, 0].tolist()
    assert v[0] == 0 and abs(v[1] - 128) <= 1 and v[2] == 255


def test_rgba_composited_on_white(tmp_path):
    a = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128], [10, 200, 30, 255]]], dtype=np.uint8)
    p = tmp_path / "a.png"
    Image.fromarray(a, "RGBA").save(p)
    out = rgb_array(p).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent red -> white, not red or black
    assert out[0, 1].tolist() == [0, 0, 255]
    assert np.abs(out[0, 2] - 127).max() <= 1  # half-transparent black over white -> mid grey
    assert out[0, 3].tolist() == [10, 200, 30]


def test_rgba_webp_composited_on_white(tmp_path):
    p = tmp_path / "a.webp"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(p, lossless=True)
    assert (rgb_array(p) == 255).all()


def test_la_composited_on_white(tmp_path):
    a = np.array([[[0, 0], [0, 255], [100, 255], [0, 128]]], dtype=np.uint8)
    p = tmp_path / "la.png"
    Image.fromarray(a, "LA").save(p)
    with Image.open(p) as chk:
        assert chk.mode == "LA"
    out = rgb_array(p).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 0]
    assert out[0, 2].tolist() == [100, 100, 100]
    assert np.abs(out[0, 3] - 127).max() <= 1


def test_rgb_is_unchanged(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    p = tmp_path / "r.png"
    Image.fromarray(a).save(p)
    out = load_rgb(str(p))
    assert out.size == (7, 5)
    assert np.array_equal(np.asarray(out), a)


# ------------------------------------------------------------------------------------- subsample


def synth_records(layout: dict[str, dict[str, int]]) -> list[ImageRecord]:
    out = []
    for d, classes in layout.items():
        for c, n in classes.items():
            for i in range(n):
                rid = f"{d}/{c}/{i:04d}.png"
                out.append(ImageRecord(rid, "/nowhere/" + rid, d, c))
    return out


def per_cell(records) -> Counter:
    return Counter((r.domain, r.cls) for r in records)


def test_subsample_at_most_n_per_domain_classes_balanced():
    recs = synth_records({"A": {"x": 30, "y": 30, "z": 30}, "B": {"x": 30, "y": 30, "z": 30}})
    sub = stratified_subsample(recs, max_per_domain=10, seed=0)
    cells = per_cell(sub)
    for d in ("A", "B"):
        counts = [cells[(d, c)] for c in ("x", "y", "z")]
        assert sum(counts) == 10
        assert max(counts) - min(counts) <= 1
    assert len(set(ids(sub))) == len(sub)
    assert set(ids(sub)) <= set(ids(recs))


def test_subsample_small_classes_are_taken_whole_and_rest_balanced():
    recs = synth_records({"A": {"few": 2, "many1": 40, "many2": 40, "mid": 6}, "B": {"x": 3}})
    sub = stratified_subsample(recs, max_per_domain=20, seed=1)
    cells = per_cell(sub)
    assert cells[("A", "few")] == 2
    assert sum(cells[("A", c)] for c in ("few", "many1", "many2", "mid")) == 20
    unsaturated = [cells[("A", c)] for c in ("many1", "many2", "mid")]
    assert max(unsaturated) - min(unsaturated) <= 1
    assert cells[("B", "x")] == 3  # a domain smaller than N is taken whole


def test_subsample_max_per_class():
    recs = synth_records({"A": {"x": 10, "y": 2}, "B": {"x": 5, "y": 5}})
    sub = stratified_subsample(recs, max_per_class=3, seed=0)
    assert per_cell(sub) == Counter({("A", "x"): 3, ("A", "y"): 2, ("B", "x"): 3, ("B", "y"): 3})
    both = stratified_subsample(recs, max_per_domain=4, max_per_class=1, seed=0)
    assert per_cell(both) == Counter({("A", "x"): 1, ("A", "y"): 1, ("B", "x"): 1, ("B", "y"): 1})
    # max_per_class picks the same images whether or not a domain cap is also given
    a = {r.id for r in stratified_subsample(recs, max_per_class=2, seed=5)}
    b = {r.id for r in stratified_subsample(recs, max_per_domain=100, max_per_class=2, seed=5)}
    assert a == b


def test_subsample_without_limits_returns_everything_sorted():
    recs = synth_records({"B": {"y": 3, "x": 2}, "A": {"x": 4}})
    sub = stratified_subsample(list(reversed(recs)))
    assert ids(sub) == sorted(ids(recs))
    assert stratified_subsample([], max_per_domain=5) == []


def test_subsample_deterministic_per_seed_and_sorted():
    recs = synth_records({"A": {"x": 50, "y": 50}, "B": {"x": 50, "y": 50}})
    s0 = stratified_subsample(recs, max_per_domain=10, seed=0)
    assert ids(s0) == sorted(ids(s0))
    assert ids(s0) == ids(stratified_subsample(recs, max_per_domain=10, seed=0))
    assert ids(s0) == ids(stratified_subsample(list(reversed(recs)), max_per_domain=10, seed=0))
    s1 = stratified_subsample(recs, max_per_domain=10, seed=1)
    assert set(ids(s0)) != set(ids(s1))
    assert per_cell(s1) == per_cell(s0)  # same balance, other images


def test_subsample_grows_monotonically_with_n():
    recs = synth_records({"A": {"x": 20, "y": 7, "z": 13}})
    prev: set[str] = set()
    for n in range(1, 41):
        cur = {r.id for r in stratified_subsample(recs, max_per_domain=n, seed=3)}
        assert len(cur) == n and prev <= cur
        prev = cur


def test_subsample_unaffected_by_files_in_another_domain():
    recs = synth_records({"A": {"x": 30, "y": 30}, "B": {"x": 30, "y": 30}})
    before = [r for r in stratified_subsample(recs, max_per_domain=9, seed=4) if r.domain == "A"]
    more = recs + [ImageRecord(f"B/{c}/new{i}.png", "/n", "B", c) for i in range(7) for c in ("x", "y", "w")]
    after = [r for r in stratified_subsample(more, max_per_domain=9, seed=4) if r.domain == "A"]
    assert ids(before) == ids(after)


def test_subsample_on_scanned_dataset_is_stable_when_another_domain_grows(tmp_path):
    root = make_tree(tmp_path / "ds", {"a": {"x": 8, "y": 8}, "b": {"x": 8, "y": 8}})
    sel_a = [r.id for r in scan_folder(root).subsample(max_per_domain=5, seed=2) if r.domain == "a"]
    img(root / "b" / "x" / "zzz_new.png")
    img(root / "b" / "y" / "aaa_new.png")
    ds2 = scan_folder(root)
    sub2 = ds2.subsample(max_per_domain=5, seed=2)
    assert [r.id for r in sub2 if r.domain == "a"] == sel_a
    assert len(sub2) == 10


@pytest.mark.parametrize("kw", [
    {"max_per_domain": 0}, {"max_per_domain": -3}, {"max_per_class": 0}, {"max_per_class": -1},
])
def test_subsample_invalid_n_raises(kw):
    recs = synth_records({"A": {"x": 3}})
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        stratified_subsample(recs, **kw)


# ------------------------------------------------------------------------------------ fingerprint


def test_fingerprint_stable_across_scans_and_locations(tmp_path):
    root = make_tree(tmp_path / "ds", {"a": {"x": 2}, "b": {"x": 2, "y": 1}})
    f1 = scan_folder(root).fingerprint
    assert isinstance(f1, str) and len(f1) == 16
    assert scan_folder(root).fingerprint == f1
    # the fingerprint includes each file's ctime (which utime cannot set back), so a copy elsewhere has
    # another fingerprint: one recomputation, never stale features
    copy = shutil.copytree(root, tmp_path / "elsewhere" / "copy")
    assert scan_folder(copy).fingerprint != f1
    # files the scan ignores do not change it
    (root / "a" / "x" / ".DS_Store").write_bytes(b"x")
    img(root / ".cache" / "x" / "y.png")
    assert scan_folder(root).fingerprint == f1


def test_fingerprint_changes_on_add_remove_modify(tmp_path):
    root = make_tree(tmp_path / "ds", {"a": {"x": 2}, "b": {"x": 2}})
    f0 = scan_folder(root).fingerprint
    target = root / "a" / "x" / "img_000.png"
    st = target.stat()

    # content size change, mtime restored: still detected
    target.write_bytes(target.read_bytes() + b"\0" * 10)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    f_size = scan_folder(root).fingerprint
    assert f_size != f0

    # back to the original bytes and mtime: still a new fingerprint (the ctime moved; utime cannot undo it)
    target.write_bytes(target.read_bytes()[:-10])
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    f_back = scan_folder(root).fingerprint
    assert f_back not in (f0, f_size)
    assert scan_folder(root).fingerprint == f_back  # but stable while nothing changes

    # mtime-only change (touch)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    f_mtime = scan_folder(root).fingerprint
    assert f_mtime not in (f0, f_size, f_back)

    # add
    extra = img(root / "b" / "x" / "extra.png")
    f_add = scan_folder(root).fingerprint
    assert f_add not in (f0, f_size, f_mtime)
    extra.unlink()
    assert scan_folder(root).fingerprint == f_mtime  # removing it again restores the fingerprint

    # remove
    (root / "b" / "x" / "img_001.png").unlink()
    f_rm = scan_folder(root).fingerprint
    assert f_rm not in (f0, f_size, f_mtime, f_add)

    # rename (same bytes, new id)
    (root / "b" / "x" / "img_000.png").rename(root / "b" / "x" / "renamed.png")
    assert scan_folder(root).fingerprint != f_rm


def test_manifest_fingerprint_includes_labels(tmp_path):
    img(tmp_path / "a.png")
    img(tmp_path / "b.png")
    m1 = write_csv(tmp_path / "m1.csv", [("a.png", "D1", "x"), ("b.png", "D2", "x")])
    m2 = write_csv(tmp_path / "m2.csv", [("a.png", "D1", "x"), ("b.png", "D2", "y")])
    m3 = write_csv(tmp_path / "m3.csv", [("b.png", "D2", "x"), ("a.png", "D1", "x")])
    f1 = read_manifest(m1).fingerprint
    assert read_manifest(m1).fingerprint == f1
    assert read_manifest(m2).fingerprint != f1  # relabelling is a different dataset
    assert read_manifest(m3).fingerprint == f1  # row order does not matter


def test_scan_is_cheap_for_many_files(tmp_path):
    """20,000 tiny non-decodable files: the scan must not decode, only stat."""
    root = tmp_path / "big"
    payload = b"\x89PNG-not-really"
    n_dom, n_cls, per = 4, 5, 1000
    for d in range(n_dom):
        for c in range(n_cls):
            folder = root / f"d{d}" / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per):
                with open(folder / f"{i:05d}.png", "wb") as f:
                    f.write(payload)
    ds = scan_folder(root)
    assert len(ds) == n_dom * n_cls * per == 20_000
    assert ds.skipped == []
    assert all(n == per for cls in ds.counts().values() for n in cls.values())
    assert scan_folder(root).fingerprint == ds.fingerprint
    sub = ds.subsample(max_per_domain=100, seed=0)
    assert len(sub) == 400 and all(v == 20 for v in per_cell(sub).values())


# -------------------------------------------------------------------------------------- built-ins


@pytest.fixture(scope="session")
def builtin_home(builtin_data_home) -> Path:
    """The built-ins, generated once per session into conftest's shared tmp data home."""
    home = builtin_data_home
    for name in ("synthetic-pacs:train", "synthetic-pacs:heldout", "rotated-digits:train",
                 "rotated-digits:heldout"):
        builtin.ensure_builtin(name, home)
    return home


def test_synthetic_pacs_shape(builtin_home):
    for split in ("train", "heldout"):
        ds = load_dataset(f"synthetic-pacs:{split}", builtin_home)
        assert ds.name == f"synthetic-pacs:{split}"
        assert len(ds.domains) >= 4 and len(ds.classes) >= 5
        assert ds.domains == sorted(builtin.PACS_DOMAINS)
        assert ds.classes == sorted(builtin.PACS_CLASSES)
        counts = ds.counts()
        assert min(n for c in counts.values() for n in c.values()) >= 50
        assert len(ds) == len(ds.domains) * len(ds.classes) * builtin.PACS_PER_CELL[split]
        assert ds.warnings == [] and ds.skipped == []
    assert len(load_dataset("synthetic-pacs:train", builtin_home)) > len(
        load_dataset("synthetic-pacs:heldout", builtin_home))


def test_synthetic_pacs_images_are_valid_64px_rgb(builtin_home):
    ds = load_dataset("synthetic-pacs:heldout", builtin_home)
    sample = ds.subsample(max_per_domain=12, seed=0)
    assert verify_images(sample) == []
    for r in sample:
        im = load_rgb(r.path)
        assert im.size == (builtin.SIZE, builtin.SIZE)
        assert np.asarray(im).std() > 3  # not a blank image


def test_synthetic_pacs_train_and_heldout_differ(builtin_home):
    tr = load_dataset("synthetic-pacs:train", builtin_home)
    ho = load_dataset("synthetic-pacs:heldout", builtin_home)
    tr_paths = {r.id: r.path for r in tr.records}
    ho_sample = [r for r in ho.records if Path(r.id).stem.endswith(("_0000", "_0001", "_0002"))]
    assert len(ho_sample) == 3 * len(ho.domains) * len(ho.classes)
    tr_hashes = {pixel_hash(tr_paths[r.id]) for r in ho_sample}  # same file names in train
    ho_hashes = {pixel_hash(r.path) for r in ho_sample}
    assert len(ho_hashes) == len(ho_sample)  # no duplicates within the split either
    assert not tr_hashes & ho_hashes


def test_synthetic_pacs_generation_is_deterministic(builtin_home, tmp_path):
    again = builtin.ensure_builtin("synthetic-pacs:heldout", tmp_path / "again")
    first = builtin_home / f"synthetic-pacs-v{builtin.VERSION}" / "heldout"
    files_a = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    files_b = sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert files_a == files_b and len(files_a) == 1200
    for rel in files_a[::97]:  # a spread over domains and classes
        assert (first / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_builtin_default_split_is_heldout(builtin_home):
    assert builtin.DEFAULT_SPLIT == "heldout"
    assert builtin.parse_name("synthetic-pacs") == ("synthetic-pacs", "heldout")
    assert builtin.canonical_name("rotated-digits") == "rotated-digits:heldout"
    ds = load_dataset("synthetic-pacs", builtin_home)
    assert ds.name == "synthetic-pacs:heldout"
    assert Path(ds.root).name == "heldout"
    assert ds.fingerprint == load_dataset("synthetic-pacs:heldout", builtin_home).fingerprint
    assert ds.fingerprint != load_dataset("synthetic-pacs:train", builtin_home).fingerprint


def test_builtin_uses_data_home_env(builtin_home, monkeypatch):
    monkeypatch.setenv("DOMAINLENS_DATA_HOME", str(builtin_home))
    assert builtin.data_home() == builtin_home
    ds = load_dataset("rotated-digits:train")
    assert Path(ds.root).is_relative_to(builtin_home.resolve())
    monkeypatch.delenv("DOMAINLENS_DATA_HOME")
    assert builtin.data_home() == Path.home() / ".cache" / "domainlens" / "datasets"
    assert builtin.data_home(builtin_home / "x") == builtin_home / "x"


def test_rotated_digits(builtin_home):
    seen: dict[str, set[str]] = {}
    for split in ("train", "heldout"):
        ds = load_dataset(f"rotated-digits:{split}", builtin_home)
        assert ds.domains == ["rot00", "rot15", "rot30", "rot45", "rot60", "rot75"]
        assert ds.classes == [str(i) for i in range(10)]
        assert ds.warnings == []
        assert all(n > 0 for c in ds.counts().values() for n in c.values())
        # each domain has its own digits, and the splits use disjoint digits
        by_domain: dict[str, set[str]] = {}
        for r in ds.records:
            by_domain.setdefault(r.domain, set()).add(Path(r.id).name)
        all_digits = [n for s in by_domain.values() for n in s]
        assert len(all_digits) == len(set(all_digits)) == len(ds)
        seen[split] = set(all_digits)
    assert not seen["train"] & seen["heldout"]
    assert len(seen["train"]) + len(seen["heldout"]) == 1797


def test_rotated_digits_rotation_is_visible(builtin_home):
    ds = load_dataset("rotated-digits:train", builtin_home)
    im = load_rgb(ds.records[0].path)
    assert im.size == (64, 64) and im.mode == "RGB"
    # rot00 is unrotated: the digit is pasted with an 8 px empty border
    a = np.asarray(load_rgb(next(r.path for r in ds.records if r.domain == "rot00")))[..., 0]
    assert a[:4].max() == 0 and a[:, :4].max() == 0


@pytest.mark.parametrize("name", ["synthetic-pacs:bogus", "rotated-digits:test", "synthetic-pacs:TRAIN"])
def test_bad_split_names_raise_clearly(name, tmp_path):
    base, _, split = name.partition(":")
    with pytest.raises(ValueError, match=rf"Unknown split '{split}' for {base}; use one of \['train', 'heldout'\]"):
        builtin.parse_name(name)
    with pytest.raises(ValueError, match="Unknown split"):
        builtin.ensure_builtin(name, tmp_path)
    assert not builtin.is_builtin(name)
    with pytest.raises(DatasetError, match=r"Unknown split in .*use one of \('train', 'heldout'\)"):
        load_dataset(name, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was generated


def test_unknown_builtin_name(tmp_path):
    with pytest.raises(ValueError, match="not a built-in dataset"):
        builtin.parse_name("imagenet:train")
    assert not builtin.is_builtin("imagenet")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("imagenet:train", tmp_path)


def test_ensure_builtin_is_cached_and_atomic(builtin_home, tmp_path):
    root = builtin.ensure_builtin("rotated-digits:heldout", builtin_home)
    marker = root / ".complete"
    assert marker.exists()
    before = marker.stat().st_mtime_ns
    assert builtin.ensure_builtin("rotated-digits:heldout", builtin_home) == root
    assert marker.stat().st_mtime_ns == before  # not regenerated
    # no temp folders left next to the splits
    assert sorted(p.name for p in root.parent.iterdir()) == ["heldout", "train"]

    # a stale, incomplete folder (an interrupted run) is replaced by a complete one
    stale = tmp_path / f"rotated-digits-v{builtin.VERSION}" / "heldout"
    (stale / "rot00" / "0").mkdir(parents=True)
    (stale / "junk.txt").write_text("half-written")
    got = builtin.ensure_builtin("rotated-digits:heldout", tmp_path)
    assert got == stale and (stale / ".complete").exists() and not (stale / "junk.txt").exists()
    assert sorted(p.name for p in stale.parent.iterdir()) == ["heldout"]
    assert ids(scan_folder(stale).records) == ids(scan_folder(root).records)
