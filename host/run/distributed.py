"""Running under ``torchrun``: the process group, one writer, and DDP for :func:`.train.train`.

``torchrun --nproc-per-node N -m entropi.host.cli run CONFIG`` starts N copies of ``entropi
run``; each reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address from the
environment (:func:`init`). ``entropi study`` runs the same way (:mod:`.study`: the ladders built
in DDP, each pair's rungs scored split over the processes). Without those variables (a plain
``entropi run``, or ``torchrun`` with one process) the world size is 1, no process group is made
and every helper below is the identity, so a single process runs exactly as before.

Who does what (rank 0 is "main"):

- **Decisions and artifacts on rank 0.** Which rungs exist, the masks of a rung (global magnitude
  pruning, REFERENCE eq. 7), the source accuracy and every file come from rank 0;
  :func:`from_main` runs a function there and broadcasts its result (or its error) to the
  others, so every rank takes the same branch and a failure on rank 0 fails every rank with rank
  0's message. Other ranks get a :class:`FollowerRunDir` that refuses writes.
- **Training in DDP** (:func:`ddp`, torch ``DistributedDataParallel``). Every rank draws the same
  seeded global batch ``B`` (one permutation and augmentation per epoch, as one process does) and
  takes the contiguous slice ``[floor(r B / W), floor((r + 1) B / W))`` of its images
  (:func:`shard`; of every augmented view when a batch holds several): the slices are disjoint
  and cover the batch, so each epoch is covered once. A slice of ``b_r``
  samples scales its mean loss by ``W b_r / B``; DDP averages gradients over the ``W`` ranks,
  so the update is the gradient of the global batch's mean loss,
  ``(1/W) sum_r (W b_r / B) (1/b_r) sum_{i in r} g_i = (1/B) sum_i g_i``, with the configured
  learning rate. After training, rank 0's batch-norm buffers are broadcast (:func:`sync_buffers`)
  so every rank holds identical weights; :func:`check_identical` verifies it by sha256.
- **Scoring in parallel.** :func:`scatter_from_main` hands each rank one rung and
  :func:`gather_to_main` brings the scores back to rank 0, which writes them.

What a 2-process run cannot reproduce bit for bit from a 1-process run with the same global batch:
(1) batch-norm statistics in training mode are those of each rank's slice, not of the global
batch, unless ``[pretrain] sync_bn = true`` (torch's SyncBatchNorm, CUDA only); the running
statistics kept are rank 0's; (2) the gradient is a sum in another order (per-rank sums, then an
all-reduce), so floats round differently (about 1 ulp per step, which training then amplifies).
Scoring is exact: each rung is scored by one rank exactly as one process scores it.

A failing rank fails the job: an error inside :func:`from_main` / :func:`gather_to_main` reaches
every rank, a rank that dies is seen by ``torchrun`` (which stops the others and, with
``--max-restarts K``, restarts all of them: the run then resumes from its last finished rung), and
every collective times out after ``ENTROPI_DIST_TIMEOUT`` seconds (default 1800) instead of
waiting for ever. Backend: ``gloo`` on CPU-only machines, ``cpu:gloo,cuda:nccl`` where CUDA is
present (tensors on the GPU go through NCCL, Python objects through gloo).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from entropi.common.errors import EntropiError, one_line

from .config import ConfigError
from .rundir import RunDir

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedError",
    "FollowerRunDir",
    "RankFailedError",
    "check_identical",
    "ddp",
    "from_main",
    "gather_to_main",
    "init",
    "is_main",
    "launched_world_size",
    "local_device",
    "lost_peer",
    "main_first",
    "mean",
    "rank",
    "restart_count",
    "scatter_from_main",
    "shard",
    "shutdown",
    "state_digest",
    "sync_buffers",
    "world_size",
]

DEFAULT_TIMEOUT_S = 1800
"""Seconds a collective (a barrier, a broadcast, a gradient all-reduce) may wait for the other
ranks before it fails; ``ENTROPI_DIST_TIMEOUT`` overrides it."""


class DistributedError(EntropiError, RuntimeError):
    """A distributed run cannot go on: bad launch settings, or ranks that disagree."""


class RankFailedError(DistributedError):
    """Another rank of the job failed; the message is that rank's error."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name} must be an integer, got {value!r}") from None


