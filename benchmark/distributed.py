"""Multi-process training and sampling with ``torch.distributed``: one or many GPUs, one or many nodes.

Launch any command under ``torchrun`` (``torchrun --nproc_per_node 4 -m benchmark run ...``; for several
nodes add ``--nnodes``, ``--node_rank`` and ``--rdzv_endpoint``). The process group is read from the
environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``):
NCCL on CUDA, gloo on CPU. Without those variables everything below is a no-op for one process.

Training is data parallel with DistributedDataParallel's semantics: each step's global batch
(``train.batch_size``, drawn by :class:`benchmark.train.StepSampler` exactly as for one process) is cut into
``world_size`` equal contiguous slices, one per rank, and after every backward pass the gradient of every
parameter is averaged over the ranks. For a loss that is a mean over the batch,
``mean_r grad(mean over slice r) = grad(mean over the global batch)`` when slices are equal, so a step moves
the weights as the one-process step would, up to float summation order.

Why not wrap modules in ``DistributedDataParallel``: a method owns its optimizers and several networks
(SG2Im: a generator and two discriminators stepped in turn; diffusion: the denoiser and its EMA copy) and
calls sub-modules directly (``self.net.cond(...)``), which a DDP wrapper would not intercept. Instead
:class:`GradientAverager` registers a post-accumulate-grad hook on every trainable parameter; the first hook
of a backward pass queues one callback at the end of that pass (as DDP's reducer and FSDP do), which
all-reduces the gradients touched in the pass (one flat buffer per dtype). Methods stay unaware of
distribution. Assumptions (DDP has the same ones): every rank runs the same number of backward passes per
step, and a method zeroes gradients before each backward (every method here does). BatchNorm running
statistics are averaged over the ranks after each step and other buffers follow rank 0 (:func:`sync_buffers`). Random numbers drawn inside
``train_step`` (diffusion timesteps and noise, SG2Im layout noise) come from a per-rank stream, so runs with
different world sizes are statistically, not bitwise, equivalent for such methods; losses that average over
objects rather than images weight the slices unequally, as with DDP.

Evaluation is sharded by batch of sample indices: the one-process evaluation's batches (graphs
``[b * B, (b + 1) * B)`` for sample ``s``) are numbered in order, and rank ``r`` generates the batches
``k`` with ``k % world_size == r``. Every sample has its own generator (:mod:`benchmark.seeding`) and every
batch is the one a single process would draw, so the images, hence the metrics, are identical for any
number of processes. Rank 0 gathers the images, scores them and is the only rank that writes checkpoints,
results and the leaderboard.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from benchmark.seeding import derive_seed

T = TypeVar("T")
TIMEOUT_ENV = "SG2I_DIST_TIMEOUT_S"  # collective timeout; rank 0 scores while the others wait (default 2 h)


def launched() -> bool:
    """True when started by torchrun (or srun/submitit with the torch variables) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str = "auto") -> bool:
    """Join the process group described by the environment; returns True if this call created it."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    want_cuda = device != "cpu" and not device.startswith("cpu") and torch.cuda.is_available()
    backend = "nccl" if want_cuda else "gloo"
    if want_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 7200)))
    dist.init_process_group(backend, timeout=timeout)
    return True


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[None]:
    """Initialise the process group from the environment for the block (no-op for one process)."""
    created = init_from_env(device)
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def local_device(dev: torch.device) -> torch.device:
    """``cuda`` without an index means this process's GPU (``LOCAL_RANK``) under torchrun."""
    if dev.type == "cuda" and dev.index is None and active():
        return torch.device("cuda", local_rank())
    return dev


def barrier() -> None:
    if active():
        dist.barrier()


def rank_seed(seed: int) -> int:
    """Seed of this rank's training RNG stream: the run seed on rank 0, a derived one on the others."""
    return seed if rank() == 0 else derive_seed(seed, "rank", rank())


def shard(n: int) -> list[int]:
    """The items ``k`` of ``range(n)`` this rank handles: ``k % world_size == rank``."""
    return list(range(rank(), n, world_size()))


