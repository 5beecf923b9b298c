"""The processes of one `qwenvl-roi predict` job: one, or one per rank under torchrun (any number of nodes).

Ranks only need to wait for each other (before splitting the pending work, before the merge), so they talk
over gloo whatever the device: no tensor ever crosses between them. Each rank scores on its own device
(``cuda:LOCAL_RANK`` when GPUs are visible).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def barrier(self) -> None:
        """Wait until every rank gets here (no-op for one process)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def from_first(self, compute: Callable[[], T]) -> T:
        """``compute()`` run on rank 0 only and its value handed to every rank: work done once per job
        (hashing a model's weights) instead of once per rank. An error on rank 0 is raised on every rank,
        so none waits for a value that never comes."""
        if self.world == 1:
            return compute()
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.rank == 0:
            try:
                box = [(True, compute())]
            except Exception as exc:
                box = [(False, f"{type(exc).__name__}: {exc}")]
                dist.broadcast_object_list(box, src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        ok, value = box[0]
        if not ok:
            raise RuntimeError(f"rank 0 failed: {value}")
        return value

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()

    def device(self, requested: str | None) -> str | None:
        """The device to score on: the request, or this rank's GPU when GPUs are visible. Under torchrun a
        request without an index (``cuda``) means this rank's own GPU, not every rank on GPU 0."""
        if self.world == 1:
            return requested
        import torch

        if requested is None:
            return f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        device = torch.device(requested)
        if device.type != "cpu" and device.index is None:
            return f"{device.type}:{self.local_rank}"
        return requested


def from_environment() -> Ranks:
    """Ranks from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); one process
    otherwise. Barriers may wait long (ranks finish their shares at different times): 24 hours."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=24))
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
