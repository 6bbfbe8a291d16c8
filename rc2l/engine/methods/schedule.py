"""When the unlabeled branch of a semi-supervised method runs, and how much it weighs: the
supervised warm-up until semi.start_iter, then λ_u ramped up; the EMA teacher's momentum
warm-up counts from the same step."""

from __future__ import annotations

from rc2l.config import SemiConfig


def semi_step(step: int, semi: SemiConfig) -> int:
    """Steps since the unlabeled branch started (negative during the supervised warm-up); the
    λ_u ramp and the EMA momentum warm-up both count from here."""
    return step - semi.start_iter


def lambda_u(step: int, semi: SemiConfig) -> float:
    """λ_u(t): 0 before semi.start_iter, then a linear ramp to semi.lambda_u over
    semi.rampup_iters steps."""
    t = semi_step(step, semi)
    if t < 0:
        return 0.0
    r = semi.rampup_iters
    return semi.lambda_u * (min(1.0, (t + 1) / r) if r > 0 else 1.0)
