"""The EMA teacher the semi-supervised methods hold (RC²L, FixMatch, UniMatch with
semi.unimatch.teacher=ema): a frozen copy of the student, in eval mode, moved towards it after
every optimizer step."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rc2l.config import SemiConfig
from rc2l.engine.methods.schedule import semi_step
from rc2l.engine.teacher import ema_update, make_teacher


class EmaTeacher:
    """``model``: the teacher network (saved, resumed and evaluated as "teacher"). Its momentum
    warms up from the start of the unlabeled branch (``teacher.ema_momentum``): during the
    supervised warm-up it copies the student."""

    def __init__(self, student: nn.Module, semi: SemiConfig, device: torch.device):
        self.student, self.semi = student, semi
        self.model = make_teacher(student).to(device)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> dict:
        return self.model(images)

    def update(self, step: int) -> None:
        """After optimizer step ``step`` (0-based)."""
        ema_update(self.model, self.student, semi_step(step, self.semi), self.semi.ema_momentum)
