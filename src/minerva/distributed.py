"""The tensor-parallel process group: which rank this process is, how many there are, and the
collectives the model needs (sum all-reduce, all-gather along a dim, the minimum of an int,
objects gathered for the start-up check). Every collective is a no-op at world size 1, where
the layers do not even call them (their `all_reduce` hooks are None).

Ranks of one engine run on one machine: rank 0 (the engine's process) hosts the TCP store the
others connect to; gloo on the CPU, NCCL on CUDA (the same code path; NCCL is untested here).
A collective whose peer died raises (gloo: at once; both: after `timeout`) instead of hanging.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from minerva.errors import ConfigError, MinervaError

STORE_HOST = "127.0.0.1"


class DistributedError(MinervaError):
    """A rank of a tensor-parallel engine died, hung past the timeout or failed to start."""


@dataclass(frozen=True)
class ParallelContext:
    """This process's place in the tensor-parallel group (rank 0 of 1: no parallelism)."""

    rank: int = 0
    world_size: int = 1
    group: Any = field(default=None, compare=False, repr=False)
    """Its process group (None: every process, the default group)."""

    @property
    def is_parallel(self) -> bool:
        return self.world_size > 1

    def shard(self, size: int, what: str) -> int:
        """size / world_size, or a ConfigError naming `what` when it does not divide."""
        if size % self.world_size:
            raise ConfigError(
                f"tensor_parallel_size={self.world_size} does not divide the model's {what} "
                f"({size}): use a tensor_parallel_size that divides it"
            )
        return size // self.world_size

    def padded_shard(self, size: int) -> int:
        """Rows per rank of a dimension split with padding (the vocabulary): ceil(size / n)."""
        return -(-size // self.world_size)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of `x` over the ranks, in place; returns x."""
        if self.world_size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's `x` concatenated along `dim`, in rank order."""
        if self.world_size == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=dim)

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank `src`'s `x` on every rank, in place; returns x (the whole world only)."""
        if self.world_size > 1:
            dist.broadcast(x, src)
        return x

    def all_reduce_min(self, value: int, device: torch.device) -> int:
        """The smallest of every rank's `value` (the KV blocks every rank can hold)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def all_gather_object(self, obj: object) -> list[object]:
        """Every rank's picklable `obj`, in rank order."""
        if self.world_size == 1:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


SINGLE = ParallelContext()


def backend_for(device_type: str) -> str:
    """NCCL between CUDA devices, gloo on the CPU (MPS has no collective backend)."""
    if device_type == "cuda":
        return "nccl"
    if device_type == "cpu":
        return "gloo"
    raise ConfigError(
        f"tensor parallelism runs on cuda or cpu, not {device_type}: use tensor_parallel_size=1"
    )


def create_store(world_size: int, timeout: float) -> dist.TCPStore:
    """Rank 0's rendezvous store on a free local port (its `.port` goes to the other ranks)."""
    return dist.TCPStore(
        STORE_HOST,
        0,
        world_size,
        is_master=True,
        timeout=datetime.timedelta(seconds=timeout),
        wait_for_workers=False,  # they connect once spawned
    )


def init_process_group(
    rank: int,
    world_size: int,
    device_type: str,
    port: int,
    timeout: float,
    store: dist.TCPStore | None = None,
) -> ParallelContext:
    """Join the group (rank 0 passes the store it created, the others its port)."""
    if dist.is_initialized():
        raise DistributedError(
            "this process already belongs to a process group: close the other tensor-parallel "
            "engine (LLM.close()) before starting one"
        )
    delta = datetime.timedelta(seconds=timeout)
    if store is None:
        store = dist.TCPStore(STORE_HOST, port, world_size, is_master=False, timeout=delta)
    dist.init_process_group(
        backend_for(device_type), store=store, rank=rank, world_size=world_size, timeout=delta
    )
    return ParallelContext(rank, world_size)


def destroy_process_group() -> None:
    """Leave the group (no-op when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class PipelineContext:
    """This process's stage of a pipeline-parallel group: a contiguous run of the layers; the
    hidden state goes to the next stage, the last stage's logits back to every stage."""

    rank: int
    size: int
    tp_size: int = 1
    """Ranks per stage (tensor parallelism inside each stage); global rank = stage x tp + tp."""
    tp_rank: int = 0
    column: Any = field(default=None, compare=False, repr=False)
    """The group of this tp_rank's ranks across the stages (None: every process)."""

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    def layer_range(self, num_layers: int) -> tuple[int, int]:
        """[start, end) of this stage's layers; the first stages take one more when the count
        does not divide."""
        base, extra = divmod(num_layers, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def _global(self, stage: int) -> int:
        return stage * self.tp_size + self.tp_rank

    def send_next(self, x: torch.Tensor) -> None:
        dist.send(x.contiguous(), self._global(self.rank + 1))

    def recv_prev(self, out: torch.Tensor) -> torch.Tensor:
        dist.recv(out, self._global(self.rank - 1))
        return out

    def share_from_last(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's `x` on every stage (x: a buffer of the same shape elsewhere)."""
        if x.numel():
            x = x.contiguous()  # the logits may be a view (a padded vocabulary cut off)
            dist.broadcast(x, self._global(self.size - 1), group=self.column)
        return x


def parallel_layout(rank: int, tp: int, pp: int) -> tuple[ParallelContext, PipelineContext | None]:
    """This rank's tensor-parallel context and pipeline stage in a group of tp x pp processes
    (ranks s*tp .. s*tp + tp - 1 are stage s). Every rank must call it, in the same order:
    it creates the subgroups when both kinds are on."""
    if tp > 1 and pp > 1:
        stages = [dist.new_group(list(range(s * tp, (s + 1) * tp))) for s in range(pp)]
        columns = [dist.new_group(list(range(t, tp * pp, tp))) for t in range(tp)]
        stage, tp_rank = divmod(rank, tp)
        tensor = ParallelContext(tp_rank, tp, stages[stage])
        return tensor, PipelineContext(stage, pp, tp, tp_rank, columns[tp_rank])
    tensor = ParallelContext(rank, tp) if tp > 1 else SINGLE
    return tensor, (PipelineContext(rank, pp) if pp > 1 else None)
