"""Stopping a run cleanly: SIGTERM/SIGINT set a flag, and the loop saves a checkpoint at the
end of the step and exits (continue with resume=auto)."""

from __future__ import annotations

import signal

import torch

from rc2l.engine import distributed as D


class GracefulStop:
    """``with GracefulStop() as stop``: ``stop.signal`` is the signal received, else None."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)

    def requested(self, device: torch.device) -> bool:
        """A signal seen by any rank stops all ranks at the same step (torchrun forwards SIGTERM
        to each worker, not necessarily within the same step)."""
        if not D.is_dist():
            return self.signal is not None
        flag = D.all_reduce_sum(torch.tensor(float(self.signal is not None), device=device))
        if flag.item() > 0 and self.signal is None:
            self.signal = signal.SIGTERM
        return flag.item() > 0
