"""The prepared GPU script (``python -m bench.gpu``) runs end to end at toy sizes on the CPU, so that a lent GPU's
few minutes are spent measuring, not debugging: every section writes its rows, none of them failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_script_runs_every_section_at_toy_sizes(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "bench.gpu", "--tiny", "--device", "cpu", "--skip-cli", "--out",
                        str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((out / "gpu.json").read_text())
    rows = got["rows"]
    failed = [x for x in rows if x["value"] == "failed"]
    assert not failed, failed
    metrics = [x["metric"] for x in rows]
    for model in ("SD-2.1-base-sized", "DiT-XL/2-512-sized"):
        mine = [m for m in metrics if m.startswith(f"[{model}")]
        assert any("all layers, batch 2" in m for m in mine) and any("(early exit)" in m for m in mine)
        assert any("end to end / model only" in m for m in mine)
        assert any("stage profile" in m for m in mine)
        assert any("projected DomainNet wall time" in m for m in mine)
    profile = next(x for x in rows if "stage profile" in x["metric"])
    for stage in ("decode", "resize", "host->device", "VAE", "model", "pooling", "device->host", "write"):
        assert f"{stage} " in profile["note"]
    assert got["info"]["tiny"] is True and (out / "gpu.md").read_text().count("|") > 20
