"""Second hostile pass (issue 18): label text never becomes a path outside the output folder.

A manifest may name a domain ``x/../../PWNED``. ``dg`` writes its DomainBed files under index + sanitised
names (with the real names in setting.json), the zip download is built in memory with no ``..`` entry,
and nothing is written to a temporary folder."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.analysis import dg, dg_export
from core.cli import main

EVIL = "x/../../PWNED"


def _manifest(base: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["path,domain,class"]
    for j, d in enumerate(("b", "c", EVIL)):
        for c in ("k0", "k1"):
            for i in range(3):
                p = base / f"img{j}{c}{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(p)
                rows.append(f"{p.name},{d},{c}")
    (base / "list.csv").write_text("\n".join(rows) + "\n")
    return base / "list.csv"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def evil_result():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 4)).astype(np.float32)
    doms = ["b"] * 8 + ["c"] * 8 + [EVIL] * 8
    cls = ["k0", "k1"] * 12
    folds = dg.leave_one_domain_out(X, doms, cls, n_clusters=2)
    return dg.DGResult("m", "blk", None, folds, paths=[f"/data/{i}.png" for i in range(24)], domains=doms,
                       classes=cls)


def test_dg_cli_with_a_traversal_domain_writes_only_inside_its_out_folder(tmp_path, capsys):
    csv = _manifest(tmp_path / "data")
    work = tmp_path / "a" / "b" / "c"
    out = work / "out" / "ranking.csv"
    before = _files(tmp_path)
    assert main(["dg", "--dataset", str(csv), "--model", "pixels", "--device", "cpu", "--no-progress",
                 "--out", str(out), "--k-sweep", "--train-domain-sweep"]) == 0
    printed = capsys.readouterr().out
    assert "warning" not in printed and "-k-sweep.csv" in printed  # pixels learned from nothing: no warning
    new = {n for n in _files(tmp_path) - before if n != "cache" and not n.startswith("cache/")}  # the feature cache
    assert new and all(n.startswith("a/b/c/out") or n in ("a", "a/b", "a/b/c") for n in new), sorted(new)
    assert not any("PWNED" in n and "test_env_2_x_PWNED" not in n for n in new)
    envs = sorted(p.name for p in (work / "out" / "ranking-domainbed").iterdir() if p.is_dir())
    assert envs == ["test_env_0_b", "test_env_1_c", "test_env_2_x_PWNED"]
    import pandas as pd

    ks = pd.read_csv(work / "out" / "ranking-k-sweep.csv")
    assert list(ks["k_asked"]) == [2, 6, 10] and list(ks["k_rule"])[0] == "classes x 1"  # 2 classes; 2 training domains
    assert list(pd.read_csv(work / "out" / "ranking-train-domains.csv")["n_train_domains"]) == [2]
    meta = json.loads((work / "out" / "ranking-domainbed" / "setting.json").read_text())
    assert meta["test_envs"]["test_env_2_x_PWNED"] == EVIL  # the real name, mapped


def test_domainbed_zip_is_built_in_memory_with_no_dotdot_entries(evil_result, tmp_path, monkeypatch):
    import tempfile

    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    data = dg_export.domainbed_zip(evil_result)
    assert list(private.iterdir()) == []  # nothing written, not even to a temporary folder
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert names and not any(".." in n or n.startswith("/") or "\\" in n for n in names), names
    assert "test_env_2_x_PWNED/pseudo_domains.csv" in names


def test_sanitiser_and_the_last_guard(evil_result, tmp_path, monkeypatch):
    for name in (EVIL, "..", "/etc/passwd", "C:\\Windows", "a b", "", "ünï"):
        part = dg_export.safe_part(name)
        assert part and "/" not in part and "\\" not in part and "." not in part and ":" not in part
    assert dg_export.safe_part("cartoon") == "cartoon" and dg_export.safe_part("real world") == "real_world"
    monkeypatch.setattr(dg_export, "safe_part", lambda name, max_len=60: "../../../escaped")
    with pytest.raises(ValueError, match="refusing to write"):
        dg_export.export_domainbed(evil_result, tmp_path / "out")
    assert not (tmp_path / "escaped").exists()
