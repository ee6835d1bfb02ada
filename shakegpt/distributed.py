"""Several processes, taught in notebook 06: torchrun starts one per GPU (or CPU worker), each joins a process group,
DistributedDataParallel averages their gradients, and losses are summed over them. Alone, a process is rank 0 of 1."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .hardware import get_device


@dataclass
class Distributed:
    """Where this process stands: rank 0 of 1 when run alone; under torchrun (any number of processes, one
    included) a member of a process group, whose model DistributedDataParallel wraps."""

    rank: int = 0
    world_size: int = 1
    in_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> Distributed:
        """This process as torch.distributed sees it now: in a process group or alone."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), in_group=True)
        return cls()


def setup_distributed(requested_device: str) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes in RANK/LOCAL_RANK/WORLD_SIZE (NCCL on CUDA, gloo on CPU), or run
    alone when not started by torchrun."""
    device = get_device(requested_device)
    if "RANK" in os.environ:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed.current(), device


def leave_process_group() -> None:
    """Leave the process group, if this process joined one."""
    if Distributed.current().in_group:
        dist.destroy_process_group()


def sum_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The sum of `value` over all processes (itself when running alone)."""
    if Distributed.current().in_group:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value
