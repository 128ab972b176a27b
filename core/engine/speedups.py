"""Opt-in speed options for GPUs: channels-last memory format and ``torch.compile``.

Both change features only at float-rounding level (other kernels, summed in another order), like the batch
size on a GPU, so they are not part of the cache key; they are off by default because on the CPU the default
path is bit-identical whatever the batch size, and these are not (tests check they agree to rounding).
Attention already runs through PyTorch's scaled-dot-product attention (diffusers' ``AttnProcessor2_0``, which
picks Flash / memory-efficient kernels on GPUs): :func:`attention_kernels` reports what a model uses.

Neither option names a model family: they apply to every ``torch.nn.Module`` a backbone holds.
"""

from __future__ import annotations

import dataclasses
import os

import torch


def backbone_modules(model) -> dict[str, torch.nn.Module]:
    """The backbone's modules by field name (the network, its VAE, text encoders...), each once."""
    out, seen = {}, set()
    for f in dataclasses.fields(model):
        m = getattr(model, f.name, None)
        if isinstance(m, torch.nn.Module) and id(m) not in seen:
            seen.add(id(m))
            out[f.name] = m
    return out


def channels_last(model) -> int:
    """Store every 4-D weight of the backbone's modules channels-last (NHWC: faster convolutions with tensor
    cores); returns the number of modules converted."""
    mods = backbone_modules(model)
    for m in mods.values():
        m.to(memory_format=torch.channels_last)
    return len(mods)


def _compile_units(module: torch.nn.Module, hooked: set[int]):
    """Submodules to compile: the children of hooked layers (the layer itself keeps its hooks outside any
    compiled graph, so hooks and early exit work as before), recursing through containers."""
    for child in module.children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential)) or id(child) in hooked:
            yield from _compile_units(child, hooked)
        elif any(id(m) in hooked for m in child.modules()):
            yield from _compile_units(child, hooked)
        else:
            yield child


def compile_model(model, backend: str | None = None, mode: str | None = None) -> int:
    """``torch.compile`` the backbone's compute in place, below its hooked layers: every submodule that holds no
    hooked layer is compiled (``nn.Module.compile``), so the hooks (and early exit) stay in Python. The first
    call of each shape compiles (minutes for a large UNet; then faster per image on GPUs). ``backend`` defaults
    to ``$DOMAINLENS_COMPILE_BACKEND`` or inductor. Returns the number of compiled submodules."""
    backend = backend or os.environ.get("DOMAINLENS_COMPILE_BACKEND") or "inductor"
    hooked = {id(model.module(layer)) for layer in model.layers}
    n = 0
    for m in backbone_modules(model).values():
        for unit in _compile_units(m, hooked):
            unit.compile(backend=backend, mode=mode)
            n += 1
    return n


def apply(model, *, use_channels_last: bool = False, use_compile: bool = False) -> list[str]:
    """Apply the chosen options to ``model`` in place; returns human notes of what was done."""
    notes = []
    if use_channels_last:
        notes.append(f"channels-last weights in {channels_last(model)} module(s)")
    if use_compile:
        notes.append(f"torch.compile on {compile_model(model)} submodule(s) (first batches compile)")
    return notes


def attention_kernels(model) -> list[str]:
    """The attention processor classes of the backbone's diffusers modules (``AttnProcessor2_0`` = SDPA)."""
    kinds = set()
    for m in backbone_modules(model).values():
        procs = getattr(m, "attn_processors", None)
        if isinstance(procs, dict):
            kinds |= {type(p).__name__ for p in procs.values()}
    return sorted(kinds)
