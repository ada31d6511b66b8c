"""Batch denoising across processes started by torchrun: one GPU per rank, or CPU processes.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT in
each process; `from_env` reads them (None without torchrun, or with a single process). Every rank
plans the whole batch (the same checks as one process), the ranks agree that their plans match
and succeeded before any rank writes, each rank denoises its own share of the sorted list
(round-robin: rank r takes jobs r, r + W, r + 2W, ...), and rank 0 prints a summary gathered from
all ranks. Nothing is node-specific: on several nodes torchrun's rendezvous forms the group, and
the input and output folders must be on a filesystem every node sees.

The collectives are a handful of small Python objects, so they go over a gloo group (TCP) on CPUs
and GPUs alike; where the caller already set up a process group (NCCL, say) a gloo group is made
beside it and the caller's group is left alone.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Sequence, TypeVar

T = TypeVar("T")

# A rank that finishes its share early waits for the slowest one in the final gather; gloo's
# default 30-minute timeout would cut off a long, unevenly split batch. A rank that dies makes
# torchrun stop the others, so a long timeout never leaves a hung job behind.
GATHER_TIMEOUT = timedelta(days=7)


@dataclass
class Context:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    group: Any = None  # the gloo group the gathers use (None: the default group)
    owns_default_group: bool = False
    host: str = field(default_factory=socket.gethostname)


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def from_env() -> Context | None:
    """The rank layout torchrun gave this process, or None when it runs alone."""
    world_size = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    if world_size is None or rank is None or world_size <= 1:
        return None
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
    local_rank = _env_int("LOCAL_RANK", rank % max(local_world_size, 1))
    return Context(rank, world_size, local_rank, max(local_world_size, 1))


def cpu_threads(local_world_size: int) -> int:
    """Torch threads per rank: the cores this process may run on (affinity, taskset, cgroup
    cpusets) shared among the ranks of its node, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))


def rank_device(device: str, context: Context) -> str:
    """The device a rank runs on: cuda:LOCAL_RANK for 'auto' (when CUDA is available) and for
    'cuda'; anything more specific ('cpu', 'cuda:N', 'mps') as given."""
    import torch

    name = (device or "auto").lower()
    if name in ("auto", "cuda") and torch.cuda.is_available():
        if context.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"rank {context.rank} is local rank {context.local_rank}, but this node has {torch.cuda.device_count()} CUDA GPU(s); "
                f"start at most {torch.cuda.device_count()} processes per node (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(context.local_rank)
        return f"cuda:{context.local_rank}"
    return device


def setup(context: Context) -> Context:
    """Join the process group (or reuse the caller's) and cap this rank's CPU threads."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(cpu_threads(context.local_world_size))
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed; run without torchrun")
    if dist.is_initialized():
        if dist.get_world_size() != context.world_size or dist.get_rank() != context.rank:
            raise ValueError("the existing process group does not match RANK/WORLD_SIZE")
        if dist.get_backend() != "gloo":
            context.group = dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT)
    else:
        dist.init_process_group(backend="gloo", timeout=GATHER_TIMEOUT, rank=context.rank, world_size=context.world_size)
        context.owns_default_group = True
    return context


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank `rank`'s share: items rank, rank + W, rank + 2W, ... of the (sorted) list. Every item
    goes to exactly one rank, and neighbouring (similar) scans spread over the ranks."""
    return list(items[rank::world_size])


def all_gather(context: Context, value: Any) -> list[Any]:
    """`value` from every rank, in rank order, on every rank (a barrier as well)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value, group=context.group)
    return gathered


def barrier(context: Context) -> None:
    import torch.distributed as dist

    dist.barrier(group=context.group)


def teardown(context: Context) -> None:
    """Leave the group this module made; a caller's own group stays."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if context.group is not None:
        dist.destroy_process_group(context.group)
        context.group = None
    if context.owns_default_group:
        dist.destroy_process_group()
        context.owns_default_group = False


@dataclass
class RankReport:
    rank: int
    host: str
    device: str
    jobs: int
    written: int
    failures: list[str]
    seconds: float


def summary_lines(reports: list[RankReport]) -> list[str]:
    """Rank 0's summary: a total line, then one line per rank."""
    jobs = sum(r.jobs for r in reports)
    written = sum(r.written for r in reports)
    failed = sum(len(r.failures) for r in reports)
    hosts = len({r.host for r in reports})
    slowest = max(r.seconds for r in reports)
    lines = [
        f"{len(reports)} ranks on {hosts} node{'s' if hosts != 1 else ''}: {written} of {jobs} scans written, "
        f"{failed} failed, {slowest:.1f} s (slowest rank)"
    ]
    lines += [
        f"  rank {r.rank} ({r.host}, {r.device}): {r.written} of {r.jobs} written, {len(r.failures)} failed, {r.seconds:.1f} s"
        for r in reports
    ]
    return lines