def launched_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` set it (1 when not launched by it)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def restart_count() -> int:
    """How many times ``torchrun`` restarted this job's workers (``TORCHELASTIC_RESTART_COUNT``)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs and writes."""
    return rank() == 0


def init() -> int:
    """Join the ``torchrun`` job this process belongs to (idempotent); returns the world size.

    With ``WORLD_SIZE`` unset or 1 nothing happens. Otherwise the default process group is made
    from what torchrun puts in the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``; the store of :func:`_store`), the CUDA device is set to ``LOCAL_RANK``
    where CUDA is present, and progress bars are silenced on every rank but 0.
    """
    world = launched_world_size()
    if world == 1 or dist.is_initialized():
        return world_size()
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; run one process")
    timeout = _env_int("ENTROPI_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)
    if timeout < 1:
        raise DistributedError(f"ENTROPI_DIST_TIMEOUT must be >= 1 second, got {timeout}")
    rank_env = _env_int("RANK", 0)
    if torch.cuda.is_available():
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0) % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    wait = timedelta(seconds=timeout)
    dist.init_process_group(
        backend, store=_store(world, wait), rank=rank_env, world_size=world, timeout=wait
    )
    if dist.get_rank() != 0:
        os.environ["ENTROPI_QUIET"] = "1"  # one set of progress bars: rank 0's
    return dist.get_world_size()


def _store(world: int, timeout: timedelta) -> dist.Store:
    """The rendezvous key-value store at ``MASTER_ADDR:MASTER_PORT`` (torchrun's agent hosts it,
    else rank 0), its keys prefixed by the restart count: after ``torchrun --max-restarts``
    restarts the workers, the store can still hold the dead workers' gloo addresses, which
    the new ones would otherwise try to connect to (pytorch/pytorch#167288)."""
    try:
        addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        raise DistributedError(
            "WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are unset or bad: start the processes "
            "with torchrun (or `entropi run --nproc N`)"
        ) from None
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        addr, port, world, is_master=not agent and _env_int("RANK", 0) == 0, timeout=timeout
    )
    return dist.PrefixStore(f"entropi/attempt_{restart_count()}", store)


def shutdown() -> None:
    """Leave the process group (nothing when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """``device`` for this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` under ``torchrun``."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def lost_peer(error: BaseException) -> bool:
    """``error`` is a collective's failure because another process of the job went away (gloo
    and NCCL raise a plain RuntimeError for it)."""
    text = str(error)
    return world_size() > 1 and any(
        k in text for k in ("Connection reset by peer", "Connection closed by peer", "gloo", "NCCL")
    )


# --- collectives that carry errors -----------------------------------------------------------
def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {one_line(e)}"


