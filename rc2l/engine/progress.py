"""What a person watching a run sees: a progress bar on a terminal, plain lines in a log file,
and the summary line every run ends with."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

log = logging.getLogger("rc2l")


def summary_line(run_dir: Path, result: dict, seconds: float, earlier: float | None = 0.0) -> str:
    """The line every run ends with: where it is, best and final mIoU (which model), wall time.
    ``seconds``: this process's part; ``earlier``: the resumed-from parts' (None: unknown)."""
    best = result["best"]
    final = ", ".join(f"{r['model']} {r['miou']:.2f}" for r in result.get("last_eval") or [])
    best_txt = f"{best['miou']:.2f} ({best['model']}, step {best['step']})" if best.get("model") else "none"
    took = f"{seconds / 60:.1f} min"
    if earlier is None:
        took += " (this part; the earlier parts' time is unknown)"
    elif earlier > 0:
        took = f"{(earlier + seconds) / 60:.1f} min ({took} in this part)"
    return (
        f"finished {result['step']} steps in {took}: best val mIoU {best_txt}; "
        f"final {final or 'not evaluated'}; run folder {run_dir}"
    )


class Progress:
    """What a person watching sees. On a terminal: a progress bar (loss, steps/s, ETA). Piped to a
    file, nohup or SLURM: one plain line per logged step (step, loss terms, lr, steps/s, ETA) and
    one per evaluation — never a line per step."""

    TERMS_SHOWN = 6

    def __init__(self, total: int, initial: int, method: str, enabled: bool = True, tty: bool | None = None):
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar = None
        if enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=f"train {method}", dynamic_ncols=True, mininterval=0.5)

    def step(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def logged(self, rec: dict) -> None:
        if not self.enabled or self.bar is not None:
            return
        skip = {"step", "type", "lr", "it_s", "skipped_steps", "skipped_samples", "loss", "grad_norm"}
        terms = [k for k, v in rec.items() if k not in skip and not k[-1].isdigit() and isinstance(v, (int, float))]
        shown = " ".join(f"{k} {rec[k]:.3f}" for k in terms[: self.TERMS_SHOWN])
        eta = (self.total - rec["step"]) / rec["it_s"] if rec["it_s"] > 0 else float("inf")
        log.info(
            "step %d/%d loss %.3f (%s) lr %.2e %.2f steps/s ETA %s",
            rec["step"],
            self.total,
            rec["loss"],
            shown,
            rec["lr"],
            rec["it_s"],
            _hms(eta),
        )

    def evaluated(self, step: int, results: list[dict]) -> None:
        if not self.enabled:
            return
        text = "step {}: val {} ({})".format(
            step,
            ", ".join(f"{r['model']} mIoU {r['miou']:.2f}" for r in results),
            results[0]["mode"] if results else "",
        )
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info("%s", text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
