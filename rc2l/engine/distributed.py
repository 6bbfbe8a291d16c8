"""torchrun integration: env-var init (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT),
NCCL on GPU and gloo on CPU; a single process never creates a process group.

``RC2L_DIST_TIMEOUT`` (seconds, default 600) bounds how long a collective waits for a rank
that died or hangs before the survivors fail with an error instead of waiting forever."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from rc2l.errors import RC2LError


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def dist_timeout(default: int = 600) -> int:
    """Process-group timeout in seconds from ``RC2L_DIST_TIMEOUT`` (checked: a positive integer)."""
    raw = os.environ.get("RC2L_DIST_TIMEOUT", "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise RC2LError(f"environment variable RC2L_DIST_TIMEOUT={raw!r} must be a positive number of seconds")
    return int(raw)


def check_device(device: str) -> str:
    """``train.device`` → 'cuda' or 'cpu', refusing cuda where there is none (before anything is written)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise RC2LError(
            f"train.device=cuda but {why} (torch {torch.__version__}); use train.device=cpu or train.device=auto"
        )
    return device


def init_distributed(device: str, timeout_s: int | None = None) -> torch.device:
    """Join the process group when launched by torchrun; returns this process's device."""
    device = check_device(device)
    if env_world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout_s = timeout_s or dist_timeout()
        try:
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:  # rendezvous timed out, bad address, port in use, ...
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
            raise RC2LError(
                f"rank {os.environ.get('RANK', '?')} of {env_world_size()} could not join the {backend} process group "
                f"at {where} within {timeout_s} s (RC2L_DIST_TIMEOUT): {first}"
            ) from None
    if device == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes in place (no-op in a single process); returns ``t``."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...]; [obj] in a single process."""
    if not is_dist():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats (same keys on every rank) over ranks; unchanged in one process."""
    if not is_dist():
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: v / world_size() for k, v in zip(keys, t.tolist())}


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank: each rank's last
    forward updated its own copy, and evaluation must use one model everywhere."""
    if is_dist():
        for b in module.buffers():
            dist.broadcast(b, 0)


_COMM_HINTS = (
    "gloo",
    "nccl",
    "connection reset",
    "connection closed",
    "timed out",
    "timeout",
    "socket",
    "broken pipe",
    "communicator",
)


def is_comm_error(e: BaseException) -> bool:
    """True for the errors a collective raises when a peer died or hangs (gloo raises plain
    RuntimeErrors, NCCL DistBackendError)."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(h in text for h in _COMM_HINTS)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
