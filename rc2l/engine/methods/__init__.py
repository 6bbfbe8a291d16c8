"""One file per training method, each a class with the interface of ``base.Method``; the
trainer builds ``METHODS[cfg.method]``. The one list of methods: the model card's description
and the report's loss terms come from these classes (config.CHOICES["method"] is checked
against it by tests/test_methods_registry.py, as config imports nothing above it)."""

from __future__ import annotations

from rc2l.engine.methods.base import Method
from rc2l.engine.methods.fixmatch import FixMatch
from rc2l.engine.methods.rc2l import RC2L
from rc2l.engine.methods.supervised import Supervised
from rc2l.engine.methods.unimatch import UniMatch

METHODS: dict[str, type[Method]] = {"supervised": Supervised, "fixmatch": FixMatch, "rc2l": RC2L, "unimatch": UniMatch}
