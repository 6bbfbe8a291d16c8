"""Training step and inference of rc2l's segmenter against Hugging Face transformers'
MaskFormerForInstanceSegmentation (same backbone depth, queries, decoder layers, widths,
loss definition; random weights, nothing downloaded), and ONNX Runtime against eager PyTorch
for our model.

Both models get the same images (B, 3, S, S) and label maps; each side is timed the way a
user runs it:
- training step: zero_grad → forward → loss (Hungarian matching, CE + 20·focal + 1·dice) →
  backward → AdamW step. Label maps are turned into HF's mask_labels/class_labels beforehand
  (not timed); ours converts them inside its criterion (timed).
- inference (eval, no grad): the (B, S, S) semantic map a user gets — ours
  ``semantic_scores(x).argmax(1)``, HF ``model(x)`` + ``post_process_semantic_segmentation``.
- ONNX: ``rc2l.infer.export.export_onnx`` of our model (images → semantic scores) run by
  ONNX Runtime vs ``model.semantic_scores`` in eager PyTorch.
Alternating A, B, A, B in one process after warm-up; medians. HF_HUB_OFFLINE=1 and a socket
guard that counts (and refuses) every connection attempt.

    .venv/bin/python benchmarks/vs_hf_maskformer.py
    .venv/bin/python benchmarks/vs_hf_maskformer.py --device cuda --amp --size 512
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import common as cm

NAME = "vs_hf_maskformer"
NETWORK_ATTEMPTS: list[str] = []


class NetworkGuard:
    """While active, refuse and record every internet connection (AF_INET/AF_INET6);
    HF_HUB_OFFLINE=1 should mean there are none. Local (AF_UNIX) sockets are left alone."""

    def __enter__(self):
        self.saved = socket.socket.connect, socket.socket.connect_ex
        orig_connect, orig_connect_ex = self.saved

        def check(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                NETWORK_ATTEMPTS.append(repr(address))
                raise OSError(f"benchmark network guard: connection to {address!r} refused")

        def connect(sock, address):
            check(sock, address)
            return orig_connect(sock, address)

        def connect_ex(sock, address):
            check(sock, address)
            return orig_connect_ex(sock, address)

        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
        return self

    def __exit__(self, *exc):
        socket.socket.connect, socket.socket.connect_ex = self.saved
        return False


HF_RESNETS = {
    "resnet18": dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512]),
    "resnet50": dict(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048]),
    "resnet101": dict(layer_type="bottleneck", depths=[3, 4, 23, 3], hidden_sizes=[256, 512, 1024, 2048]),
}


def build_hf(a):
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig

    bb = ResNetConfig(
        embedding_size=64, out_features=["stage1", "stage2", "stage3", "stage4"], **HF_RESNETS[a.backbone]
    )
    dec = {
        "model_type": "detr",
        "num_queries": a.queries,
        "decoder_layers": a.layers,
        "d_model": a.hidden,
        "decoder_ffn_dim": a.ffn,
        "decoder_attention_heads": a.heads,
        "encoder_attention_heads": a.heads,
        "dropout": 0.0,
    }
    cfg = MaskFormerConfig(
        backbone_config=bb,
        decoder_config=dec,
        num_labels=a.classes,
        fpn_feature_size=a.hidden,
        mask_feature_size=a.hidden,
        use_auxiliary_loss=False,
        use_pretrained_backbone=False,
        cross_entropy_weight=1.0,
        mask_weight=20.0,
        dice_weight=1.0,
        no_object_weight=0.1,
    )
    return MaskFormerForInstanceSegmentation(cfg), cfg


def build_ours(a):
    from rc2l.config import LossConfig, ModelConfig
    from rc2l.losses.criterion import SetCriterion
    from rc2l.models.segmenter import build_model

    mc = ModelConfig(
        backbone=a.backbone,
        pretrained="none",
        num_queries=a.queries,
        hidden_dim=a.hidden,
        mask_dim=a.hidden,
        dec_layers=a.layers,
        nheads=a.heads,
        dim_feedforward=a.ffn,
    )
    model = build_model(a.classes, mc)
    crit = {
        aux: SetCriterion(
            a.classes,
            LossConfig(
                cls_weight=1.0,
                mask_weight=20.0,
                dice_weight=1.0,
                no_object_weight=0.1,
                mask_loss="focal",
                num_points=0,
                deep_supervision=aux,
            ),
        )
        for aux in (False, True)
    }
    return model, crit, mc


def make_labels(batch: int, size: int, classes: int, per_image: int, seed: int = 0) -> torch.Tensor:
    """Blocky label maps (B, S, S): an 8×8 grid of ``per_image`` classes per image."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(
        [
            torch.randperm(classes, generator=g)[:per_image][torch.randint(0, per_image, (8, 8), generator=g)]
            for _ in range(batch)
        ]
    )
    return torch.nn.functional.interpolate(grid[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()


class Hooks:
    """Forward wall time per named submodule (pre/post hooks, synchronised on CUDA)."""

    def __init__(self, modules: dict, device: str):
        self.device, self.acc, self.handles, self.t0 = device, {k: 0.0 for k in modules}, [], {}
        for name, m in modules.items():
            self.handles.append(m.register_forward_pre_hook(self._pre(name)))
            self.handles.append(m.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def f(mod, inp):
            cm.sync(self.device)
            self.t0[name] = time.perf_counter()

        return f

    def _post(self, name):
        def f(mod, inp, out):
            cm.sync(self.device)
            self.acc[name] += time.perf_counter() - self.t0[name]

        return f

    def reset(self):
        self.acc = {k: 0.0 for k in self.acc}

    def remove(self):
        for h in self.handles:
            h.remove()


def main(argv: list[str] | None = None) -> int:
    p = cm.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet50", choices=sorted(HF_RESNETS))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=2048, help="decoder FFN width (HF's default 2048)")
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--per-image", type=int, default=5, help="classes present per label map")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--no-onnx", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.backbone, args.size, args.queries, args.layers, args.hidden, args.heads, args.ffn = (
            "resnet18",
            64,
            8,
            2,
            32,
            4,
            64,
        )
        args.classes, args.per_image, args.reps = 5, 3, 1
    cm.finish_args(args, NAME)
    NETWORK_ATTEMPTS.clear()
    with NetworkGuard():
        return run(args, argv)


def run(args, argv) -> int:
    meta = cm.run_meta(NAME, args, argv, __file__)
    dev = args.device
    torch.manual_seed(0)
    hf, hf_cfg = build_hf(args)
    ours, crits, mc = build_ours(args)
    hf.to(dev)
    ours.to(dev)
    for c in crits.values():
        c.to(dev)
    from transformers import MaskFormerImageProcessor

    proc = MaskFormerImageProcessor()
    from rc2l.losses.criterion import targets_from_labels

    B, S = args.batch, args.size
    x = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(1)).to(dev)
    labels = make_labels(B, S, args.classes, args.per_image).to(dev)
    tg = targets_from_labels(labels)
    mask_labels = [t["masks"] for t in tg]
    class_labels = [t["labels"] for t in tg]
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.05)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, weight_decay=0.05)
    amp = lambda: cm.amp_context(dev, args.amp)  # noqa: E731

    def train_ours(aux):
        def f():
            ours.decoder.aux_predictions = aux  # as the trainer sets it from loss.deep_supervision
            opt_ours.zero_grad(set_to_none=True)
            with amp():
                out = ours(x)
                loss = crits[aux](out, labels)["loss"]
            loss.backward()
            opt_ours.step()

        return f

    def train_hf(aux):
        def f():
            hf.config.use_auxiliary_loss = aux
            opt_hf.zero_grad(set_to_none=True)
            with amp():  # output_hidden_states: HF's aux path stacks them but does not request them itself
                out = hf(pixel_values=x, mask_labels=mask_labels, class_labels=class_labels, output_hidden_states=aux)
            out.loss.backward()
            opt_hf.step()

        return f

    @torch.no_grad()
    def infer_ours():
        with amp():
            return ours.semantic_scores(x).argmax(1)

    @torch.no_grad()
    def infer_hf():
        hf.config.use_auxiliary_loss = False  # inference: final layer only
        with amp():
            out = hf(pixel_values=x)
        return torch.stack(proc.post_process_semantic_segmentation(out, target_sizes=[(S, S)] * B))

    rows, results = [], {}
    t0 = time.time()
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in hf.parameters())
    # --- training steps: final-layer loss only (HF default) and deep supervision on both
    for aux in (False, True):
        ours.train(), hf.train()
        tm = cm.interleaved({"ours": train_ours(aux), "hf": train_hf(aux)}, dev, reps=args.reps, warmup=1)
        results[("train", aux)] = tm
        print(
            f"[{time.time() - t0:5.0f} s] train aux={aux}: ours {cm.fmt_time(cm.med(tm['ours']))}, HF {cm.fmt_time(cm.med(tm['hf']))}",
            flush=True,
        )
    # --- inference
    ours.eval(), hf.eval()
    pred_o, pred_h = infer_ours(), infer_hf()
    assert pred_o.shape == pred_h.shape == (B, S, S), (pred_o.shape, pred_h.shape)
    tm = cm.interleaved(
        {"ours": infer_ours, "hf": infer_hf}, dev, reps=max(args.reps, 9) if not args.quick else 1, warmup=1
    )
    results[("infer", None)] = tm
    print(
        f"[{time.time() - t0:5.0f} s] inference: ours {cm.fmt_time(cm.med(tm['ours']))}, HF {cm.fmt_time(cm.med(tm['hf']))}",
        flush=True,
    )
    # --- breakdown (forward hooks), 2 repetitions each
    breakdown = profile_parts(
        ours,
        hf,
        crits,
        (x, labels, mask_labels, class_labels),
        infer_ours,
        infer_hf,
        opt_ours,
        opt_hf,
        dev,
        1 if args.quick else 2,
    )
    print(f"[{time.time() - t0:5.0f} s] breakdown done", flush=True)
    # --- ONNX Runtime vs eager
    if not args.no_onnx and dev == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            print(
                "note: onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); ONNX row skipped", flush=True
            )
            args.no_onnx = True
    onnx_res = (
        None if args.no_onnx else onnx_vs_eager(ours, x, dev, max(args.reps, 9) if not args.quick else 1, args.threads)
    )
    if onnx_res:
        print(
            f"[{time.time() - t0:5.0f} s] onnx: ORT {cm.fmt_time(cm.med(onnx_res['times']['ort']))}, "
            f"eager {cm.fmt_time(cm.med(onnx_res['times']['eager']))}",
            flush=True,
        )
    setup = {
        "backbone": args.backbone,
        "input": f"{B}×3×{S}×{S}",
        "queries": args.queries,
        "dec_layers": args.layers,
        "hidden": args.hidden,
        "ffn": args.ffn,
        "heads": args.heads,
        "classes": args.classes,
        "params_ours": n_ours,
        "params_hf": n_hf,
        "network_attempts": len(NETWORK_ATTEMPTS),
    }
    goal = 1.0  # never slower than the reference implementation
    for (kind, aux), tm in results.items():
        o, h = cm.med(tm["ours"]), cm.med(tm["hf"])
        what = {
            ("train", False): "training step, final-layer loss (HF default use_auxiliary_loss=False)",
            ("train", True): "training step, deep supervision (HF use_auxiliary_loss=True)",
            ("infer", None): "inference → semantic map",
        }[(kind, aux)]
        rows.append(
            cm.clean_json(
                {
                    "kind": kind,
                    "what": what,
                    **setup,
                    "ours_s": o,
                    "hf_s": h,
                    "ours_min_s": min(tm["ours"]),
                    "hf_min_s": min(tm["hf"]),
                    "ours_iqr_s": cm.iqr(tm["ours"]),
                    "hf_iqr_s": cm.iqr(tm["hf"]),
                    "reps": len(tm["ours"]),
                    "reference": "HF MaskFormer",
                    "ratio_vs_reference": o / h,
                    "speedup": h / o,
                    "goal": f"speed-up ≥ {goal}",
                    "goal_met": h / o >= goal,
                }
            )
        )
    if onnx_res:
        o, e = cm.med(onnx_res["times"]["ort"]), cm.med(onnx_res["times"]["eager"])
        rows.append(
            cm.clean_json(
                {
                    "kind": "onnx",
                    "what": "ONNX Runtime vs eager PyTorch, ours, semantic scores",
                    **setup,
                    "ort_s": o,
                    "eager_s": e,
                    "ort_min_s": min(onnx_res["times"]["ort"]),
                    "eager_min_s": min(onnx_res["times"]["eager"]),
                    "ort_iqr_s": cm.iqr(onnx_res["times"]["ort"]),
                    "eager_iqr_s": cm.iqr(onnx_res["times"]["eager"]),
                    "reps": len(onnx_res["times"]["ort"]),
                    "max_abs_diff": onnx_res["max_abs_diff"],
                    "export_s": onnx_res["export_s"],
                    "exporter": onnx_res["exporter"],
                    "ort_threads": onnx_res["ort_threads"],
                    "reference": "eager PyTorch",
                    "ratio_vs_reference": o / e,
                    "speedup": e / o,
                    "goal": "speed-up ≥ 2",
                    "goal_met": e / o >= 2,
                }
            )
        )
    rows.append(cm.clean_json({"kind": "breakdown", **setup, "parts": breakdown}))
    md = render(rows, breakdown, setup, args)
    cm.publish(NAME, args, meta, rows, md)
    return 0


