"""`rc2l demo`: the main job end to end on the built-in synthetic data (no download)."""
from __future__ import annotations

REPO_CONFIG = "configs/synthetic.yaml"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train and evaluate on the built-in synthetic data (a few CPU minutes)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from rc2l.config import load_config
    from rc2l.engine.train import train

    cfg_path = Path(__file__).resolve().parents[1] / REPO_CONFIG
    cfg = load_config(cfg_path, [f"out_dir={args.out}/supervised", *args.overrides])
    res = train(cfg)
    print(f"demo: supervised, all {cfg.data.synthetic.num_train} labels: best val mIoU {res['best']['miou']:.2f}")
    return 0
