"""Tests for the command line (core/cli/): in-process through ``core.cli.main`` plus one real
``python -m core`` subprocess, and the rule that core/ never imports streamlit."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli import main
from core.engine.extract import ExtractionConfig, get_features
from core.testing import make_domainbed
from core.backbones.registry import load_backbone as load_model

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["block", "timestep", "prompt", "domain_nmi", "domain_nmi_std", "class_nmi", "class_nmi_std",
           "domain_probe_acc", "n_images"]
STAT_COLUMNS = ["domain_nmi_lo", "domain_nmi_hi", "domain_ami", "domain_ami_std", "domain_ami_lo", "domain_ami_hi",
                "domain_nmi_chance", "domain_within_chance", "class_ami", "class_ami_std", "class_nmi_chance",
                "class_within_chance", "n_init"]  # AMI, chance floor and intervals (docs/METHODS.md)
TINY_BLOCKS = ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block",
               "up_blocks.0", "up_blocks.1", "up_blocks.2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def assert_one_line_error(err: str, *fragments: str):
    """No traceback; exactly one ``error: ...`` line, and it is the last line (a model load before the
    error may leave third-party progress bars above it)."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert lines[-1].startswith("error: "), err
    for f in fragments:
        assert f in lines[-1], (f, err)


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


# --------------------------------------------------------------------------------- list commands


