"""How good are a teacher's pseudo-regions, class by class, at several τ_cls?

    python scripts/pseudo_region_stats.py RUN_DIR [--tau 0.3 0.5 0.7 0.9] [--tau-pix 0.9] [--mask-score 0.9] [--limit N] [--json OUT]
    python scripts/pseudo_region_stats.py RUN_DIR --pixels --student --tau 0.7 0.95   # FixMatch/UniMatch's targets

Runs the teacher saved in RUN_DIR/state.pt (or the student with ``--student``) on the split's
unlabeled images, whole images at the eval resolution (no augmentation, no CutMix), keeps the
``queries`` regions exactly as training does (``query_regions``), and scores them against the
ground truth those images have on disk (CamVid, VOC and Cityscapes all ship it; training never
reads it). Per class and threshold:
  regions/img  kept teacher regions of that class per image;
  precision    share of those regions' pixels whose true class is that class;
  recall       share of the class's true pixels covered by a kept region of that class.
This is the "why" behind a semi-supervised result: a class with no confident region gets no
RMC/RFC/RCC signal, and a class with imprecise regions gets a wrong one.

``--pixels`` scores per-pixel pseudo-labels instead (what FixMatch and UniMatch train on, either
architecture): argmax of the class probabilities where their max reaches τ (``--tau``), per
predicted class:
  kept %       share of the known pixels kept with that label;
  precision    share of those pixels whose true class is that class;
  recall       share of the class's true pixels kept with the right label."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as Fn
from torch import Tensor

from rc2l.config import load_config
from rc2l.data.build import dataset_info, splits_dir
from rc2l.data.datasets import SegDataset, make_reader
from rc2l.data.transforms import EvalTransform
from rc2l.engine.checkpoint import load_state
from rc2l.engine.teacher import query_regions
from rc2l.losses.functional import normalize_semantic, pixel_probs
from rc2l.models.segmenter import build_model
from rc2l.provenance import git_commit


class RegionScore:
    """Accumulates, per τ_cls and class, the kept regions, their pixels by true class and the
    class's true pixels they cover. ``tau_pix`` > 0 first cuts every region to the pixels whose
    teacher confidence max S̄ reaches it (what SMC already does for its own target);
    ``mask_score`` > 0 drops regions whose mean σ(p) inside their mask is lower (Mask2Former's
    mask score)."""

    def __init__(self, num_classes: int, taus: list[float], tau_pix: float = 0.0, mask_score: float = 0.0):
        self.K, self.taus, self.tau_pix, self.mask_score = num_classes, sorted(taus), tau_pix, mask_score
        shape = (len(self.taus), num_classes)
        self.regions, self.covered = torch.zeros(shape), torch.zeros(shape)
        self.confusion = torch.zeros(len(self.taus), num_classes, num_classes)  # [τ, region class, true class] pixels
        self.truth = torch.zeros(num_classes)
        self.images = 0

    def add(self, out: dict, gt: Tensor) -> None:
        """out: the segmenter's dict for ONE image (batch 1); gt: (h, w) int64 on the mask grid, 255 = unknown."""
        known = gt != 255
        self.truth += torch.bincount(gt[known], minlength=self.K)[: self.K].float()
        self.images += 1
        conf = normalize_semantic(out["sem_masks"])[0].max(0).values
        r = query_regions(out, self.taus[0], soft_masks=True)[0]  # the loosest τ; stricter ones filter it
        score = r["probs"][:, :-1].max(-1).values.tolist()
        for t, tau in enumerate(self.taus):
            cover = torch.zeros(self.K, *gt.shape, dtype=torch.bool)
            for soft, c, sc in zip(r["masks"], r["labels"].tolist(), score):
                if sc < tau:
                    continue
                m = soft > 0.5
                if self.mask_score > 0 and soft[m].mean() < self.mask_score:
                    continue
                if self.tau_pix > 0:
                    m = m & (conf >= self.tau_pix)
                self.regions[t, c] += 1
                self.confusion[t, c] += torch.bincount(gt[m & known], minlength=self.K)[: self.K].float()
                cover[c] |= m
            self.covered[t] += (cover & (gt[None] == torch.arange(self.K)[:, None, None])).flatten(1).sum(1)

    def table(self) -> dict[int, dict[float, dict[str, float]]]:
        """{class: {τ_cls: {"regions_per_image", "precision" %, "recall" %, "pixels_by_truth" %}}}; NaN
        where undefined. pixels_by_truth: the true classes of the region pixels, in % (sums to 100)."""
        nan = float("nan")
        out = {}
        for c in range(self.K):
            out[c] = {}
            for t, tau in enumerate(self.taus):
                area = self.confusion[t, c].sum()
                out[c][tau] = {
                    "regions_per_image": float(self.regions[t, c]) / max(self.images, 1),
                    "precision": 100 * float(self.confusion[t, c, c] / area) if area else nan,
                    "recall": 100 * float(self.covered[t, c] / self.truth[c]) if self.truth[c] else nan,
                    "pixels_by_truth": (100 * self.confusion[t, c] / area).tolist() if area else [nan] * self.K,
                }
        return out


