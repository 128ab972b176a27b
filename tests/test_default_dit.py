"""The shipped second embedded model, models/domainlens-tiny-dit (a tiny class-conditional DiT), on held-out data.

Every number asserted here is recomputed from the shipped weights; none is read from the training log.
The held-out splits were never seen in training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.training.train_default import HELDOUT_SETS, ImageSet, load_images
from core.training.train_dit import DEFAULT_VAE, denoising_loss, heldout_latents

ROOT = Path(__file__).resolve().parents[1]
DIT = ROOT / "models" / "domainlens-tiny-dit"
NAME = "domainlens-tiny-dit"
PER_DATASET = 32  # a stratified, seeded subsample: 64 held-out images, all domains and classes of both datasets


def _sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def transformer():
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel.from_pretrained(str(DIT), subfolder="transformer", use_safetensors=True,
                                                 local_files_only=True).eval()


@pytest.fixture(scope="module")
def heldout(builtin_data_home, transformer):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(DIT), subfolder="vae", use_safetensors=True).eval()
    data = load_images(HELDOUT_SETS, builtin_data_home, max_per_dataset=PER_DATASET, seed=0)
    classes = [json.loads((DIT / "model_index.json").read_text())["id2label"][str(i)]
               for i in range(transformer.config.num_embeds_ada_norm)]
    return heldout_latents(vae, data, classes)


def test_shipped_dit_folder_layout_and_size():
    files = _sizes(DIT)
    index = json.loads((DIT / "model_index.json").read_text())
    assert index["_class_name"] == "DiTPipeline"
    assert index["transformer"] == ["diffusers", "DiTTransformer2DModel"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    cfg = json.loads((DIT / "transformer" / "config.json").read_text())
    # the null class is index num_embeds_ada_norm = number of labels
    assert cfg["num_embeds_ada_norm"] == len(index["id2label"]) == 16
    assert cfg["norm_type"] == "ada_norm_zero" and cfg["patch_size"] == 2 and cfg["sample_size"] == 16
    assert {"transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"} <= set(files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))], "pickled weights shipped"
    weights = sum(v for k, v in files.items() if k.endswith(".safetensors"))
    assert weights <= 25 * 2**20, f"{weights / 2**20:.1f} MB of safetensors > 25 MB"
    # the VAE is domainlens-tiny's, byte for byte
    assert (DIT / "vae/diffusion_pytorch_model.safetensors").read_bytes() == \
        (DEFAULT_VAE / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (DIT / "README.md").is_file() and (DIT / "training_log.json").is_file()


def test_diffusers_loads_it_from_safetensors(transformer):
    from diffusers import DiTTransformer2DModel

    assert isinstance(transformer, DiTTransformer2DModel)
    assert len(transformer.transformer_blocks) == json.loads((DIT / "transformer/config.json").read_text())["num_layers"]


@pytest.mark.parametrize("t", [100, 500])
def test_denoising_loss_beats_fresh_init(transformer, heldout, t):
    """Held-out epsilon-MSE (true labels and the null class) <= 0.7x that of the same architecture freshly
    initialised, and well below the noise variance."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    sched = DDPMScheduler.from_pretrained(str(DIT), subfolder="scheduler")
    lat, labels = heldout
    torch.manual_seed(0)
    fresh = DiTTransformer2DModel.from_config(transformer.config).eval()
    baseline = denoising_loss(fresh, lat, labels, sched, t)
    for y in (labels, torch.full_like(labels, transformer.config.num_embeds_ada_norm)):
        trained = denoising_loss(transformer, lat, y, sched, t)
        assert trained <= 0.7 * baseline, (trained, baseline)
        assert trained < 0.3, trained


def test_domain_nmi_t50_above_t900_through_the_product_path():
    """The paper's finding for the default block, through get_features(ExtractionConfig(model=NAME))."""
    from core.analysis.metrics import score_features
    from core.backbones.registry import load_backbone
    from core.engine.extract import ExtractionConfig, get_features

    model = load_backbone(NAME, "cpu")
    assert model.family == "dit" and model.default_layer == "transformer_blocks.6"
    assert model.conditioning.null_class == 16
    nmi = {}
    for t in (50, 900):
        fs = get_features(ExtractionConfig(dataset="synthetic-pacs:heldout", model=NAME, timestep=t,
                                           max_per_domain=20, seed=0), [model.default_layer], device="cpu")
        block = model.default_layer
        s = score_features(fs.features[block], fs.domain_labels, fs.class_labels, n_seeds=3, probe=False)
        nmi[t] = s.domain_nmi
    assert nmi[50] > nmi[900], nmi