def test_datasets_lists_builtins(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    names = [ln.split()[0] for ln in out.splitlines() if ln.strip()]
    assert names == ["synthetic-pacs", "rotated-digits"]
    assert "heldout" in out


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "domainlens-tiny" in out and "pixels" in out


# ---------------------------------------------------------------------------------------- validate


def test_validate_reports_domains_classes_counts_and_skipped(tmp_path, capsys):
    root = make_domainbed(tmp_path / "ds", per_cell=2, seed=2, sizes=((64, 48),))
    for i in range(3):
        Image.new("RGB", (8, 8)).save(root / "photo" / "cat" / f"extra{i}.png")
    (root / "art" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "art" / "dog" / "readme.txt").write_text("notes")
    assert main(["validate", str(root)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "11 usable images (12 found, 1 fail to decode), 2 domains, 2 classes" in lines[0]
    header = next(ln for ln in lines if ln.startswith("class"))
    assert header.split() == ["class", "art", "photo"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines if ln.split() and ln.split()[0] in ("cat", "dog", "total")}
    assert rows == {"cat": ["2", "5"], "dog": ["2", "2"], "total": ["4", "7"]}  # counts what decodes
    assert "skipped 2 file(s)" in out
    assert "art/dog/broken.png" in out and "cannot decode" in out
    assert "art/dog/readme.txt" in out


def test_validate_bad_path(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing")]) != 0
    assert_one_line_error(capsys.readouterr().err, "does not exist")


# ----------------------------------------------------------------------------------------- extract


def test_extract_exports_named_arrays(tiny_sd_dir, tmp_path, capsys):
    out_file = tmp_path / "exp" / "f.npz"
    rc = main(["extract", "--dataset", "synthetic-pacs", "--model", str(tiny_sd_dir), "--timesteps", "50,500",
               "--blocks", "up_blocks.1,mid_block", "--max-per-domain", "4", "--export", str(out_file),
               "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "t=50: 16 images, 2 blocks, 16 computed" in out and f"wrote {out_file}" in out
    with np.load(out_file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert set(arrays) == {"up_blocks.1@50", "mid_block@50", "up_blocks.1@500", "mid_block@500",
                           "paths", "domains", "classes"}
    for k in ("up_blocks.1@50", "mid_block@50", "up_blocks.1@500", "mid_block@500"):
        assert arrays[k].shape == (16, 32) and arrays[k].dtype == np.float32
    assert arrays["paths"].shape == arrays["domains"].shape == arrays["classes"].shape == (16,)
    assert sorted(set(arrays["domains"])) == ["cartoon", "painting", "photo", "sketch"]
    assert all(Path(p).is_file() for p in arrays["paths"])
    # the same numbers as the library gives for the same config
    fs = get_features(ExtractionConfig(model=str(tiny_sd_dir), timestep=500, max_per_domain=4),
                      ["up_blocks.1"], model=load_model(str(tiny_sd_dir), "cpu"))
    assert fs.n_unet_images == 0  # the CLI filled the same cache
    np.testing.assert_array_equal(arrays["up_blocks.1@500"], fs.features["up_blocks.1"])
    assert list(arrays["paths"]) == fs.paths
    # a second run is served from the cache
    assert main(["extract", "--model", str(tiny_sd_dir), "--timesteps", "50", "--blocks", "mid_block",
                 "--max-per-domain", "4", "--no-progress"]) == 0
    assert "16 images, 1 blocks, 0 computed" in capsys.readouterr().out


def test_extract_export_must_be_npz(tiny_sd_dir, tmp_path, capsys):
    rc = main(["extract", "--model", str(tiny_sd_dir), "--export", str(tmp_path / "f.txt"), "--no-progress"])
    assert rc != 0
    assert_one_line_error(capsys.readouterr().err, "--export must name a .npz file")


# ------------------------------------------------------------------------------------------- sweep


def sweep_args(tiny_sd_dir, out, per_domain=8, n_seeds=2):
    return ["sweep", "--dataset", "synthetic-pacs", "--model", str(tiny_sd_dir), "--timesteps", "50,500",
            "--blocks", "all", "--out", str(out), "--max-per-domain", str(per_domain), "--n-seeds", str(n_seeds),
            "--no-progress"]


def check_sweep_csv(path, n_images=32):
    header, rows = read_csv(path)
    assert header[:9] == COLUMNS
    assert header[9:] == STAT_COLUMNS + ["domain_silhouette", "noise_seeds"]
    assert len(rows) == 14  # 7 blocks x 2 timesteps
    got = sorted((r[0], int(r[1])) for r in rows)
    assert got == sorted((b, t) for b in TINY_BLOCKS for t in (50, 500))
    for r in rows:
        rec = dict(zip(header, r))
        assert rec["prompt"] == "" and int(rec["n_images"]) == n_images
        for k in ("domain_nmi", "class_nmi", "domain_probe_acc"):
            assert 0.0 <= float(rec[k]) <= 1.0
        assert float(rec["domain_nmi_std"]) >= 0.0


def test_sweep_writes_csv_and_json(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert main(sweep_args(tiny_sd_dir, out) + ["--json"]) == 0
    check_sweep_csv(out)
    records = json.loads(capsys.readouterr().out)
    assert isinstance(records, list) and len(records) == 14
    assert set(COLUMNS) <= set(records[0])
    assert {r["timestep"] for r in records} == {50, 500}
    # the table form, served from the caches
    assert main(sweep_args(tiny_sd_dir, tmp_path / "again.csv")) == 0
    text = capsys.readouterr().out
    assert "domain_nmi" in text and "up_blocks.1" in text and "wrote" in text
    assert read_csv(tmp_path / "again.csv") == read_csv(out)


@pytest.mark.parametrize("args, fragments", [
    (["--dataset", "/nonexistent/dataset/path"], ["does not exist"]),
    (["--timesteps", "5000"], ["`timestep` must be in [0, 999]", "5000"]),
    (["--model", "no-such-model"], ["Unknown model 'no-such-model'"]),
    (["--blocks", "up_blocks.9"], ["unknown block"]),
    (["--blocks", ","], ["no block given"]),
    (["--ensemble", "0"], ["`ensemble` must be >= 1"]),
    (["--batch-size", "0"], ["`batch_size` must be >= 1"]),
    (["--prompt-template", "a photo"], ["{class}"]),
])
def test_sweep_bad_input_is_one_line_error(tiny_sd_dir, capsys, args, fragments):
    base = ["sweep", "--model", str(tiny_sd_dir), "--max-per-domain", "2", "--no-progress"]
    assert main(base + args) != 0
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, *fragments)
    assert captured.out == ""


@pytest.mark.parametrize("text", ["50,abc", "fifty", ","])
def test_bad_timesteps_text(tiny_sd_dir, capsys, text):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--model", str(tiny_sd_dir), "--timesteps", text])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1]  # argparse: usage, then one error
    assert "argument --timesteps" in errors[0]


# ------------------------------------------------------------------------------------- subprocesses


def _env():
    env = dict(os.environ)  # the per-test DOMAINLENS_CACHE_DIR / DOMAINLENS_DATA_HOME set by conftest
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_module_entry_point_sweep(tiny_sd_dir, tmp_path):
    """``python -m core sweep`` end to end in a fresh interpreter (small: 16 images, one k-means seed)."""
    out = tmp_path / "r.csv"
    proc = subprocess.run([sys.executable, "-m", "core"] + sweep_args(tiny_sd_dir, out, per_domain=4, n_seeds=1),
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    check_sweep_csv(out, n_images=16)
    assert f"wrote {out}" in proc.stdout


def test_core_never_imports_streamlit():
    code = ("import core.cli, core.engine.extract, core.analysis.sweep, core.analysis.reduce, core.analysis.metrics, core.backbones.registry, core.backbones.sd_unet, core.backbones.baselines, core.engine.prompts, "
            "core.engine.cache, core.data.datasets, core.data.builtin, core.testing; import sys; "
            "assert 'streamlit' not in sys.modules, 'core imported streamlit'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
