"""Typed configuration: dataclasses filled from a YAML file and ``key=value`` overrides.

Every key is checked against the dataclasses, so a typo is an error naming the key (and
the file), never a silently ignored option.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MAX_CONFIG_BYTES = 256 << 10  # a config file is a few KB; a bigger one is refused before parsing (~0.3 s)
MAX_YAML_ALIASES = 64  # *alias references in one document
MAX_YAML_NODES = 10_000  # values, also after expanding every alias (a "billion laughs" file has 10⁹); a config has ~200
MAX_LIST_ITEMS = 64  # the longest list a config key holds (e.g. model.aspp_rates)


class YAMLLimitError(yaml.YAMLError):
    """A YAML document that would cost too much to build (aliases, expansion, nesting)."""

    def __init__(self, problem: str, mark=None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded, counted without expanding (a shared
    node counts once per reference); stops past MAX_YAML_NODES; a cycle counts as too many."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        kids = []
        if isinstance(node, yaml.SequenceNode):
            kids = node.value
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        if done:
            sizes[id(node)] = min(MAX_YAML_NODES + 1, 1 + sum(sizes[id(k)] for k in kids))
            continue
        if id(node) in sizes:
            if sizes[id(node)] < 0:  # reached again while its own children are being counted
                raise YAMLLimitError("a YAML alias refers to a node that contains it", node.start_mark)
            continue
        sizes[id(node)] = -1
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes or sizes[id(k)] < 0)
    return sizes[id(root)]


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1_8`` as the integer 18 and ``off``/``on``/``yes``/``no`` as booleans;
    split names like 1_8 and choices like ``train.amp=off`` must stay strings (YAML 1.2 rules:
    only true/false are booleans). Aliases are bounded: a few bytes of ``&a``/``*a`` must not
    expand to gigabytes (the "billion laughs" file)."""

    def compose_node(self, parent, index):
        self._nodes = getattr(self, "_nodes", 0) + 1  # parsing is lazy: stopping here stops reading
        if self._nodes > MAX_YAML_NODES:
            raise YAMLLimitError(f"more than {MAX_YAML_NODES} YAML values", self.peek_event().start_mark)
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise YAMLLimitError(f"more than {MAX_YAML_ALIASES} YAML aliases (*name)", mark)
        return super().compose_node(parent, index)

    def compose_document(self):
        node = super().compose_document()
        if node is not None and _expanded_size(node) > MAX_YAML_NODES:
            raise YAMLLimitError(f"the YAML expands to more than {MAX_YAML_NODES} values", node.start_mark)
        return node


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    k: [(tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$") if tag == _BOOL else rx) for tag, rx in v]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _c in "0123456789":
    _Loader.yaml_implicit_resolvers.setdefault(_c, []).insert(
        0, ("tag:yaml.org,2002:str", re.compile(r"^[0-9]+(_[0-9]+)+$"))
    )


def yaml_load(text: str):
    """Parse config YAML with the bounded loader; YAMLLimitError (a yaml.YAMLError) when it
    would cost too much, including nesting deeper than Python's recursion allows."""
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise YAMLLimitError("the YAML is nested too deeply") from None


class ConfigError(ValueError):
    """A bad config file, key or value; the message names which."""


class UnsafeConfigError(ConfigError):
    """A config file refused for its cost (size, aliases, nesting): never to be skipped with a warning."""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 90
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 12


def short(value: Any, limit: int = 80) -> str:
    """repr of a value, cut to ``limit`` characters (+ '…'): error messages quote values, and a
    value may be megabytes; reprlib bounds the cost of building the repr as well."""
    return clip(_REPR.repr(value), limit)


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters (+ '…')."""
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class ModelConfig:
    arch: str = "maskformer"  # maskformer (mask classification) | deeplabv3plus (per-pixel)
    backbone: str = "resnet18"  # resnet18 | resnet50 | resnet101 | efficientnet_lite0
    pretrained: str = "imagenet"  # imagenet | none | path to a local weights file
    num_queries: int = 100  # N
    hidden_dim: int = 256  # transformer width
    mask_dim: int = 256  # C, channels of F and of the mask embeddings f_i
    dec_layers: int = 6
    nheads: int = 8
    dim_feedforward: int = 1024
    masked_attention: bool = False  # Mask2Former-style masked cross-attention
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    aspp_dim: int = 256  # deeplabv3plus: channels of the ASPP branches and projection
    decoder_dim: int = 256  # deeplabv3plus: channels of the two 3×3 fusion convs
    # deeplabv3plus: ASPP dilation rates at output stride 16, or "auto" (``auto_aspp_rates``: scaled
    # to the training crop's map). DeepLab's and UniMatch's 6/12/18 are sized for ~33×33 maps; a
    # 192×256 crop gives 12×16, where the rate-12/18 taps read only padding and never train
    aspp_rates: list[int] | str = field(default_factory=lambda: [6, 12, 18])


@dataclass
class LossConfig:
    """Supervised set loss and matcher costs (docs/method.md, "Supervised loss")."""

    cls_weight: float = 2.0
    mask_weight: float = 5.0  # BCE or focal
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    mask_loss: str = "bce"  # bce | focal
    num_points: int = 0  # 0 = every pixel; > 0 = Mask2Former uncertainty point sampling
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True
    # labelled loss of a per-pixel model (deeplabv3plus): ce | ohem (``ohem_cross_entropy``, UniMatch's
    # Cityscapes loss). The mask model's labelled loss is the set loss above, which has no per-pixel CE
    pixel_sup: str = "ce"
    ohem_thresh: float = 0.7  # OHEM: pixels whose true-class probability is ≤ this count...
    # ...but at least this fraction of the batch's non-ignored pixels (the hardest). UniMatch's
    # Cityscapes: 200,000 of one GPU's 2×801×801 = 1,283,202 pixels ≈ 0.156
    ohem_min_kept: float = 0.156


@dataclass
class SyntheticConfig:
    num_train: int = 200
    num_val: int = 50
    size: int = 64  # square image side
    seed: int = 0


@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic | camvid | voc | cityscapes | folder
    root: str = ""
    split: str = "full"  # labeled partition under splits_dir (e.g. 1_8), or "full"
    splits_dir: str = ""  # default: splits/<name> in the repository
    train_split: str = "train"  # base train list used when split == "full"
    val_split: str = "val"
    num_classes: int = 0  # 0 = the dataset's own
    resize: list[int] = field(default_factory=list)  # [h, w] applied to every image first
    crop_size: list[int] = field(default_factory=lambda: [64, 64])  # [h, w]
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    batch_size: int = 8  # labeled images per step (per process)
    unlabeled_batch_size: int = 8
    workers: int = 2
    # keep each decoded image and mask in RAM after its first read (per process: every DataLoader
    # worker holds its own copy; ~0.7 MB per 480×360 CamVid frame + mask)
    cache: bool = False
    bad_samples: str = "error"  # error | skip (skip and report bad samples)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class TrainConfig:
    iters: int = 1000
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9, as DeepLab and UniMatch train)
    lr: float = 1e-4
    backbone_lr_mult: float = 0.1
    weight_decay: float = 0.05
    warmup_iters: int = 100
    poly_power: float = 0.9
    clip_grad: float = 1.0  # max grad norm, 0 = off
    accum_steps: int = 1  # gradient accumulation: global batch = batch * accum * world
    # off | bf16 | fp16 | auto (bf16 where the hardware computes it fast: CUDA with bf16, CPUs
    # with AMX; else off). Not the default: bf16 must first match fp32's accuracy on a full run
    # (issue 15), and auto would make one config train differently per machine.
    amp: str = "off"
    channels_last: bool = False  # model weights and input batches in NHWC memory format
    device: str = "auto"  # auto | cpu | cuda
    eval_every: int = 200
    log_every: int = 10
    save_every: int = 200
    deterministic: bool = False
    max_bad_steps: int = 5  # consecutive NaN/Inf losses before stopping
    threads: int = 0  # torch CPU threads, 0 = PyTorch default
    # glibc: keep freed activations mapped instead of page-faulting them in again every step
    # (rc2l/engine/malloc.py); the process keeps its peak memory. Numerics unchanged
    keep_freed_memory: bool = True
    progress: bool = True


@dataclass
class EvalConfig:
    mode: str = "original"  # original | center_crop | sliding_window
    crop_size: list[int] = field(default_factory=list)  # default: data.crop_size
    stride_ratio: float = 2.0 / 3.0
    # native: predictions upsampled to the label files' own size (the field's protocol, e.g.
    # CamVid 360×480 whatever data.resize is); resized: labels resized with the image (data.resize)
    labels: str = "native"
    batch_size: int = 1  # consecutive same-size val images per forward (identical confusion matrix)


@dataclass
class UniMatchConfig:
    """UniMatch (docs/method.md, "Pixel-level counterparts"): weak view → pseudo-label; ``views`` strong views, each with
    its own photometric draw and CutMix box; the feature-perturbation (FP) branch. ``views=1
    fp=false`` is FixMatch with UniMatch's loss."""

    teacher: str = "self"  # self (V1: the student's own weak prediction) | ema (V2: the EMA teacher)
    views: int = 2  # strong views, 1 or 2
    fp: bool = True  # feature perturbation: channel dropout on the features the decoder reads
    fp_dropout: float = 0.5
    threshold: float = 0.95  # τ: pixels with confidence below it do not count in the CE (but in its denominator)
    # the whole step's loss (labelled + unlabelled) times this; UniMatch's code divides its total by 2
    # (0.5). With SGD and no clipping that halves the step, so it matters when lr is copied from UniMatch
    loss_scale: float = 1.0


@dataclass
class SemiConfig:
    """Semi-supervised options (docs/method.md, "Semi-supervised loop" and region losses)."""

    ema_momentum: float = 0.999
    tau_cls: float = 0.7  # keep teacher queries whose best class prob >= tau_cls
    tau_pix: float = 0.7  # ignore pseudo-label pixels with max S̄ < tau_pix (SMC, pixel contrast)
    regions: str = "queries"  # queries | classes
    soft_masks: bool = False  # teacher region masks σ(p) instead of binary
    # all | confident: query regions, the matching, RMC's dice and RFC's MAP only over pixels
    # with max S̄^t ≥ tau_pix (unsure pixels count for neither side)
    region_pixels: str = "all"
    lambda_u: float = 1.0
    rampup_iters: int = 200
    start_iter: int = 0  # λ_u = 0 before this step (supervised warm-up of student and teacher)
    rmc: float = 1.0
    rfc: float = 1.0
    rcc: float = 1.0
    smc: float = 1.0
    tau_m: float = 0.1
    tau_f: float = 0.1
    rfc_scope: str = "batch"  # batch | image
    rfc_proj_dim: int = 128
    rcc_soft: bool = False
    smc_dice_only: bool = False
    cutmix_p: float = 0.5
    fixmatch_threshold: float = 0.95
    pixel_contrast: float = 0.0  # weight of the pixel-level InfoNCE term (0 = off)
    pixel_contrast_mode: str = "sampled"  # sampled | exact
    pixel_contrast_samples: int = 1024
    pixel_contrast_tau: float = 0.1
    # RC²L fed by UniMatch's perturbations (the study's combined row): strong views feeding the
    # region losses, each with its own CutMix box (1 = RC²L as published), and the feature-
    # perturbed weak view trained towards the un-mixed teacher regions
    region_views: int = 1
    region_fp: bool = False
    region_fp_dropout: float = 0.5
    unimatch: UniMatchConfig = field(default_factory=UniMatchConfig)


@dataclass
class Config:
    out_dir: str = "runs/default"
    seed: int = 0
    method: str = "supervised"  # supervised | fixmatch | rc2l | unimatch
    resume: str = ""  # "" | auto | path to a training-state file
    # true: a new run into an out_dir that holds one moves the earlier run's files aside to
    # out_dir/earlier-run-<time>/ (without it, or resume, `rc2l train` refuses such a folder)
    overwrite: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)


CHOICES = {
    "method": ("supervised", "fixmatch", "rc2l", "unimatch"),
    "semi.unimatch.teacher": ("self", "ema"),
    "semi.unimatch.views": (1, 2),
    "semi.region_views": (1, 2),
    "model.arch": ("maskformer", "deeplabv3plus"),
    "model.backbone": ("resnet18", "resnet50", "resnet101", "efficientnet_lite0"),
    "loss.mask_loss": ("bce", "focal"),
    "loss.pixel_sup": ("ce", "ohem"),
    "data.name": ("synthetic", "camvid", "voc", "cityscapes", "folder"),
    "data.bad_samples": ("error", "skip"),
    "train.optimizer": ("adamw", "sgd"),
    "train.amp": ("off", "bf16", "fp16", "auto"),
    "train.device": ("auto", "cpu", "cuda"),
    "eval.mode": ("original", "center_crop", "sliding_window"),
    "eval.labels": ("native", "resized"),
    "semi.regions": ("queries", "classes"),
    "semi.region_pixels": ("all", "confident"),
    "semi.rfc_scope": ("batch", "image"),
    "semi.pixel_contrast_mode": ("sampled", "exact"),
}

# Numeric ranges: key → (lowest, highest, lowest excluded?); None = unbounded. Every float key is
# also checked to be finite. Model sizes have sanity caps far above any real model, so a hostile
# weights-metadata entry cannot make the loader build a model of gigabytes.
_BIG = 1 << 16
RANGES: dict[str, tuple[float | None, float | None, bool]] = {}
for _keys, _range in {
    "seed data.synthetic.seed": (0, 2**32 - 1, False),
    "model.num_queries model.hidden_dim model.mask_dim model.nheads model.dim_feedforward "
    "model.aspp_dim model.decoder_dim data.synthetic.size": (1, _BIG, False),
    "model.dec_layers": (0, 100, False),
    "data.num_classes": (0, _BIG, False),
    "data.synthetic.num_train data.synthetic.num_val data.batch_size data.unlabeled_batch_size "
    "train.iters train.accum_steps train.eval_every train.log_every train.save_every train.max_bad_steps "
    "eval.batch_size semi.rfc_proj_dim semi.pixel_contrast_samples": (1, None, False),
    "data.workers train.threads train.warmup_iters semi.rampup_iters semi.start_iter loss.num_points": (0, None, False),
    "train.lr semi.tau_m semi.tau_f semi.pixel_contrast_tau semi.unimatch.loss_scale": (0, None, True),
    "eval.stride_ratio": (0, 1, True),
    "loss.oversample_ratio": (1, None, False),
    "loss.cls_weight loss.mask_weight loss.dice_weight loss.no_object_weight train.backbone_lr_mult "
    "train.weight_decay train.poly_power train.clip_grad semi.lambda_u semi.rmc semi.rfc semi.rcc semi.smc "
    "semi.pixel_contrast": (0, None, False),
    "loss.importance_sample_ratio semi.ema_momentum semi.tau_cls semi.tau_pix semi.cutmix_p "
    "semi.fixmatch_threshold semi.region_fp_dropout semi.unimatch.fp_dropout semi.unimatch.threshold "
    "loss.ohem_thresh loss.ohem_min_kept": (0, 1, False),
}.items():
    RANGES.update(dict.fromkeys(_keys.split(), _range))
# list keys: every item in (lowest, highest); scale_range also ordered
ITEM_RANGES = {
    "data.crop_size": (1, _BIG, False),
    "data.resize": (1, _BIG, False),
    "eval.crop_size": (1, _BIG, False),
    "model.aspp_rates": (1, _BIG, False),
    "data.scale_range": (0, 100, True),
}


def _range_text(lo, hi, open_lo: bool) -> str:
    if hi is None:
        return f"> {lo}" if open_lo else f">= {lo}"
    return f"in {'(' if open_lo else '['}{lo}, {hi}]"


def _check_ranges(cfg: Config) -> None:
    """Every float key finite; every key of RANGES / ITEM_RANGES inside its range."""
    for f in _float_keys(cfg, ""):
        v = get_key(cfg, f)
        if not math.isfinite(v):
            raise ConfigError(f"config key '{f}' = {short(v)} must be a finite number")
    for key, (lo, hi, open_lo) in RANGES.items():
        v = get_key(cfg, key)
        if v < lo or (open_lo and v == lo) or (hi is not None and v > hi):
            raise ConfigError(f"config key '{key}' = {short(v)} must be {_range_text(lo, hi, open_lo)}")
    for key, (lo, hi, open_lo) in ITEM_RANGES.items():
        v = get_key(cfg, key)
        if any(not math.isfinite(x) or x < lo or x > hi or (open_lo and x == lo) for x in v):
            raise ConfigError(f"config key '{key}' = {short(v)}: every item must be {_range_text(lo, hi, open_lo)}")
    lo_hi = cfg.data.scale_range
    if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
        raise ConfigError(f"config key 'data.scale_range' = {short(lo_hi)} must be [low, high] with low <= high")
    if cfg.model.arch == "maskformer" and cfg.model.hidden_dim % cfg.model.nheads:
        raise ConfigError(
            f"config key 'model.hidden_dim' = {cfg.model.hidden_dim} must be a multiple of "
            f"model.nheads = {cfg.model.nheads}"
        )


def _float_keys(obj: Any, prefix: str) -> list[str]:
    hints, keys = typing.get_type_hints(type(obj)), []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            keys += _float_keys(v, prefix + f.name + ".")
        elif hints[f.name] is float:
            keys.append(prefix + f.name)
    return keys


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: key '{key}' expects a list, got {short(value)}")
        if len(value) > MAX_LIST_ITEMS:
            raise ConfigError(f"{where}: key '{key}' has {len(value)} items (at most {MAX_LIST_ITEMS})")
        return [_coerce(v, item_tp, key, where) for v in value]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: key '{key}' has a value of the wrong type: {short(value)}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: key '{key}' expects {tp.__name__}, got {short(value)}")
    return value


def _merge(obj: Any, data: dict, prefix: str, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'config'}' must be a mapping")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = prefix + str(k)
        if k not in names:
            raise ConfigError(f"{where}: unknown config key '{key}' (known: {', '.join(sorted(names))})")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            _merge(cur, v or {}, key + ".", where)
        else:
            setattr(obj, k, _coerce(v, hints[k], key, where))


def _validate(cfg: Config) -> None:
    if cfg.overwrite and cfg.resume:
        raise ConfigError(
            "config keys 'overwrite' and 'resume' contradict: overwrite=true starts a new run, resume continues one"
        )
    for key, allowed in CHOICES.items():
        value = get_key(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key '{key}' = {short(value)} is not one of {', '.join(allowed)}")
    for key in ("data.crop_size",):
        v = get_key(cfg, key)
        if len(v) != 2:
            raise ConfigError(f"config key '{key}' must be [height, width], got {short(v)}")
    if cfg.data.resize and len(cfg.data.resize) != 2:
        raise ConfigError(f"config key 'data.resize' must be [] or [height, width], got {short(cfg.data.resize)}")
    if cfg.eval.mode == "center_crop" and cfg.eval.labels == "native" and cfg.data.resize:
        raise ConfigError(
            "eval.mode=center_crop crops image and labels alike: with data.resize set it needs eval.labels=resized"
        )
    _resolve_aspp_rates(cfg)
    _check_ranges(cfg)
    _check_combinations(cfg)
    if cfg.method == "rc2l" and cfg.model.arch != "maskformer":
        raise ConfigError(
            f"method=rc2l needs model.arch=maskformer, not {short(cfg.model.arch)}: "
            f"its region losses need mask proposals, which a per-pixel model does not make"
        )


ASPP_STRIDE = 16  # model.aspp_rates are given for this output stride
PER_PIXEL_ONLY = ("aspp_dim", "decoder_dim", "aspp_rates")  # model keys the mask model does not read


def model_keys_read(arch: str, model: dict) -> dict:
    """The model section without the keys ``arch`` does not read: two runs of the mask model that
    differ only in DeepLabv3+'s ASPP keys (e.g. aspp_rates=auto resolved) build the same model."""
    return {k: v for k, v in model.items() if arch == "deeplabv3plus" or k not in PER_PIXEL_ONLY}


def auto_aspp_rates(crop_size: list[int]) -> list[int]:
    """ASPP rates for ``model.aspp_rates=auto``: DeepLab's 1:2:3 ratio (6/12/18) as k, 2k, 3k with
    k = max(1, min(h, w) // 6), (h, w) = the crop's output-stride-16 map (ceil(crop / 16)).

    Why: the largest rate is then at most half the map's shorter side, so every tap of every
    dilated branch reads real features at half the training positions or more and its weight
    trains (DeepLab scales its rates with the map in the same way when it halves the output
    stride). 192×256 → 12×16 → 2/4/6; 513² → 33² → 5/10/15. Maps under 6 get 1/2/3."""
    h, w = (-(-int(s) // ASPP_STRIDE) for s in crop_size)
    k = max(1, min(h, w) // 6)
    return [k, 2 * k, 3 * k]


def _resolve_aspp_rates(cfg: Config) -> None:
    """``model.aspp_rates=auto`` → the rates for ``data.crop_size``, written into the config (so the
    saved config names the rates the model was built with)."""
    rates = cfg.model.aspp_rates
    if isinstance(rates, str):
        if rates != "auto":
            raise ConfigError(f"config key 'model.aspp_rates' must be a list of rates or auto, got {short(rates)}")
        cfg.model.aspp_rates = auto_aspp_rates(cfg.data.crop_size)
    if not cfg.model.aspp_rates:  # each rate's range is ITEM_RANGES'
        raise ConfigError("config key 'model.aspp_rates' must be one or more rates >= 1, got []")


def _check_combinations(cfg: Config) -> None:
    """Values that are each in range but do not go together."""
    if cfg.loss.pixel_sup == "ohem" and cfg.model.arch != "deeplabv3plus":
        raise ConfigError(
            f"config key 'loss.pixel_sup' = 'ohem' needs model.arch=deeplabv3plus: the {cfg.model.arch} model's "
            f"labelled loss is the set loss, which has no per-pixel CE to mine"
        )


def get_key(cfg: Any, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{clip(item)}' is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml_load(raw) if raw != "" else ""
    except YAMLLimitError as e:
        raise UnsafeConfigError(f"override '{clip(item)}': {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{clip(item)}': cannot parse value ({e.__class__.__name__})") from None
    return key.strip(), value


def read_config_file(path: Path) -> Any:
    """A config file's parsed YAML; too big, too costly to expand, unreadable or invalid →
    ConfigError naming the file (and line), checked before anything is built from it."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UnsafeConfigError(f"{path}: {size} bytes is too big for a config file (at most {MAX_CONFIG_BYTES})")
    try:
        return yaml_load(path.read_bytes()[: MAX_CONFIG_BYTES + 1].decode("utf-8")) or {}
    except YAMLLimitError as e:
        line = f" line {e.problem_mark.line + 1}" if e.problem_mark else ""
        raise UnsafeConfigError(f"{path}{line}: {e.problem}; refused") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config file ({str(e)[:200]})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a :class:`Config` from a YAML file (optional) and ``key=value`` overrides."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        _merge(cfg, read_config_file(path), "", str(path))
    for item in overrides:
        key, value = parse_override(item)
        nested: dict = {}
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        _merge(cfg, nested, "", "override")
    _validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict → {dotted key: value}: the keys overrides name and runs are compared by."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# Keys only the ablation studies set (docs/results.md): `rc2l train --help` lists them apart
# from the keys a user sets.
ABLATION_KEYS = (
    "semi.regions semi.soft_masks semi.region_pixels semi.rfc_scope semi.rfc_proj_dim semi.rcc_soft "
    "semi.smc_dice_only semi.pixel_contrast semi.pixel_contrast_mode semi.pixel_contrast_samples "
    "semi.pixel_contrast_tau semi.region_views semi.region_fp semi.region_fp_dropout"
).split()


def keys_help(width: int = 100) -> str:
    """Every config key with its default (and its choices), section by section; the
    ablation-only keys last, apart."""
    keys = flatten(to_dict(Config()))

    def line(k: str) -> str:
        choices = f" ({' | '.join(map(str, CHOICES[k]))})" if k in CHOICES else ""
        return f"  {k}={short(keys[k], 40)}{choices}"

    main = [k for k in keys if k not in ABLATION_KEYS]
    sections: dict[str, list[str]] = {}
    for k in main:
        sections.setdefault(k.split(".")[0] if "." in k else "run", []).append(line(k))
    text = ["config keys (key=default), set in the YAML or as key=value:"]
    for name, lines in sections.items():
        text += [f" {name}:", *lines]
    text += [" ablation-only (the studies in docs/results.md set these):", *map(line, ABLATION_KEYS)]
    return "\n".join(t[:width] for t in text)


def save_config(cfg: Config, path: str | Path) -> None:
    """The run's resolved config, less ``overwrite``: the file starts or continues this run, it
    must never move it aside."""
    d = to_dict(cfg)
    d["overwrite"] = False
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))