def profile_parts(ours, hf, crits, data, infer_ours, infer_hf, opt_ours, opt_hf, dev, reps):
    """Median seconds per part: backbone / pixel decoder / transformer decoder forward (hooks),
    the rest of the forward (heads, matching + losses, post-processing), backward, optimizer.
    Training is profiled with deep supervision on both; data = (images, labels, mask_labels,
    class_labels)."""
    x, labels, mask_labels, class_labels = data
    mods = {
        "ours": {"backbone": ours.backbone, "pixel decoder": ours.pixel_decoder, "transformer decoder": ours.decoder},
        "hf": {
            "backbone": hf.model.pixel_level_module.encoder,
            "pixel decoder": hf.model.pixel_level_module.decoder,
            "transformer decoder": hf.model.transformer_module,
        },
    }
    out = {}
    for mode in ("train_aux", "infer"):
        for side in ("ours", "hf"):
            hk = Hooks(mods[side], dev)
            model = ours if side == "ours" else hf
            opt = opt_ours if side == "ours" else opt_hf
            samples = []
            try:
                for _ in range(reps):
                    hk.reset()
                    if mode == "infer":
                        model.eval()
                        total = cm.time_once(infer_ours if side == "ours" else infer_hf, dev)
                        parts = dict(hk.acc)
                        parts["rest of forward"] = total - sum(hk.acc.values())
                    else:
                        model.train()
                        opt.zero_grad(set_to_none=True)
                        cm.sync(dev)
                        t = time.perf_counter()
                        if side == "ours":
                            ours.decoder.aux_predictions = True
                            loss = crits[True](ours(x), labels)["loss"]
                        else:
                            hf.config.use_auxiliary_loss = True
                            loss = hf(
                                pixel_values=x,
                                mask_labels=mask_labels,
                                class_labels=class_labels,
                                output_hidden_states=True,
                            ).loss
                        cm.sync(dev)
                        fwd = time.perf_counter() - t
                        t_b = cm.time_once(loss.backward, dev)
                        t_o = cm.time_once(opt.step, dev)
                        parts = dict(hk.acc)
                        parts["heads + loss (rest of forward)"] = fwd - sum(hk.acc.values())
                        parts["backward"] = t_b
                        parts["optimizer step"] = t_o
                    samples.append(parts)
            finally:
                hk.remove()
            out[f"{side}/{mode}"] = {k: cm.med([s[k] for s in samples]) for k in samples[0]}
    return out


