"""Several processes with PyTorch's own engine: ``torch.distributed``, launched by ``torchrun``.

``python script.py`` runs as one process (no process group); ``torchrun --nproc_per_node=N
script.py`` (or ``srun`` through torchrun's rendezvous) starts N, and :func:`init_distributed`
joins them into one group: NCCL on GPUs (one GPU per process, ``cuda:LOCAL_RANK``), gloo on
CPUs. Only rank 0 writes the files that belong to the whole run; every rank takes its share
of the work.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from ddpm_ood.utils.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True inside a process group (torchrun), even of one process."""
        return torch_dist.is_available() and torch_dist.is_initialized()

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place; returns it."""
        if self.active and self.world_size > 1:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, value):
        """Rank 0's ``value`` on every rank (a small picklable object)."""
        if not (self.active and self.world_size > 1):
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def share(self, n_rows: int) -> slice:
        """This rank's rows of a batch of ``n_rows``: contiguous, sizes differing by at most one
        (the first ``n_rows % world_size`` ranks take one more)."""
        base, extra = divmod(n_rows, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join torchrun's process group if launched by it; returns (Dist, this process's device).

    On CUDA each process takes ``cuda:LOCAL_RANK``; on CPUs every process uses the CPU.
    """
    if not launched_by_torchrun():
        return Dist(), device
    rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started local rank {local_rank}, but this node has "
                              f"{torch.cuda.device_count()} CUDA device(s); lower --nproc_per_node.")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    dist = Dist(rank, world_size, local_rank)
    if dist.is_main:
        logger.info("torch.distributed: %d processes (%s)", world_size, torch_dist.get_backend())
    return dist, device


def shutdown(dist: Dist) -> None:
    if dist.active:
        torch_dist.destroy_process_group()
