"""Process-group setup from torchrun's environment, and a feature gather that gradients flow through.

One code path serves a plain ``python`` run (no process group at all) and ``torchrun --nproc_per_node N`` (or
multi-node through torchrun's rendezvous variables): NCCL when each rank has a GPU, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job. ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_agree(self, flag: bool) -> bool:
        """True only if ``flag`` is true on every rank (so all ranks take the same branch)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item() == 1.0)

    def gather_lists(self, items: list) -> list:
        """Every rank's ``items`` concatenated in rank order (small Python lists only: they are pickled)."""
        if not self.enabled:
            return list(items)
        parts: list[list] = [[] for _ in range(self.world_size)]
        dist.all_gather_object(parts, list(items))
        return [item for part in parts for item in part]

    def sum(self, value: float) -> float:
        if not self.enabled:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item())


def setup_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group torchrun describes in the environment, or run alone if there is none.

    Args:
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available). Under torchrun each rank takes
            ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {kind!r} asked for, but CUDA is not available")
    if kind.startswith("cuda"):
        index = local_rank if world_size > 1 else torch.device(kind).index or 0
        torch.cuda.set_device(index)
        resolved = torch.device("cuda", index)
    else:
        resolved = torch.device(kind)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("joined process group: rank %d of %d (%s)", rank, world_size, backend)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward all-reduces the gradient and keeps this rank's slice.

    Every rank computes the same loss on the gathered batch, so the gradient reaching a rank's own rows is the sum
    of what each rank's copy of the loss sends back. An all-reduce is supported by gloo and NCCL alike, unlike the
    reduce-scatter some versions of ``torch.distributed.nn`` use.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.rank, ctx.sizes = dist.get_rank(), sizes
        longest = max(sizes)
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_with_grad(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (rows may differ in number) in rank order, keeping gradients."""
    if not context.enabled:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(context.world_size)]
    dist.all_gather(sizes, size)
    return _GatherWithGrad.apply(tensor, [int(s.item()) for s in sizes])