def onnx_vs_eager(model, x, dev, reps, threads: int = 0) -> dict:
    """Export with rc2l's exporter (torch.onnx.export of the same wrapper when it is missing)
    and time ONNX Runtime against eager ``semantic_scores``, alternating. ``threads`` > 0 gives
    ONNX Runtime the same intra-op thread count as torch; 0 keeps rc2l's session defaults."""
    import numpy as np

    model = model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        t = time.perf_counter()
        try:
            from rc2l.infer.export import export_onnx

            export_onnx(model.cpu(), path, sample_hw=tuple(x.shape[-2:]))
            exporter = "rc2l.infer.export.export_onnx"
        except ImportError:

            class Wrap(torch.nn.Module):
                def __init__(self, m):
                    super().__init__()
                    self.m = m

                def forward(self, images):
                    return self.m.semantic_scores(images)

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    Wrap(model.cpu()),
                    (x.cpu()[:1],),
                    str(path),
                    dynamo=False,
                    opset_version=17,
                    input_names=["images"],
                    output_names=["scores"],
                    dynamic_axes={"images": {0: "b", 2: "h", 3: "w"}, "scores": {0: "b", 2: "h", 3: "w"}},
                )
            exporter = "torch.onnx.export (fallback)"
        export_s = time.perf_counter() - t
        model.to(dev)
        import onnxruntime as ort

        if threads > 0 or dev == "cuda":
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            prov = (["CUDAExecutionProvider"] if dev == "cuda" else []) + ["CPUExecutionProvider"]
            sess = ort.InferenceSession(str(path), sess_options=so, providers=prov)
        else:
            try:
                from rc2l.infer.loading import onnx_session

                sess = onnx_session(path, torch.device(dev))
            except ImportError:
                sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        xn = x.detach().cpu().numpy().astype(np.float32)

        def ort_run():
            return sess.run(None, {name: xn})[0]

        @torch.no_grad()
        def eager():
            return model.semantic_scores(x)

        diff = float(np.abs(ort_run() - eager().float().cpu().numpy()).max())
        times = cm.interleaved({"ort": ort_run, "eager": eager}, dev, reps=reps, warmup=1)
        threads = sess.get_session_options().intra_op_num_threads
    return {
        "times": times,
        "max_abs_diff": diff,
        "export_s": export_s,
        "exporter": exporter,
        "ort_threads": threads or "default (physical cores)",
    }


