"""torchrun / DDP plumbing: read the launcher's environment, init the process group,
keep BatchNorm statistics identical across ranks, and SyncBatchNorm on CPU (gloo)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Initialise from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def average_buffers(module: nn.Module, info: DistInfo) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the ranks.

    DDP averages gradients, so parameters stay identical across ranks, but each rank's
    BatchNorm running statistics follow its own shard of the batch. The EMA teacher
    averages those buffers too, so without this the teachers (and the pseudo-labels)
    drift apart across ranks. One coalesced all-reduce of a few thousand floats per step;
    the result is bit-identical on every rank.
    """
    if not info.enabled:
        return
    buffers = [b for b in module.buffers() if b.dtype.is_floating_point]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).to(torch.float64) for b in buffers])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for b in buffers:
        n = b.numel()
        b.copy_(flat[offset : offset + n].view_as(b))
        offset += n


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm that also synchronises on CPU (PyTorch's ``nn.SyncBatchNorm`` and DDP accept GPUs only).

    In training mode under an initialised process group the batch statistics are the
    global ones: per-rank sums and sums of squares (float64) and counts are all-reduced
    with the differentiable ``torch.distributed.nn`` all-reduce, so the backward pass
    all-reduces the statistics' gradients exactly like PyTorch's GPU SyncBatchNorm.
    Everywhere else (eval mode, one process) it is plain BatchNorm. Same parameters and
    buffers as ``nn.SyncBatchNorm``, so checkpoints load into either.
    """

    process_group = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (
            self.training
            and input.device.type == "cpu"
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group or dist.group.WORLD) > 1
        ):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(input)
        group = self.process_group or dist.group.WORLD
        c = input.shape[1]
        dims = [0] + list(range(2, input.ndim))
        x = input.float()
        count = torch.full((1,), input.numel() // c, dtype=torch.float64)
        sums = [x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64), count]
        stats = all_reduce(torch.cat(sums), group=group)
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c : 2 * c] / total - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (total / (total - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = [1, c] + [1] * (input.ndim - 2)
        scale = torch.rsqrt(var + self.eps).to(torch.float32)
        shift = mean.to(torch.float32)
        if self.affine:
            y = (x - shift.view(shape)) * (scale * self.weight).view(shape) + self.bias.view(shape)
        else:
            y = (x - shift.view(shape)) * scale.view(shape)
        return y.to(input.dtype)


def cpu_sync_batchnorm(module: nn.Module) -> int:
    """Re-type every ``nn.SyncBatchNorm`` in ``module`` as ``CPUSyncBatchNorm`` (same state); returns the count."""
    n = 0
    for m in module.modules():
        if type(m) is nn.SyncBatchNorm:
            m.__class__ = CPUSyncBatchNorm
            n += 1
    return n
