"""A fixed-seed 20-step run on synthetic data (tiny ResNet-18 MaskFormer, deterministic, one
thread) and one sha256 over the final student, EMA teacher and extra-head tensors. Two commits
that print the same hash train bit-identically: run it at both to check that a change to the
trainer or a method leaves training unchanged.

    python scripts/weights_hash.py [METHOD] [key=value ...]   # METHOD: rc2l (default), fixmatch, ...
    git worktree add /tmp/other COMMIT && PYTHONPATH=/tmp/other python scripts/weights_hash.py rc2l semi.tau_cls=0
"""

from __future__ import annotations

import hashlib
import sys
import tempfile

import torch

from rc2l.config import load_config
from rc2l.engine.train import Trainer

TINY = ["model.backbone=resnet18", "model.pretrained=none", "model.num_queries=8", "model.hidden_dim=32",
        "model.mask_dim=32", "model.dec_layers=2", "model.nheads=2", "model.dim_feedforward=64",
        "data.crop_size=[64,64]", "data.batch_size=2", "data.unlabeled_batch_size=2", "data.workers=0",
        "data.split=1_8", "data.synthetic.num_train=32", "data.synthetic.num_val=4", "train.iters=20",
        "train.eval_every=10", "train.save_every=10", "train.log_every=5", "train.threads=1", "train.progress=false",
        "train.deterministic=true", "semi.rampup_iters=5", "semi.start_iter=5", "train.warmup_iters=5"]  # fmt: skip


def main() -> None:
    method = sys.argv[1] if len(sys.argv) > 1 and "=" not in sys.argv[1] else "rc2l"
    extra = [a for a in sys.argv[1:] if "=" in a]
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(load_config(None, [f"method={method}", f"out_dir={out}", *TINY, *extra]))
        tr.fit()
        tensors = {f"student.{k}": v for k, v in tr.model.state_dict().items()}
        for name, mod in (("teacher", tr.teacher), ("heads", tr.heads)):
            if mod is not None:
                tensors.update({f"{name}.{k}": v for k, v in mod.state_dict().items()})
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().cpu().contiguous().numpy().tobytes())
    print(f"{method}: {len(tensors)} tensors, sha256 {h.hexdigest()}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