def _broadcast(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main(fn: Callable[[], Any], *, share: bool = True) -> Any:
    """``fn()`` run on rank 0 only; every rank returns its result (``share=False``: the others
    get None and only learn that it succeeded). If ``fn`` raises on rank 0, rank 0 re-raises and
    every other rank raises :class:`RankFailedError` with its message."""
    if world_size() == 1:
        return fn()
    if is_main():
        try:
            value = fn()
        except BaseException as e:
            _broadcast(("error", _describe(e)))
            raise
        _broadcast(("ok", value if share else None))
        return value
    status, value = _broadcast(None)
    if status == "error":
        raise RankFailedError(f"rank 0 failed: {value}")
    return value


def main_first(fn: Callable[[], Any]) -> Any:
    """``fn()`` on every rank, rank 0 first (it fills the dataset cache, the others read it). An
    error on any rank raises on every rank (the failing rank its own error)."""
    if world_size() == 1:
        return fn()
    value = [from_main(fn, share=False)]  # rank 0's (its error fails every rank)

    def others() -> None:
        if not is_main():
            value[0] = fn()

    gather_to_main(others)  # an error on another rank fails every rank
    return value[0]


def _all_ok(error: BaseException | None) -> None:
    """Exchange every rank's error (or None); raise on every rank if one failed."""
    messages: list[Any] = [None] * world_size()
    dist.all_gather_object(messages, None if error is None else _describe(error))
    if error is not None:
        raise error
    for r, m in enumerate(messages):
        if m is not None:
            raise RankFailedError(f"rank {r} failed: {m}")


def gather_to_main(fn: Callable[[], Any]) -> list[Any] | None:
    """``fn()`` on every rank; rank 0 gets the list of results by rank, the others None. An error
    on any rank raises on every rank (the failing rank its own error)."""
    if world_size() == 1:
        return [fn()]
    value, error = None, None
    try:
        value = fn()
    except Exception as e:
        error = e
    _all_ok(error)
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(value, out, dst=0)
    return out


def scatter_from_main(fn: Callable[[], list[Any]]) -> Any:
    """Rank 0 computes ``fn()``, one item per rank; rank ``r`` returns item ``r``."""
    if world_size() == 1:
        return fn()[0]
    items = from_main(lambda: list(fn()), share=False)
    if is_main() and len(items) != world_size():
        raise DistributedError(f"scatter needs {world_size()} items, got {len(items)}")
    box: list[Any] = [None]
    dist.scatter_object_list(box, items if is_main() else None, src=0)
    return box[0]


def mean(value: torch.Tensor) -> float:
    """The mean over ranks of a scalar tensor (its value on one process)."""
    if world_size() == 1:
        return float(value)
    t = value.detach().float().reshape(1).clone()
    dist.all_reduce(t)
    return float(t) / world_size()


# --- identical state on every rank -----------------------------------------------------------
def state_digest(*states: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor of ``states`` (in order)."""
    h = hashlib.sha256()
    for state in states:
        for name in sorted(state):
            t = state[name].detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_identical(what: str, *states: Mapping[str, torch.Tensor]) -> str | None:
    """Check that every rank holds exactly the same tensors ``states`` (:class:`DistributedError`
    naming the ranks that differ from rank 0 otherwise); their digest (None on one process)."""
    if world_size() == 1:
        return None
    digest = state_digest(*states)
    digests: list[Any] = [None] * world_size()
    dist.all_gather_object(digests, digest)
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise DistributedError(
            f"{what}: ranks {differ} hold other tensors than rank 0 (sha256 {digests}); the "
            "ranks' training diverged (a bug: please report it)"
        )
    return digest


@torch.no_grad()
def sync_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank."""
    if world_size() == 1:
        return
    for b in module.buffers():
        if b.dtype == torch.bool:
            t = b.to(torch.uint8)
            dist.broadcast(t, src=0)
            b.copy_(t.bool())
        else:
            dist.broadcast(b, src=0)


# --- DDP training ----------------------------------------------------------------------------
def shard(
    xb: torch.Tensor, yb: torch.Tensor, *, views: int = 1
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This rank's slice of a global batch and the factor ``W b_r / B`` its mean loss is scaled
    by (the batch itself and 1.0 on one process).

    The batch holds ``views`` augmentations of ``B`` images, view-major (rows ``v B .. v B + B -
    1`` are view ``v``, as :func:`~entropi.host.data.iterate_batches` yields them); rank ``r``
    takes images ``[floor(r B / W), floor((r + 1) B / W))`` of every view, so its slice is
    view-major too and the ranks' slices are disjoint and cover the batch.
    """
    world, r = world_size(), rank()
    if world == 1:
        return xb, yb, 1.0
    n = len(yb) // views
    if n < world:
        raise ConfigError(
            f"a batch of {n} images cannot be split over {world} processes (each needs one); "
            f"raise pretrain.batch_size to at least {world} or use fewer processes"
        )
    start, stop = r * n // world, (r + 1) * n // world
    if views == 1:
        return xb[start:stop], yb[start:stop], world * (stop - start) / n
    rows = torch.cat([torch.arange(v * n + start, v * n + stop) for v in range(views)])
    rows = rows.to(yb.device)
    return xb[rows], yb[rows], world * (stop - start) / n


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _swap_batchnorm(module: nn.Module, make: Callable[[nn.Module], nn.Module]) -> None:
    """Replace every child for which ``make`` returns a new module (recursively, in place)."""
    for name, child in list(module.named_children()):
        new = make(child)
        if new is not child:
            module.add_module(name, new)
        else:
            _swap_batchnorm(child, make)


def _share_state(src: nn.Module, dst: nn.Module) -> nn.Module:
    """``dst`` with ``src``'s parameters and buffers (the same tensors, not copies)."""
    if src.affine:
        dst.weight, dst.bias = src.weight, src.bias
    if src.track_running_stats:
        dst.running_mean, dst.running_var = src.running_mean, src.running_var
        dst.num_batches_tracked = src.num_batches_tracked
    dst.train(src.training)
    return dst


def _to_sync(module: nn.Module, kinds: dict[int, type]) -> nn.Module:
    if not isinstance(module, _BN_TYPES) or isinstance(module, nn.SyncBatchNorm):
        return module
    sync = nn.SyncBatchNorm(
        module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
    ).to(next(iter(module.buffers()), torch.empty(0)).device)
    kinds[id(sync)] = type(module)
    return _share_state(module, sync)


def _from_sync(module: nn.Module, kinds: dict[int, type]) -> nn.Module:
    if not isinstance(module, nn.SyncBatchNorm) or id(module) not in kinds:
        return module
    bn = kinds[id(module)](
        module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
    ).to(next(iter(module.buffers()), torch.empty(0)).device)
    return _share_state(module, bn)


@contextmanager
def ddp(module: nn.Module, *, device: torch.device, sync_bn: bool = False) -> Iterator[nn.Module]:
    """``module`` wrapped in ``DistributedDataParallel`` for the duration of the block (the
    module itself on one process). DDP starts every rank from rank 0's parameters and buffers;
    on leaving the block normally rank 0's buffers are broadcast (:func:`sync_buffers`), so the
    ranks end identical. ``sync_bn``: batch norms become ``SyncBatchNorm`` inside the block
    (statistics of the global batch; CUDA only) and batch norms again after it."""
    if world_size() == 1:
        yield module
        return
    kinds: dict[int, type] = {}
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError(
                "pretrain.sync_bn = true needs CUDA (torch's SyncBatchNorm runs on GPUs only); "
                "set it to false on CPU: each process then normalizes by its own slice's "
                "statistics"
            )
        _swap_batchnorm(module, lambda m: _to_sync(m, kinds))
    try:
        net = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
        yield net
        sync_buffers(module)
    finally:
        if kinds:
            _swap_batchnorm(module, lambda m: _from_sync(m, kinds))


class FollowerRunDir(RunDir):
    """The run folder as a rank other than 0 sees it: the same paths; :meth:`log` and
    :meth:`add_time` do nothing (rank 0 logs and times), every write is refused (a bug)."""

    def log(self, message: str) -> None:
        pass

    def add_time(self, stage: str, seconds: float) -> None:
        pass

    def _refuse(self, path) -> None:
        raise DistributedError(f"rank {rank()} tried to write {path}; only rank 0 writes (a bug)")

    def write_json(self, path, obj):
        self._refuse(path)

    def write_text(self, path, text):
        self._refuse(path)

    def write_array(self, path, array):
        self._refuse(path)
