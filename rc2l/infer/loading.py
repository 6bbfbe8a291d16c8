"""Where a model comes from: rc2l weights, an exported ONNX file, a model folder, a run folder
or ``hf://owner/name``; what it needs besides pixels travels with it (InferInfo).

Everything inference needs besides the network (class count, architecture, class names,
palette, training crop and resize) is in the weights file's metadata, the ONNX model's
metadata_props or a model folder's config.json, so the path alone is enough; a training
config passed as ``config`` overrides classes, palette, window and resize with its dataset's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rc2l.config import Config, ConfigError, ModelConfig, UnsafeConfigError, load_config, short
from rc2l.data.formats import voc_palette
from rc2l.errors import CheckpointError, DataError, RC2LError
from rc2l.infer.quantize import check_int8

if TYPE_CHECKING:  # torch is imported by the functions that need it
    import torch
    from torch import Tensor

log = logging.getLogger("rc2l.predict")

ONNX_FORMAT = "rc2l-onnx-v1"
HF_PREFIX = "hf://"
MAX_FOLDER_JSON_BYTES = 1 << 20
MAX_SIDE = 1 << 16


@dataclass
class InferInfo:
    """What inference needs to know besides the network."""

    num_classes: int
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    window: tuple[int, int] | None = None  # sliding-window size (training crop), None = whole image
    resize: tuple[int, int] | None = None  # images are resized to this before the model (data.resize)
    model_cfg: dict = field(default_factory=dict)
    source: str = ""


@dataclass
class Source:
    """A resolved model path: ``kind`` 'torch' or 'onnx', the file to load, and the folder's
    config.json / config.yaml when it came from a model or run folder."""

    kind: str
    file: Path
    folder_json: Path | None = None
    sibling_yaml: Path | None = None


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC bit-interleaved colours, for classes without a palette entry."""
    return voc_palette(max(n, 1))[:n]


# ----------------------------------------------------------------------------- resolving paths


def hf_snapshot(uri: str, local_files_only: bool = False, cache_dir: str | Path | None = None) -> Path:
    """``hf://owner/name[@revision]`` → the local snapshot folder (downloaded or from the cache)."""
    repo, _, revision = uri[len(HF_PREFIX) :].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise RC2LError(f"{uri}: expected hf://owner/name[@revision]")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise RC2LError(f"{uri}: hf:// paths need huggingface_hub (pip install huggingface_hub)") from None
    try:
        path = snapshot_download(
            repo, revision=revision or None, cache_dir=cache_dir, local_files_only=local_files_only, library_name="rc2l"
        )
    except Exception as e:  # huggingface_hub raises many types: offline, not found, gated, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise RC2LError(
            f"{uri}: cannot get the model from the Hugging Face Hub ({type(e).__name__}: {first})"
        ) from None
    return Path(path)


def resolve_source(path: str | Path, local_files_only: bool = False, cache_dir: str | Path | None = None) -> Source:
    """A weights file, an .onnx file, a model folder (model.safetensors + config.json), a run
    folder (best.safetensors, else last.safetensors) or hf://owner/name → Source."""
    text = str(path)
    p = hf_snapshot(text, local_files_only, cache_dir) if text.startswith(HF_PREFIX) else Path(path).expanduser()
    if p.is_dir():
        if (p / "model.safetensors").is_file():
            cj = p / "config.json"
            return Source("torch", p / "model.safetensors", cj if cj.is_file() else None, p / "config.yaml")
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return Source("torch", p / name, None, p / "config.yaml")
        if (p / "model.onnx").is_file():
            return Source("onnx", p / "model.onnx")
        raise CheckpointError(f"{text}: no model.safetensors, best.safetensors or last.safetensors in this folder")
    if p.suffix.lower() == ".onnx":
        return Source("onnx", p)
    return Source("torch", p, None, p.parent / "config.yaml")


def read_folder_json(path: Path) -> dict:
    """A model folder's config.json → dict; a bad file is one error naming it."""
    from rc2l.engine.model_dir import MODEL_DIR_FORMAT

    try:
        if path.stat().st_size > MAX_FOLDER_JSON_BYTES:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes is too big (at most {MAX_FOLDER_JSON_BYTES})")
        data = json.loads(path.read_text())
    except RecursionError:
        raise CheckpointError(f"{path}: not a readable JSON file (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({str(e)[:200]})") from None
    if not isinstance(data, dict) or data.get("format") != MODEL_DIR_FORMAT:
        raise CheckpointError(f'{path}: not an rc2l model folder config (no "format": "{MODEL_DIR_FORMAT}")')
    return data


