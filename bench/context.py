"""What every benchmark gets (:class:`Ctx`) and small helpers shared by the benchmark modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.common import default_model, row

GPU_NOTE = ("GPU numbers are not available: this session was not lent a GPU machine, so every figure here is "
            "CPU-only.")


@dataclass
class Ctx:
    """What every benchmark gets: mode, a scratch folder and a logger."""

    quick: bool = False
    work: Path = Path("/tmp/domainlens-bench")
    log: Callable[[str], None] = print
    _memo: dict = field(default_factory=dict)

    def default_model(self):
        if "default" not in self._memo:
            self._memo["default"] = default_model(self.work)
        return self._memo["default"]


def _threads_note() -> str:
    from threadpoolctl import threadpool_info

    n = max((i.get("num_threads", 0) for i in threadpool_info()), default=0)
    return f"{n} BLAS/OpenMP thread(s)"


def _speed_row(metric: str, x: float, target: float | None, note: str = "") -> dict:
    return row(metric, round(x, 2), "x", f">= {target:g}x" if target else None,
               (x >= target) if target else None, note)
