"""Atomic checkpoints: model weights as safetensors (with architecture metadata, so a
wrong file is refused with the reason) and training state via torch.save, read back with
``weights_only=True``."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from rc2l.config import short
from rc2l.errors import CheckpointError

FORMAT = "rc2l-weights-v1"
MAX_HEADER_BYTES = 16 << 20  # tensor table + metadata; a ResNet-101 model's is ~100 KB
MAX_CLASSES = 1 << 16


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete temp files of ``path`` left by a writer that was killed (SIGKILL, power loss) in
    the middle of :func:`atomic_write`; temp names carry the writer's pid, a live writer's are kept."""
    path = Path(path)
    removed = []
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = p.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (other threads create files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Write via a temp file in the same folder, fsync it, then rename over ``path``:
    a crash at any point leaves the previous file intact (and an exception leaves no temp file;
    one left by a killed process is removed by the next write)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:  # read-only folder, name too long, disk full: name the file meant
        raise OSError(e.errno, f"cannot write here ({e.strerror})", str(path)) from None
    try:
        _write_temp(path, tmp, write)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_temp(path: Path, tmp: str, write: Callable[[str], None]) -> None:
    """``write(tmp)``, permissions and fsync; a failure (disk full: OSError from Python, RuntimeError
    from torch's zip writer) is raised naming ``path``, whose previous version is untouched."""
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror or e}; the previous file is unchanged", str(path)) from None
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{path}: cannot write ({first}); the previous file is unchanged") from None


def model_meta(model: torch.nn.Module, model_cfg: dict | None = None, extra: dict | None = None) -> dict[str, str]:
    meta = {"format": FORMAT, "num_classes": str(getattr(model, "num_classes", ""))}
    if model_cfg is not None:
        meta["model"] = json.dumps(model_cfg, sort_keys=True)
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return meta


def save_weights(model: torch.nn.Module, path: str | Path, meta: dict[str, str]) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def _check_header_size(path: Path) -> None:
    """Refuse a header (tensor table + metadata) bigger than MAX_HEADER_BYTES before parsing it."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(head) == 8 and int.from_bytes(head, "little") > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{path}: not a readable safetensors weights file (a header of {int.from_bytes(head, 'little')} bytes; "
            f"at most {MAX_HEADER_BYTES} are read)"
        )


def read_meta(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    _check_header_size(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors weights file ({e})") from None


def header_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape from the header alone (no tensor is read)."""
    _check_header_size(Path(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors weights file ({e})") from None


def meta_num_classes(meta: dict, where: str | Path) -> int:
    """The metadata's class count: a whole number in [1, MAX_CLASSES], else one error naming the key."""
    raw = meta.get("num_classes")
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 8 and 1 <= int(text) <= MAX_CLASSES):
        raise CheckpointError(
            f"{where}: metadata key 'num_classes' = {short(raw)} must be a whole number in [1, {MAX_CLASSES}]"
        )
    return int(text)


def model_config_from_weights(path: str | Path) -> tuple[int, dict | None]:
    """(num_classes, model config dict) stored in an rc2l weights file, checked for type and range."""
    meta = read_meta(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an rc2l weights file (no '{FORMAT}' metadata)")
    model = None
    if "model" in meta:
        try:
            model = json.loads(meta["model"])
        except (json.JSONDecodeError, RecursionError):
            raise CheckpointError(f"{path}: metadata key 'model' is not valid JSON: {short(meta['model'])}") from None
        if not isinstance(model, dict):
            raise CheckpointError(f"{path}: metadata key 'model' must be a JSON mapping, got {short(model)}")
    return meta_num_classes(meta, path), model


def check_compatible(state: dict[str, torch.Tensor], model: torch.nn.Module, path: str | Path, meta: dict) -> None:
    """Refuse a file of another model, class count or architecture, saying what differs."""
    check_shapes({k: tuple(v.shape) for k, v in state.items()}, model, path, meta)


def check_shapes(shapes: dict[str, tuple], model: torch.nn.Module, path: str | Path, meta: dict) -> None:
    """:func:`check_compatible` on tensor shapes (e.g. from :func:`header_shapes`); ``model`` may
    live on the meta device, so a file is checked before a real model is built."""
    state = {k: torch.Size(v) for k, v in shapes.items()}
    want_k = getattr(model, "num_classes", None)
    if meta.get("num_classes") and want_k is not None and meta_num_classes(meta, path) != want_k:
        raise CheckpointError(f"{path}: weights are for {meta['num_classes']} classes, the model has {want_k}")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        arch = ""
        if "model" in meta:
            m = meta["model"]
            arch = f" (file architecture: {m if len(m) <= 400 else m[:400] + '…'})"
        raise CheckpointError(
            f"{path}: different architecture: {len(missing)} missing and {len(unexpected)} unexpected tensors, "
            f"e.g. {what}{arch}"
        )
    for k, v in own.items():
        if state[k] != v.shape:
            raise CheckpointError(f"{path}: tensor {k!r} has shape {tuple(state[k])}, model expects {tuple(v.shape)}")


def load_weights(model: torch.nn.Module, path: str | Path) -> dict[str, str]:
    """Load an rc2l safetensors file into ``model`` after checking it fits. Returns metadata."""
    meta = read_meta(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({e})") from None
    check_compatible(state, model, path, meta)
    model.load_state_dict(state)
    return meta


def save_state(state: dict[str, Any], path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Training state, read with ``weights_only=True`` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/foreign files
        first = (str(e).strip().splitlines() or [""])[0]
        first = first.split(". ")[0][:200]  # the first sentence: torch appends long advice
        raise CheckpointError(
            f"{path}: cannot load training state ({e.__class__.__name__}: {first}); "
            f"a truncated or foreign file? state.pt is written atomically by rc2l train"
        ) from None