def folder_meta(path: Path) -> dict[str, str]:
    """config.json → metadata strings in the weights-metadata format (they override the file's)."""
    data = read_folder_json(path)
    meta = {}
    for key in ("class_names", "palette", "crop_size", "resize", "model"):
        if key in data:
            meta[key] = json.dumps(data[key])
    checked_meta(meta, str(path))
    return meta


def check_folder_classes(path: Path, num_classes: int, weights: Path) -> None:
    """A model folder's config.json must name the weights' class count (and as many class names)."""
    data = read_folder_json(path)
    named = data.get("num_classes", num_classes)
    names = data.get("class_names") or []
    if named != num_classes or (names and len(names) != num_classes):
        what = f"{short(named)} classes" if named != num_classes else f"{len(names)} class names"
        raise CheckpointError(f"{path}: names {what} but {weights} holds weights for {num_classes}: refused")


# ----------------------------------------------------------------------------- metadata → InferInfo


def _json_meta(meta: dict, key: str, where: str):
    if key not in meta or meta[key] in ("", None):
        return None
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{where}: metadata key '{key}' is not valid JSON: {short(meta[key])}") from None


def _is_num(x, lo: float, hi: float, whole: bool = True) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or (whole and x != int(x)):
        return False
    return lo <= x <= hi


def checked_meta(meta: dict, where: str) -> dict:
    """Parse and check the inference metadata (class names, palette, crop, resize) for types
    and ranges → {key: value or None}; a bad entry is one error naming ``where`` and the key."""
    out = {k: _json_meta(meta, k, where) for k in ("class_names", "palette", "crop_size", "resize")}
    names, palette = out["class_names"], out["palette"]
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{where}: metadata key 'class_names' must be a list of strings, got {short(names)}")
    rgb = lambda p: isinstance(p, (list, tuple)) and len(p) == 3 and all(_is_num(c, 0, 255) for c in p)  # noqa: E731
    if palette is not None and not (isinstance(palette, list) and all(map(rgb, palette))):
        raise CheckpointError(
            f"{where}: metadata key 'palette' must be a list of [r, g, b] (whole numbers 0..255), got {short(palette)}"
        )
    for key in ("crop_size", "resize"):
        v = out[key]
        if v and not (isinstance(v, list) and len(v) == 2 and all(_is_num(x, 1, MAX_SIDE) for x in v)):
            raise CheckpointError(
                f"{where}: metadata key '{key}' must be [height, width] (whole numbers 1..{MAX_SIDE}), got {short(v)}"
            )
    return out


def _pair(v) -> tuple[int, int] | None:
    if not v:
        return None
    if len(v) != 2:
        raise ConfigError(f"expected [height, width], got {v!r}")
    return int(v[0]), int(v[1])


def classes_from_config(cfg: Config) -> tuple[list[str], list[tuple[int, int, int]]]:
    """The config dataset's class names and palette; a built-in dataset whose files are not
    on this machine still has them (only the user's 'folder' dataset needs its classes.txt)."""
    from rc2l.data.build import dataset_info
    from rc2l.data.datasets import READERS

    try:
        info = dataset_info(cfg)
        return list(info.class_names), [tuple(p) for p in info.palette]
    except DataError:
        reader = READERS.get(cfg.data.name)
        if reader is None or not reader.class_names:
            raise
        return list(reader.class_names), [tuple(p) for p in reader.palette]


def _sibling_window(sibling: Path | None) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(crop, resize) from a run folder's config.yaml, for weights older than those metadata keys."""
    if sibling is None or not sibling.is_file():
        return None, None
    try:
        sib = load_config(sibling)
        return _pair(sib.data.crop_size), _pair(sib.data.resize)
    except UnsafeConfigError:  # too costly to read: refused, never quietly skipped
        raise
    except ConfigError as e:
        log.warning("ignoring %s (%s)", sibling, e)
        return None, None


def resolve_info(
    meta: dict, num_classes: int, where: str, config: str | Path | None, sibling_config: Path | None = None
) -> tuple[InferInfo, Config | None]:
    """Combine weights/ONNX metadata with an optional config (which wins) into InferInfo.

    ``sibling_config`` (the run folder's config.yaml) fills the window/resize only when the
    metadata lacks them (weights written before those keys existed)."""
    cfg = load_config(config) if config else None
    checked = checked_meta(meta, where)
    names, palette = checked["class_names"], checked["palette"]
    window, resize = _pair(checked["crop_size"]), _pair(checked["resize"])
    if cfg is None and window is None:
        window, resize = _sibling_window(sibling_config)
    if cfg is not None:
        names, palette = classes_from_config(cfg)
        if len(names) != num_classes:
            raise ConfigError(
                f"{config}: dataset '{cfg.data.name}' has {len(names)} classes but {where} predicts {num_classes}"
            )
        window, resize = _pair(cfg.data.crop_size), _pair(cfg.data.resize)
    if not names or len(names) != num_classes:
        names = [f"class_{i}" for i in range(num_classes)]
    palette = [tuple(int(c) for c in p) for p in (palette or [])]
    if len(palette) < num_classes:
        palette = palette + default_palette(num_classes)[len(palette) :]
    model_cfg = _json_meta(meta, "model", where) or {}
    return InferInfo(num_classes, names, palette[:num_classes], window, resize, model_cfg, where), cfg


