"""metrics.jsonl, the run's own record of itself: written by the trainer (one JSON object per
log step, per evaluation and per start or resume, mirrored to TensorBoard), read by ``rc2l
report``, ``rc2l ablate`` and scripts/record_result.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rc2l.engine.checkpoint import atomic_write


def read_records(path: Path) -> tuple[list[dict], list[str]]:
    """(records, warnings): every line that is a JSON object with a numeric "step"; any other
    line (e.g. cut off by a kill) is skipped with a warning naming it."""
    recs, warns = [], []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                warns.append(f"{path}:{i}: not valid JSON, skipped")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), (int, float)):
                warns.append(f"{path}:{i}: not a metrics record (no numeric 'step'), skipped")
                continue
            recs.append(rec)
    return recs, warns


class MetricsLog:
    """metrics.jsonl (one JSON object per log step and per evaluation) and TensorBoard.

    ``resumed_at``: the step a resumed run continues from. What the interrupted run logged after
    its last checkpoint is dropped from both (TensorBoard's ``purge_step``), so the log of a
    resumed run reads like that of an uninterrupted one instead of repeating those steps."""

    def __init__(self, run_dir: Path, enabled: bool, resumed_at: int | None = None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resumed_at is not None and self.path.exists():
            self._drop_after(resumed_at)
        elif self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb+") as f:  # a line cut off by a kill must not swallow the next record
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        try:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resumed_at is None else resumed_at + 1
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge)
        except ImportError:  # TensorBoard is optional at run time
            self.tb = None

    def _drop_after(self, step: int) -> None:
        """Rewrite metrics.jsonl (atomically) without the records of steps > ``step``; lines that
        are not JSON (cut off by a kill) are kept, for ``rc2l report`` to name them."""
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if not (isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)) and rec["step"] > step):
                keep.append(line + "\n")
        atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(keep), encoding="utf-8"))

    def write(self, record: dict, prefix: str) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()
