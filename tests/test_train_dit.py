"""Smoke and determinism test for the DiT training (core/training/train_dit.py): a few steps on tiny data."""

from __future__ import annotations

import json

import pytest
import torch

safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("diffusers")

from core.training import train_dit as tdit  # noqa: E402

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def _cfg(seed: int = 0) -> tdit.DiTConfig:
    return tdit.DiTConfig(seed=seed, batch_size=4, steps=3, num_layers=2, num_attention_heads=2,
                          attention_head_dim=16, eval_max_images=8, eval_stride=1, log_every=1)


def _run(out, data_dir, seed: int = 0) -> dict:
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count is part of bit-reproducibility
    try:
        return tdit.train_default_dit(out, _cfg(seed), data_dir=data_dir, max_per_dataset=12, log=None)
    finally:
        torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def data_dir(builtin_data_home):
    """The session's built-in datasets (generated once per test session, shared with the other tests)."""
    return str(builtin_data_home)


@pytest.fixture(scope="module")
def tiny_dit(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("tiny-dit") / "model"
    return out, _run(out, data_dir)


def test_train_dit_smoke_writes_a_dit_pipeline_folder(tiny_dit):
    from diffusers import DDPMScheduler, DiTPipeline, DiTTransformer2DModel

    out, record = tiny_dit
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DiTPipeline"
    assert len(index["id2label"]) == 16 and index["id2label"]["10"] == "synthetic-pacs/circle"
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))
    # the VAE is domainlens-tiny's, byte for byte
    assert (out / "vae/diffusion_pytorch_model.safetensors").read_bytes() == \
        (tdit.DEFAULT_VAE / "diffusion_pytorch_model.safetensors").read_bytes()
    log = json.loads((out / "training_log.json").read_text())
    assert log["steps"] == {"transformer": 3} and log["seed"] == 0 and log["null_class"] == 16
    assert set(log["eval"]["denoising_loss"]) == {"t100_label", "t100_null", "t500_label", "t500_null"}

    tr = DiTTransformer2DModel.from_pretrained(str(out), subfolder="transformer", use_safetensors=True)
    assert tr.config.num_embeds_ada_norm == 16 and tr.config.sample_size == 16 and len(tr.transformer_blocks) == 2
    pipe = DiTPipeline.from_pretrained(str(out), local_files_only=True)
    assert isinstance(pipe.scheduler, DDPMScheduler)
    assert pipe.get_label_ids(["synthetic-pacs/star"]) == [14]
    with torch.no_grad():  # the null class (16) is a valid label
        eps = tr(torch.zeros(2, 4, 16, 16), timestep=torch.tensor([50, 50]), class_labels=torch.tensor([3, 16])).sample
    assert eps.shape == (2, 4, 16, 16) and torch.isfinite(eps).all()
    # a real (unguided: DiTPipeline hard-codes null class 1000 for guidance) two-step generation runs
    img = pipe(class_labels=[14], num_inference_steps=2, guidance_scale=1.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 64, 64, 3)


def test_train_dit_is_deterministic(tiny_dit, tmp_path, data_dir):
    out_a, _ = tiny_dit
    out_b = tmp_path / "again"
    _run(out_b, data_dir)
    a, b = safetensors_torch.load_file(str(out_a / WEIGHTS)), safetensors_torch.load_file(str(out_b / WEIGHTS))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between two runs with the same seed"
    c = tmp_path / "other-seed"
    _run(c, data_dir, seed=1)
    other = safetensors_torch.load_file(str(c / WEIGHTS))
    assert any(not torch.equal(a[k], other[k]) for k in a), "a different seed gave the same weights"