class PixelScore:
    """Accumulates, per τ and predicted class, the pixels kept as pseudo-labels (max probability
    ≥ τ) and how many of them are right, and each class's true pixels."""

    def __init__(self, num_classes: int, taus: list[float]):
        self.K, self.taus = num_classes, sorted(taus)
        self.kept, self.correct = torch.zeros(len(self.taus), num_classes), torch.zeros(len(self.taus), num_classes)
        self.truth = torch.zeros(num_classes)

    def add(self, out: dict, gt: Tensor) -> None:
        """out: the segmenter's dict for ONE image (either architecture); gt: (h, w) int64 on the
        output's grid, 255 = unknown."""
        known = gt != 255
        self.truth += torch.bincount(gt[known], minlength=self.K)[: self.K].float()
        conf, pred = pixel_probs(out)[0].max(0)
        for t, tau in enumerate(self.taus):
            keep = known & (conf >= tau)
            self.kept[t] += torch.bincount(pred[keep], minlength=self.K)[: self.K].float()
            self.correct[t] += torch.bincount(pred[keep & (pred == gt)], minlength=self.K)[: self.K].float()

    def table(self) -> dict[int, dict[float, dict[str, float]]]:
        """{class: {τ: {"kept" %, "precision" %, "recall" %}}}; NaN where undefined."""
        nan, total = float("nan"), float(self.truth.sum())
        out = {}
        for c in range(self.K):
            out[c] = {}
            for t, tau in enumerate(self.taus):
                kept = float(self.kept[t, c])
                out[c][tau] = {
                    "kept": 100 * kept / total if total else nan,
                    "precision": 100 * float(self.correct[t, c]) / kept if kept else nan,
                    "recall": 100 * float(self.correct[t, c] / self.truth[c]) if self.truth[c] else nan,
                }
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--tau", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9], help="τ_cls values (τ with --pixels)")
    ap.add_argument("--pixels", action="store_true", help="score per-pixel pseudo-labels (FixMatch/UniMatch's)")
    ap.add_argument("--tau-pix", type=float, default=0.0, help="cut regions to pixels with max S̄ ≥ this")
    ap.add_argument("--mask-score", type=float, default=0.0, help="drop regions whose mean σ(p) in the mask is lower")
    ap.add_argument("--student", action="store_true", help="score the student instead of the EMA teacher")
    ap.add_argument("--limit", type=int, default=0, help="first N unlabeled images only (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = load_config(args.run / "config.yaml")
    state = load_state(args.run / "state.pt")
    key = "model" if args.student else "teacher"
    if state.get(key) is None:
        raise SystemExit(
            f"{args.run / 'state.pt'} has no {key!r} weights (a supervised run has no teacher: use --student)"
        )
    names = dataset_info(cfg).class_names
    model = build_model(len(names), dataclasses.replace(cfg.model, pretrained="none"))  # weights come from the state
    model.load_state_dict(state[key])
    model.eval()

    reader = make_reader(cfg.data.name, cfg.data.root)
    items = reader.items_from_file(splits_dir(cfg) / cfg.data.split / "unlabeled.txt", need_mask=True)
    ds = SegDataset(reader, items[: args.limit] if args.limit else items, EvalTransform(cfg.data.resize))
    if not args.pixels and cfg.model.arch != "maskformer":
        raise SystemExit(f"{args.run}: a {cfg.model.arch} model has no regions to score; use --pixels")
    score = (
        PixelScore(len(names), args.tau)
        if args.pixels
        else RegionScore(len(names), args.tau, args.tau_pix, args.mask_score)
    )
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds[i]
            out = model(s["image"][None])
            size = (out["sem_logits"] if "sem_logits" in out else out["pred_masks"]).shape[-2:]
            gt = Fn.interpolate(s["mask"][None, None].float(), size=size, mode="nearest")
            score.add(out, gt[0, 0].long())

    who = "student" if args.student else "teacher"
    if args.pixels:
        command = "python scripts/pseudo_region_stats.py " + " ".join(sys.argv[1:] if argv is None else argv)
        meta = {"command": command, "commit": git_commit(), "run": str(args.run), "model": who, "step": state["step"]}
        print(f"{who} of {args.run} (step {state['step']}), {len(ds)} unlabeled images, per-pixel pseudo-labels")
        return print_pixels(score, names, meta, args.json)
    cut = f", regions cut to max S̄ ≥ {args.tau_pix}" if args.tau_pix > 0 else ""
    cut += f", regions with mask score ≥ {args.mask_score}" if args.mask_score > 0 else ""
    print(
        f"{who} of {args.run} (step {state['step']}), {len(ds)} unlabeled images of {cfg.data.name} {cfg.data.split}{cut}"
    )
    print(
        "| class | "
        + " | ".join(f"τ_cls {tau}: regions/img, precision, recall" for tau in score.taus)
        + f" | wrong pixels at τ_cls {score.taus[0]} are mostly |"
    )
    print("|---|" + "---|" * (len(score.taus) + 1))
    table = score.table()
    for c, row in table.items():
        share = row[score.taus[0]]["pixels_by_truth"]
        wrong = sorted((v, names[k]) for k, v in enumerate(share) if k != c and v == v and v >= 1)[::-1][:3]
        print(
            f"| {names[c]} | "
            + " | ".join(f"{v['regions_per_image']:.2f}, {v['precision']:.0f}, {v['recall']:.0f}" for v in row.values())
            + " | "
            + ", ".join(f"{n} {v:.0f}%" for v, n in wrong)
            + " |"
        )
    if args.json:
        rows = {names[c]: {str(tau): v for tau, v in row.items()} for c, row in table.items()}
        command = "python scripts/pseudo_region_stats.py " + " ".join(sys.argv[1:] if argv is None else argv)
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "commit": git_commit(),
                    "run": str(args.run),
                    "model": who,
                    "step": state["step"],
                    "tau_pix": args.tau_pix,
                    "mask_score": args.mask_score,
                    "class_names": names,
                    "images": len(ds),
                    "classes": rows,
                },
                indent=1,
            )
        )
    return 0


def print_pixels(score: PixelScore, names: list[str], meta: dict, json_path: Path | None) -> int:
    print("| class | " + " | ".join(f"τ {tau}: kept %, precision, recall" for tau in score.taus) + " |")
    print("|---|" + "---|" * len(score.taus))
    table = score.table()
    for c, row in table.items():
        cells = " | ".join(f"{v['kept']:.1f}, {v['precision']:.0f}, {v['recall']:.0f}" for v in row.values())
        print(f"| {names[c]} | {cells} |")
    if json_path:
        rows = {names[c]: {str(tau): v for tau, v in row.items()} for c, row in table.items()}
        json_path.write_text(json.dumps({**meta, "pixels": True, "class_names": names, "classes": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
