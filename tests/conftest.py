"""Shared fixtures: every test runs with its own cache and dataset folders (never the user's)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# passive OpenMP waiting: spinning workers of parallel test processes (streamlit, CLI) stall each other
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# numba (pynndescent for openTSNE, umap) compiles ~50 s per fresh cache folder: keep one across sessions
# app.py compiles UMAP in a background thread at server start; tests never wait for it (2 shared cores)
os.environ.setdefault("DOMAINLENS_WARM_UMAP", "0")
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "domainlens" / "numba"))


@pytest.fixture(scope="session")
def builtin_data_home(tmp_path_factory) -> Path:
    """Built-in datasets generated once per test session."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, builtin_data_home, monkeypatch):
    monkeypatch.setenv("DOMAINLENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DOMAINLENS_DATA_HOME", str(builtin_data_home))


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny random SD-format model (64 px -> 8x8x4 latents) saved with save_pretrained."""
    from core.testing import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture()
def tiny_sd_copy(tiny_sd_dir, tmp_path) -> Path:
    """A private copy a test may modify."""
    dst = tmp_path / "tiny-sd"
    shutil.copytree(tiny_sd_dir, dst)
    return dst


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two shared cores: one torch thread avoids oversubscription (and is many times faster here).
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