def model_config(model_dict: dict | None, cfg: Config | None, where: str) -> ModelConfig:
    """The architecture from the weights' metadata (else the config); backbone weights are not
    loaded (the file holds them)."""
    if model_dict:
        if not isinstance(model_dict, dict):
            raise CheckpointError(f"{where}: the model metadata is not a mapping")
        try:  # through the public override path, so unknown keys and bad types are refused
            mc = load_config(None, [f"model.{k}={json.dumps(v)}" for k, v in model_dict.items()]).model
        except ConfigError as e:
            raise CheckpointError(f"{where} (model metadata): {str(e).removeprefix('override: ')}") from None
    elif cfg is not None:
        mc = cfg.model
    else:
        raise CheckpointError(f"{where}: no model architecture in the metadata; pass --config with the training config")
    mc.pretrained = "none"
    return mc


# ----------------------------------------------------------------------------- loaders


def load_torch_model(
    weights: str | Path,
    config: str | Path | None = None,
    device: str | torch.device = "cpu",
    source: Source | None = None,
):
    """→ (Segmenter in eval mode on ``device``, InferInfo, Config or None). ``weights`` may be
    a .safetensors file, a model folder or a run folder."""
    import torch

    from rc2l.engine.checkpoint import check_shapes, header_shapes, load_weights, model_config_from_weights, read_meta
    from rc2l.models.segmenter import build_model

    src = source or resolve_source(weights)
    if src.kind != "torch":
        raise ConfigError(f"{src.file} is an ONNX model: use --backend onnx")
    num_classes, model_dict = model_config_from_weights(src.file)
    meta = read_meta(src.file)
    if src.folder_json is not None:
        check_folder_classes(src.folder_json, num_classes, src.file)
        meta = {**meta, **folder_meta(src.folder_json)}
        model_dict = _json_meta(meta, "model", str(src.folder_json)) or model_dict
    info, cfg = resolve_info(meta, num_classes, str(src.file), config, src.sibling_yaml)
    mc = model_config(model_dict, cfg, str(src.file))
    with torch.device("meta"):  # shapes only: the file is checked before memory is spent on a model
        check_shapes(header_shapes(src.file), build_model(num_classes, mc), src.file, meta)
    model = build_model(num_classes, mc)
    load_weights(model, src.file)
    return model.to(device).eval(), info, cfg


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RC2LError("--device cuda: no CUDA device is available")
    return torch.device(name)


def torch_score_fn(model: torch.nn.Module, device: torch.device) -> Callable[[Tensor], Tensor]:
    """images (B,3,h,w) float [0,1] → S upsampled (B,K,h,w) float32 on ``device``."""
    import torch

    @torch.no_grad()
    def fn(x: Tensor) -> Tensor:
        return model.semantic_scores(x.to(device)).float()

    return fn


def onnx_session(path: str | Path, device: torch.device):
    """ONNX Runtime session: CUDA provider when asked for and available, else CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RC2LError("--backend onnx needs onnxruntime (pip install 'rc2l[export]')") from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as e:  # ort raises its own exception types for unreadable/invalid models
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot load ONNX model ({first[:300]})") from None


def load_onnx(path: str | Path, config: str | Path | None, device: torch.device):
    """→ (score_fn, InferInfo) for a model written by ``rc2l export`` (a file or a folder
    holding model.onnx)."""
    import torch

    src = resolve_source(path)
    path = src.file
    if not path.is_file():
        raise CheckpointError(f"ONNX model not found: {path}")
    sess = onnx_session(path, device)
    meta = dict(sess.get_modelmeta().custom_metadata_map or {})
    if meta.get("format") != ONNX_FORMAT:
        raise CheckpointError(f"{path}: not written by rc2l export (no '{ONNX_FORMAT}' metadata)")
    from rc2l.engine.checkpoint import meta_num_classes

    info, _ = resolve_info(meta, meta_num_classes(meta, path), str(path), config)
    check_int8(sess, meta, str(path))  # an int8 file proves itself on this CPU before it predicts
    name = sess.get_inputs()[0].name

    def fn(x: Tensor) -> Tensor:
        out = sess.run(None, {name: x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    return fn, info
