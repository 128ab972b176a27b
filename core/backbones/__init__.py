"""Backbones: every feature space DomainLens can read (diffusion UNets and transformers, vision baselines)."""
