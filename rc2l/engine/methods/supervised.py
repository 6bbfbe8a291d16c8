"""Supervised-only training on the labeled images: the baseline every table starts from."""

from __future__ import annotations

from rc2l.engine.methods.base import Method


class Supervised(Method):
    """L = L_sup; the unlabeled stream is not drawn (``uses_unlabeled`` False)."""

    uses_unlabeled = False
    description = "supervised only (labeled images)"
