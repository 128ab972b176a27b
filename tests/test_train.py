"""Smoke and determinism tests for the default-model and baseline-CNN training (CPU, a few steps)."""

from __future__ import annotations

import json

import pytest
import torch

safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("diffusers")

from core.training import train_default as td  # noqa: E402
from core.backbones.baselines import cnn_features, load_baseline_cnn  # noqa: E402
from core.training.train_baseline import train_baseline  # noqa: E402

WEIGHT_FILES = ("vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Built-in datasets: the shared cache if set (fast), else generated once into a temp folder."""
    import os

    return os.environ.get("DOMAINLENS_DATA_HOME") or str(tmp_path_factory.mktemp("dl_data"))


def _tiny_cfg(seed: int = 0) -> td.TrainConfig:
    return td.TrainConfig(seed=seed, batch_size=4, vae_steps=3, unet_steps=3, eval_max_images=8, log_every=1)


def _run(out, data_dir, seed: int = 0) -> dict:
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count is part of bit-reproducibility
    try:
        return td.train_default(out, _tiny_cfg(seed), data_dir=data_dir, max_per_dataset=12, log=None)
    finally:
        torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("tiny") / "model"
    record = _run(out, data_dir)
    return out, record


def test_tokenizer_word_level(tmp_path):
    tok = td.build_tokenizer(tmp_path / "tok", max_length=32)
    ids = tok("a photo of the digit 3 rotated 45 degrees").input_ids
    toks = tok.convert_ids_to_tokens(ids)
    assert toks == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "the</w>", "digit</w>", "3</w>",
                    "rotated</w>", "4</w>", "5</w>", "degrees</w>", "<|endoftext|>"]
    assert len(set(tok("a photo of a star").input_ids)) > 2  # not the silent "every id is 2" failure
    assert tok("").input_ids == [tok.bos_token_id, tok.eos_token_id]
    assert tok.model_max_length == 32
    # unknown words fall back to characters rather than to a single unknown id
    assert len(tok("zebra", add_special_tokens=False).input_ids) > 1


def test_captions_include_app_template_and_empty():
    import random

    cfg = td.TrainConfig()
    rng = random.Random(0)
    caps = [td.sample_caption("synthetic-pacs", "sketch", "star", rng, cfg) for _ in range(2000)]
    assert 0.05 < caps.count("") / len(caps) < 0.15
    assert "a photo of a star" in caps and "a sketch of a star" in caps
    caps = {td.sample_caption("rotated-digits", "rot45", "3", rng, cfg) for _ in range(500)}
    assert "a photo of the digit 3 rotated 45 degrees" in caps and "a photo of a 3" in caps


def test_train_default_smoke(tiny_model):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    out, record = tiny_model
    for sub in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        assert (out / sub).is_dir()
    assert (out / "model_index.json").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))
    log = json.loads((out / "training_log.json").read_text())
    assert log["steps"] == {"vae": 3, "unet": 3} and log["seed"] == 0
    assert set(log["eval"]["denoising_loss"]) == {"t100_caption", "t100_empty", "t500_caption", "t500_empty"}
    assert log["eval"]["vae_recon_mse"]["all"] > 0

    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.vae.config.scaling_factor == pytest.approx(record["scaling_factor"])
    assert pipe.unet.config.sample_size == 16 and pipe.unet.config.cross_attention_dim == 64
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.mode()
        assert z.shape == (1, 4, 16, 16)
        cond = td.encode_text(pipe.text_encoder, pipe.tokenizer, [""])
        eps = pipe.unet(z, torch.tensor([50]), encoder_hidden_states=cond).sample
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    img = pipe("a photo of a star", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert img.shape == (1, 64, 64, 3)


def test_train_default_is_deterministic(tiny_model, tmp_path, data_dir):
    out_a, _ = tiny_model
    out_b = tmp_path / "again"
    _run(out_b, data_dir)
    for f in WEIGHT_FILES:
        a, b = safetensors_torch.load_file(str(out_a / f)), safetensors_torch.load_file(str(out_b / f))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{f}:{k} differs between two runs with the same seed"
    assert (out_a / "tokenizer" / "tokenizer.json").read_text() == (out_b / "tokenizer" / "tokenizer.json").read_text()


def test_baseline_cnn_smoke(tmp_path, data_dir):
    out = tmp_path / "cnn"
    cfg = train_baseline(out, steps=2, batch_size=8, data_dir=data_dir, max_per_dataset=12, log=None)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert cfg["num_classes"] == 16  # 6 shapes + 10 digits, one joint head
    model = load_baseline_cnn(out)
    feats = cnn_features(model, torch.rand(5, 3, 64, 64) * 2 - 1)
    assert feats.shape == (5, cfg["feature_dim"]) and torch.isfinite(feats).all()
    assert not model.training
