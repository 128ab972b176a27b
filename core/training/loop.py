"""Helpers shared by the training scripts: deterministic algorithms, the LR schedule, seeded epoch order."""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@contextlib.contextmanager
def deterministic():
    """Deterministic algorithms for the duration (restores the previous setting)."""
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _lr_lambda(steps: int, warmup: int, floor: float = 0.05) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
    return f


class _Order:
    """Deterministic epoch-wise shuffling driven by a torch.Generator."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.g, self.perm, self.pos = n, generator, None, n

    def next(self, b: int) -> torch.Tensor:
        out = []
        while b > 0:
            if self.pos >= self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.g), 0
            take = min(b, self.n - self.pos)
            out.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            b -= take
        return torch.cat(out)


def _say(log, msg):
    if log:
        log(msg)