def batch_slice(batch: Sequence[T]) -> list[T]:
    """This rank's contiguous slice of a global batch (all slices have the same size)."""
    w = world_size()
    if len(batch) % w:
        raise ValueError(
            f"a global batch of {len(batch)} does not split into {w} equal slices; "
            f"set train.batch_size to a multiple of the number of processes ({w})"
        )
    k = len(batch) // w
    return list(batch[rank() * k : (rank() + 1) * k])


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order); None on the other ranks."""
    if not active():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: Any) -> list[Any]:
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_losses(losses: dict[str, float]) -> dict[str, float]:
    """Average the logged losses over ranks (so every rank sees the same values and stops at the same step)."""
    if not active():
        return losses
    per_rank = all_gather(losses)
    keys = list(dict.fromkeys(k for d in per_rank for k in d))
    return {k: sum(float(d[k]) for d in per_rank if k in d) / sum(k in d for d in per_rank) for k in keys}


def _collective_device(module: nn.Module) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _broadcast(tensors: list[torch.Tensor], device: torch.device) -> None:
    for t in tensors:
        if t.device == device:
            dist.broadcast(t.data, src=0)
        else:
            tmp = t.detach().to(device)
            dist.broadcast(tmp, src=0)
            with torch.no_grad():
                t.copy_(tmp)


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (DDP does this when it wraps a module)."""
    if active():
        dev = _collective_device(module)
        with torch.no_grad():
            _broadcast([*module.parameters(), *module.buffers()], dev)


def sync_buffers(module: nn.Module) -> None:
    """Make buffers rank-identical after a step: BatchNorm running statistics are averaged over the ranks,
    every other buffer is rank 0's (DDP's ``broadcast_buffers``).

    Averaging ``running_mean`` gives the one-process value exactly for equal slices,
    ``(1 - m) mu + m mean_r(mean_r) = (1 - m) mu + m mean(global batch)``; ``running_var`` becomes the mean
    of the per-slice variances, which leaves out the between-slice variance (SyncBatchNorm would include it,
    but it has no CPU implementation). Training-mode outputs still use per-slice statistics, as with DDP.
    """
    if not active():
        return
    dev = _collective_device(module)
    averaged: set[int] = set()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                for t in (m.running_mean, m.running_var):
                    if t is None:
                        continue
                    buf = t.detach().to(dev)
                    dist.all_reduce(buf)
                    t.copy_(buf.div_(world_size()))
                    averaged.add(id(t))
        _broadcast([b for b in module.buffers() if id(b) not in averaged], dev)


class GradientAverager:
    """Average the gradients of ``module``'s trainable parameters over the ranks after every backward pass.

    For each backward pass: the parameters whose gradient any rank accumulated are found with one all-reduce
    of a 0/1 vector; their ``.grad`` (zeros where a rank has none) is then summed in one flat buffer per
    dtype and divided by the world size. Gradients are rank-identical before each pass (they are averaged
    after every pass and zeroed identically), so averaging the whole ``.grad`` averages this pass's part.
    """

    def __init__(self, module: nn.Module) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self._touched: set[int] = set()
        self._queued = False
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]
        self.passes = 0

    def _on_grad(self, p: torch.Tensor) -> None:
        self._touched.add(self._index[id(p)])
        if not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._sync)

    def _sync(self) -> None:
        self._queued = False
        touched, self._touched = self._touched, set()
        self.passes += 1
        if not self.params:
            return
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        flags = torch.zeros(len(self.params), device=dev)
        if touched:
            flags[sorted(touched)] = 1.0
        dist.all_reduce(flags)
        chosen = [self.params[i] for i in flags.nonzero().flatten().tolist()]
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for p in chosen:
            groups.setdefault((p.dtype, p.device), []).append(p)
        w = world_size()
        for ps in groups.values():
            grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps]
            flat = torch.cat(grads)
            moved = flat.to(dev) if flat.device != dev else flat
            dist.all_reduce(moved)
            moved.div_(w)
            flat = moved.to(flat.device) if moved is not flat else flat
            offset = 0
            for p in ps:
                g = flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
                if p.grad is None:
                    p.grad = torch.empty_like(p).copy_(g)
                else:
                    p.grad.copy_(g)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