def render(rows, breakdown, setup, args) -> str:
    s = setup
    out = [
        f"Setup: {s['backbone']} backbone (random init, nothing downloaded; network attempts: {s['network_attempts']}), "
        f"input {s['input']}, {s['queries']} queries, {s['dec_layers']} decoder layers, hidden/mask dim {s['hidden']}, "
        f"FFN {s['ffn']}, {s['heads']} heads, K={s['classes']}; parameters: ours {s['params_ours'] / 1e6:.1f} M, "
        f"HF {s['params_hf'] / 1e6:.1f} M. Loss on both: Hungarian matching, CE (no-object 0.1) ×1 + sigmoid focal ×20 + "
        "dice ×1 at label resolution (ours: `LossConfig(cls_weight=1, mask_weight=20, dice_weight=1, mask_loss=focal, "
        "num_points=0)`). AdamW lr 1e-4 on both.",
        "",
    ]
    table = []
    for r in rows:
        if r["kind"] in ("train", "infer"):
            table.append(
                [
                    r["what"],
                    cm.fmt_time(r["ours_s"]),
                    cm.fmt_time(r["hf_s"]),
                    f"{r['speedup']:.2f}×",
                    "≥ 1.0× (never slower)",
                    "yes" if r["goal_met"] else "NO",
                ]
            )
    out += [cm.markdown_table(["measurement", "ours", "HF MaskFormer", "speed-up (HF/ours)", "goal", "met"], table), ""]
    onnx = [r for r in rows if r["kind"] == "onnx"]
    if onnx:
        o = onnx[0]
        out += [
            cm.markdown_table(
                [
                    "our model, images → semantic scores",
                    "ONNX Runtime",
                    "eager PyTorch",
                    "speed-up (eager/ORT)",
                    "goal",
                    "met",
                ],
                [
                    [
                        "inference",
                        cm.fmt_time(o["ort_s"]),
                        cm.fmt_time(o["eager_s"]),
                        f"{o['speedup']:.2f}×",
                        "≥ 2×",
                        "yes" if o["goal_met"] else "NO",
                    ]
                ],
            ),
            "",
            f"ONNX: exported by {o['exporter']} in {o['export_s']:.1f} s; max |scores(ORT) − scores(torch)| = "
            f"{o['max_abs_diff']:.2g}; ONNX Runtime intra-op threads: {o['ort_threads']}.",
            "",
        ]
    parts = sorted(
        {k for v in breakdown.values() for k in v},
        key=lambda k: [
            "backbone",
            "pixel decoder",
            "transformer decoder",
            "heads + loss (rest of forward)",
            "rest of forward",
            "backward",
            "optimizer step",
        ].index(k),
    )
    cols = list(breakdown)
    out += [
        "Where the time goes (median of the breakdown runs; forward parts from module hooks):",
        "",
        cm.markdown_table(["part"] + cols, [[k] + [cm.fmt_time(breakdown[c].get(k)) for c in cols] for k in parts]),
    ]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
