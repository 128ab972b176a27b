"""Which part of an extraction this process does: a rank of a process group (torchrun / accelerate launch,
one or many nodes) or an independent shard (``--shard i/n``, e.g. a Slurm array task).

A process group is joined through HF Accelerate's :class:`accelerate.PartialState` (NCCL on GPUs, gloo on
CPUs, ``cpu=True`` where there is no GPU: without it a CPU machine reports one process even under torchrun).
Work is dealt out by chunk (:func:`core.engine.chunks.split_evenly`: contiguous, no padding, no duplicates);
every rank writes its own chunk files into the shared content-addressed cache, so the merged result is
the single-process result, byte for byte.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

from core.engine.prompts import ExtractionError


@dataclass
class Split:
    rank: int = 0
    world: int = 1
    group: bool = False  # True: ranks of one process group (barriers); False: independent shard or one process
    state: Any = None
    local_rank: int = 0

    def barrier(self) -> None:
        if self.group and self.state is not None:
            self.state.wait_for_everyone()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank}/{self.world}" if self.group else (
            f"shard {self.rank}/{self.world}" if self.world > 1 else "rank 0/1")


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise ExtractionError(f"--shard must look like i/n (e.g. 0/4 for the first of 4 jobs), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise ExtractionError(f"--shard {text}: need 0 <= i < n (Slurm: --shard $SLURM_ARRAY_TASK_ID/"
                              "$SLURM_ARRAY_TASK_COUNT with --array=0-(n-1))")
    return i, n


def launched_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def current_split(shard: str | None = None, device: str = "auto") -> Split:
    """The split of the running process: ``--shard``, else the launcher's process group, else one process."""
    if shard:
        if launched_world() > 1:
            raise ExtractionError("--shard is for independent jobs; under torchrun / accelerate launch the "
                                  "processes already split the work: drop --shard")
        i, n = parse_shard(shard)
        return Split(i, n, False)
    if launched_world() <= 1:
        return Split()
    import torch
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    return Split(state.process_index, state.num_processes, state.num_processes > 1, state,
                 state.local_process_index)


def device_for(split: Split, device: str) -> str:
    """``auto`` on a multi-GPU launch: this rank's own GPU."""
    if device == "auto" and split.group:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{split.local_rank % torch.cuda.device_count()}"
    return device


class FolderProgress:
    """Progress of every rank, measured by rank 0 from the shared cache folder (chunk files of one layer
    appearing), throttled to one look a second: (images done by all ranks, images to do)."""

    def __init__(self, folder, chunk: int, total_images: int, at_start: int):
        self.folder, self.chunk, self.total, self.at_start = folder, chunk, total_images, at_start
        self._last = (0.0, 0)

    @staticmethod
    def count(folder) -> int:
        try:
            return sum(1 for e in os.scandir(folder) if e.name.endswith(".safetensors"))
        except OSError:
            return 0

    def __call__(self) -> tuple[int, int]:
        now = time.monotonic()
        if now - self._last[0] >= 1.0:
            done = min(self.total, (self.count(self.folder) - self.at_start) * self.chunk)
            self._last = (now, max(done, 0))
        return self._last[1], self.total
