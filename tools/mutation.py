#!/usr/bin/env python
"""Mutation testing of the losses, the method steps, the teacher and the trainer's step.

    python tools/mutation.py                 # all targets, writes the "Mutation score" section of docs/reliability.md
    python tools/mutation.py --files rc2l/losses/region.py --no-doc   # one file, report only
    python tools/mutation.py --list          # the mutants, without running anything

Why a runner of its own rather than mutmut or cosmic-ray:
- mutmut 3 does not mutate a function with any decorator other than ``@staticmethod`` /
  ``@classmethod``, which leaves out the ``@torch.no_grad()`` ones: the matchers' cost and
  assignment, the criterion's and the region losses' matching, the EMA update and the trainer's
  buffer restore; its operators are fixed (no ``detach()`` removal, ``sum`` → ``mean``,
  ``min`` ↔ ``max``, ``clamp_min`` ↔ ``clamp_max``); and keeping rc2l/engine/train.py to
  ``Trainer.train_step`` and its helpers would take ``# pragma: no mutate`` comments in the package.
- cosmic-ray writes each mutant to disk and runs one shell test command per mutant: a fresh
  interpreter that imports torch and collects the tests again (~5 s before the first test, over an
  hour for ~1000 mutants on 2 cores), with one test command for the whole session instead of the
  file → tests map below.

How it runs (``ast``): one parent process imports the heavy third-party modules (torch, scipy,
pytest, hypothesis) once and forks a child per mutant; the child installs an import hook that
compiles the *mutated* AST for the one target module (every other module is the repository's
own), runs the mapped test files with ``pytest -x`` in the same process, and exits with pytest's
status. A mutant is

- killed: a test failed (or errored, or the module no longer imported), or the child ran past
  its timeout (4 × the unmutated run of the same tests, at least 30 s);
- survived: every mapped test passed.

Only in-process tests are mapped: a test that starts ``python -m rc2l`` in a subprocess would
run the unmutated code.

Mutation operators (one mutant per site and operator; see ``sites`` and ``apply``):
  arithmetic   + ↔ -, * ↔ /, // → /, % → //, ** → *, & ↔ |  (also in ``x op= y``)
  comparison   < → <=, <= → <, > → >=, >= → >, == ↔ !=, is ↔ is not, in ↔ not in
  boolean      and ↔ or; ``not x`` → x; ``if x:`` → ``if not x:`` (plain names/attributes/calls)
  unary        -x → x, ~x → x
  constants    True ↔ False; 0 → 1, 1 → 0, any other number × 2 (1e-6 → 2e-6, 0.5 → 1.0, 255 → 510)
  calls        ``x.detach()`` → x; min ↔ max (builtins and tensor methods), clamp_min ↔ clamp_max;
               ``x.sum(...)`` → ``x.mean(...)``
  statements   an expression statement (a call: ``t.mul_(m)``, ``loss.backward()``) → pass;
               an augmented assignment → pass; an assignment that rebinds a name from itself
               (``a, b = a * w, b * w``) or writes into a subscript/attribute → pass;
               ``return x`` → ``return None``
Not mutated: docstrings and other strings, type annotations, decorators, ``raise`` statements
(error messages), logging calls, and in rc2l/engine/train.py everything outside
``Trainer.train_step`` / ``_sync_head_grads`` / ``_restore_buffers``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.abc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- mutation:begin -->", "<!-- mutation:end -->"

# file → the fast in-process tests that should catch a fault in it (order: cheapest first;
# ``pytest -x`` stops at the first failure).
LOSS_TESTS = ["tests/test_region_losses.py", "tests/test_rfc.py", "tests/test_padding.py"]
TARGETS: dict[str, list[str]] = {
    "rc2l/losses/functional.py": [
        "tests/test_region_losses.py",
        "tests/test_criterion.py",
        "tests/test_pixel_losses.py",
        "tests/test_teacher.py",
        "tests/test_matcher.py",
        "tests/test_rfc.py",
        "tests/test_mutants.py",
    ],
    "rc2l/losses/matcher.py": [
        "tests/test_matcher.py",
        "tests/test_criterion.py",
        "tests/test_padding.py",
        "tests/test_region_losses.py",
        "tests/test_properties.py",
        "tests/test_mutants.py",
    ],
    "rc2l/losses/criterion.py": [
        "tests/test_criterion.py",
        "tests/test_mutants.py",
        "tests/test_scale.py::test_accumulation_2x2_equals_batch_4",
    ],
    "rc2l/losses/region.py": [*LOSS_TESTS, "tests/test_mutants.py"],
    "rc2l/losses/pixel.py": ["tests/test_pixel_losses.py", "tests/test_unimatch.py", "tests/test_mutants.py"],
    "rc2l/engine/methods/base.py": [
        "tests/test_unimatch.py",
        "tests/test_rc2l_step.py",
        "tests/test_mutants.py",
        "tests/test_semi.py::test_lambda_u_ramp",
    ],
    "rc2l/engine/methods/ema.py": ["tests/test_mutants_train.py", "tests/test_teacher.py", "tests/test_mutants.py"],
    "rc2l/engine/methods/rc2l.py": [
        "tests/test_rc2l_step.py",
        "tests/test_mutants.py",
        "tests/test_methods_train.py::test_rc2l_fed_by_unimatch_perturbations",
    ],
    "rc2l/engine/methods/unimatch.py": ["tests/test_unimatch.py", "tests/test_mutants.py"],
    "rc2l/engine/methods/fixmatch.py": ["tests/test_unimatch.py", "tests/test_mutants.py"],
    "rc2l/engine/methods/supervised.py": ["tests/test_mutants.py"],
    "rc2l/engine/teacher.py": [
        "tests/test_teacher.py",
        "tests/test_properties.py",
        "tests/test_unimatch.py",
        "tests/test_padding.py",
        "tests/test_rc2l_step.py",
        "tests/test_mutants.py",
    ],
    "rc2l/engine/train.py": [
        "tests/test_mutants_train.py",
        "tests/test_train_paths.py::test_amp_changes_the_compute_dtype",
        "tests/test_train_paths.py::test_a_skipped_nan_step_leaves_parameters_and_optimizer_untouched",
        "tests/test_train_paths.py::test_a_skipped_nan_step_leaves_batchnorm_statistics_untouched",
        "tests/test_train_paths.py::test_a_nan_from_the_forward_pass_is_skipped_and_training_goes_on",
        "tests/test_scale.py::test_accumulation_2x2_equals_batch_4",
    ],
}
# In these files only these functions are mutated (None = the whole file).
ONLY_FUNCTIONS: dict[str, set[str]] = {}

# Survivors that no test can or should kill, with the reason (or, marked NOT equivalent, why no
# mapped test kills them). Key: "file::function: mutation" exactly as the report prints it.
EQUIVALENT: dict[str, str] = {
    "rc2l/losses/functional.py::mask_average_pool: 1e-06 → 2e-06": "an eps that only keeps an empty mask or an all-zero sum from dividing by zero (the result is 0 either way); doubling it (or its sign) moves any other value by ~1e-6 relative, indistinguishable from float round-off",
    "rc2l/losses/functional.py::normalize_semantic: 1e-06 → 2e-06": "an eps that only keeps an empty mask or an all-zero sum from dividing by zero (the result is 0 either way); doubling it (or its sign) moves any other value by ~1e-6 relative, indistinguishable from float round-off",
    "rc2l/losses/functional.py::mask_average_pool: m.sum((-2, -1))[..., None] + eps → m.sum((-2, -1))[..., None] - eps": "an eps that only keeps an empty mask or an all-zero sum from dividing by zero (the result is 0 either way); doubling it (or its sign) moves any other value by ~1e-6 relative, indistinguishable from float round-off",
    "rc2l/losses/functional.py::targets_from_labels: 1 → 0": "the `else 1` of `base = int(labels.max()) + 1 if labels.numel() else 1`: only reachable with an empty list (no image, no label pixel), which no caller passes (the loader drops incomplete batches)",
    "rc2l/losses/functional.py::connected_zero: zero + z → zero - z": "a sum of terms x·0: 0 − x·0 is still exactly 0 with zero gradients",
    "rc2l/losses/functional.py::mask_average_pool: -2 → 2": "the same axes: `shape[-2:]`/`sum((-2, -1))` vs `shape[2:]`/`sum((2, -1))` of a 4-D tensor, or dim ±1 of a 2-D one",
    "rc2l/losses/matcher.py::pad_targets: device = device if device is not None else flat.device → pass": "a device argument or transfer: a no-op with one device, and the mutated branch picks the same device (the tensor's own)",
    "rc2l/losses/matcher.py::pad_targets: device is not None → device is None": "a device argument or transfer: a no-op with one device, and the mutated branch picks the same device (the tensor's own)",
    "rc2l/losses/matcher.py::match_padded: 2.0 → 4.0": "a default argument no caller uses: SetCriterion and RegionLosses pass LossConfig's weights, and the only call that uses the defaults is the no-target branch, where no cost is computed",
    "rc2l/losses/matcher.py::match_padded: 5.0 → 10.0": "a default argument no caller uses: SetCriterion and RegionLosses pass LossConfig's weights, and the only call that uses the defaults is the no-target branch, where no cost is computed",
    "rc2l/losses/matcher.py::match: 5.0 → 10.0": "a default argument no caller uses: SetCriterion and RegionLosses pass LossConfig's weights, and the only call that uses the defaults is the no-target branch, where no cost is computed",
    "rc2l/losses/matcher.py::_assign: 1000000.0 → 2000000.0": "the value standing in for NaN/±Inf only has to be far from the real costs (which are O(10)); 2e6 gives the same assignment as 1e6",
    "rc2l/losses/matcher.py::_assign: -1000000.0 → -2000000.0": "the value standing in for NaN/±Inf only has to be far from the real costs (which are O(10)); 2e6 gives the same assignment as 1e6",
    "rc2l/losses/matcher.py::match_padded: 0 → 1": "`max(counts, default=0)` → `default=1`: only reachable with an empty list (no image, no label pixel), which no caller passes (the loader drops incomplete batches); or a dimension of the zero-column cost of the no-target branch: it has no entry, so the assignment is empty whatever its other sizes",
    "rc2l/losses/matcher.py::match: 0 → 1": "`max(counts, default=0)` → `default=1`: only reachable with an empty list (no image, no label pixel), which no caller passes (the loader drops incomplete batches); or a dimension of the zero-column cost of the no-target branch: it has no entry, so the assignment is empty whatever its other sizes",
    "rc2l/losses/matcher.py::pad_targets: 0 → 1": "`max(counts, default=0)`: only reachable with an empty list (no image, no label pixel), which no caller passes (the loader drops incomplete batches)",
    "rc2l/losses/matcher.py::match_padded: 1 → 0": "a dimension of the zero-column cost of the no-target branch: it has no entry, so the assignment is empty whatever its other sizes",
    "rc2l/losses/matcher.py::match: 1 → 0": "a dimension of the zero-column cost of the no-target branch: it has no entry, so the assignment is empty whatever its other sizes",
    "rc2l/losses/matcher.py::batch_bce_cost: -2 → -4": "the shape of a constant pixel count that is broadcast: `shape[:-4]` of a 2-/3-D tensor is `()`, the same number broadcast over the batch",
    "rc2l/losses/criterion.py::SetCriterion.layer_loss: masks.sum() → masks.mean()": "the connected zero `masks.sum() * 0.0`: mean·0 is the same 0",
    "rc2l/losses/criterion.py::SetCriterion.layer_loss: 1 → 0": "`clamp(min=1)` of a matched target's pixel count: a target mask is built from valid pixels, so the count is ≥ 1 at full resolution; with point sampling it would need every sampled point to fall on ignored pixels; or `.squeeze(1)` → `.squeeze(0)` of a (L, 1, P) tensor whose leading L the next line's broadcasting leaves unchanged for L = 1",
    "rc2l/losses/criterion.py::SetCriterion.match: 0 → 1": "`max(counts, default=0)`: only reachable with an empty list (no image, no label pixel), which no caller passes (the loader drops incomplete batches)",
    "rc2l/losses/criterion.py::SetCriterion.match: -2 → 2": "the same axes: `shape[-2:]`/`sum((-2, -1))` vs `shape[2:]`/`sum((2, -1))` of a 4-D tensor, or dim ±1 of a 2-D one",
    "rc2l/losses/criterion.py::SetCriterion.layer_loss: -1 → 1": "the same axes: `shape[-2:]`/`sum((-2, -1))` vs `shape[2:]`/`sum((2, -1))` of a 4-D tensor, or dim ±1 of a 2-D one",
    "rc2l/losses/region.py::smc_loss: label = label.detach() → pass": "`.detach()` of an integer or boolean tensor (labels, validity masks, a comparison's input), which never carries a gradient",
    "rc2l/losses/region.py::smc_loss: label.detach() → label": "`.detach()` of an integer or boolean tensor (labels, validity masks, a comparison's input), which never carries a gradient",
    "rc2l/losses/region.py::smc_loss: valid.detach() → valid": "`.detach()` of an integer or boolean tensor (labels, validity masks, a comparison's input), which never carries a gradient",
    "rc2l/losses/region.py::rmc_loss: 1e-06 → 2e-06": "an eps that only keeps an empty mask or an all-zero sum from dividing by zero (the result is 0 either way); doubling it (or its sign) moves any other value by ~1e-6 relative, indistinguishable from float round-off",
    "rc2l/losses/region.py::rfc_loss: 1e-06 → 2e-06": "an eps that only keeps an empty mask or an all-zero sum from dividing by zero (the result is 0 either way); doubling it (or its sign) moves any other value by ~1e-6 relative, indistinguishable from float round-off",
    "rc2l/losses/region.py::smc_loss: 1e-06 → 2e-06": "an eps that only keeps an empty mask or an all-zero sum from dividing by zero (the result is 0 either way); doubling it (or its sign) moves any other value by ~1e-6 relative, indistinguishable from float round-off",
    "rc2l/losses/region.py::rcc_loss: 1e-12 → 2e-12": "the clamp before log in q·log q: q = 0 gives 0 either way, any q > 0 is far above it",
    "rc2l/losses/region.py::smc_loss: onehot.sum((-2, -1)) → onehot.mean((-2, -1))": "`tsum` is only compared with 0 (`tsum > 0`): sum and mean have the same sign",
    "rc2l/losses/region.py::smc_loss: K - 1 → K + 1": "labels are an argmax over the K classes, always in 0..K−1, so the clamp's upper bound is never reached",
    "rc2l/losses/region.py::smc_loss: 1 → 0": "labels are an argmax over the K classes, always in 0..K−1, so the clamp's upper bound is never reached (`clamp(0, K - 1)` → `clamp(0, K - 0)`)",
    "rc2l/losses/region.py::smc_loss: -2 → 2": "the same axes: `shape[-2:]`/`sum((-2, -1))` vs `shape[2:]`/`sum((2, -1))` of a 4-D tensor, or dim ±1 of a 2-D one",
    "rc2l/losses/region.py::RegionLosses.forward: s.smc > 0 → s.smc >= 0": "a weight of 0: computing the term and multiplying it by 0 equals skipping it (only the cost differs)",
    "rc2l/losses/region.py::rcc_loss: q > 0 → q >= 0": "where q = 0 the term is q·log(clamp(q)) = 0 either way",
    "rc2l/losses/region.py::RFCHead.__init__: True → False": "in-place ReLU or not: the same values and gradients (the first Linear does not need its output for backward)",
    "rc2l/losses/region.py::rfc_loss: -1 → 1": "`Fn.normalize(..., dim=-1)` → `dim=1` of the (L, D) teacher embeddings: the same axes: `shape[-2:]`/`sum((-2, -1))` vs `shape[2:]`/`sum((2, -1))` of a 4-D tensor, or dim ±1 of a 2-D one",
    "rc2l/losses/pixel.py::pixel_pseudo_ce: 1e-06 → 2e-06": "an eps that only keeps an empty mask or an all-zero sum from dividing by zero (the result is 0 either way); doubling it (or its sign) moves any other value by ~1e-6 relative, indistinguishable from float round-off",
    "rc2l/losses/pixel.py::supcon_loss: P < 2 → P <= 2": "with exactly 2 embeddings each anchor's only candidate is its positive (or it has none), so the loss is exactly 0, like the connected zero returned instead",
    "rc2l/losses/pixel.py::pixel_contrast_loss: idx.numel() < 2 → idx.numel() <= 2": "with exactly 2 pixels the InfoNCE is exactly 0 (see supcon_loss), like the connected zero returned instead",
    "rc2l/losses/pixel.py::pixel_pseudo_ce: conf.detach() → conf": "the confidence is only compared with the threshold: a boolean result carries no gradient",
    "rc2l/losses/pixel.py::pixel_contrast_loss: idx.numel() > num_samples → idx.numel() >= num_samples": "with exactly num_samples pixels the sample is a permutation of all of them, and the loss is permutation-invariant",
    "rc2l/losses/pixel.py::pixel_pseudo_ce: 1 → 0": "`max(total, 1)`: total = 0 (every pixel ignored) already returned the connected zero; or `clamp(0, K - 1)` → `K - 0`: labels are an argmax over the K classes, always in 0..K−1, so the clamp's upper bound is never reached",
    "rc2l/losses/pixel.py::pixel_contrast_loss: label.detach() → label": "`.detach()` of an integer or boolean tensor (labels, validity masks, a comparison's input), which never carries a gradient",
    "rc2l/losses/pixel.py::pixel_contrast_loss: valid.detach() → valid": "`.detach()` of an integer or boolean tensor (labels, validity masks, a comparison's input), which never carries a gradient",
    "rc2l/losses/pixel.py::pixel_pseudo_ce: label.detach() → label": "`.detach()` of an integer or boolean tensor (labels, validity masks, a comparison's input), which never carries a gradient",
    "rc2l/losses/pixel.py::pixel_pseudo_ce: K - 1 → K + 1": "labels are an argmax over the K classes, always in 0..K−1, so the clamp's upper bound is never reached",
    "rc2l/engine/methods/base.py::lambda_u: 0 → 1": "`if r > 0` → `if r > 1`: with rampup_iters = 1 the ramp min(1, (t + 1)/1) is already 1 for every t ≥ 0",
    "rc2l/engine/methods/base.py::Method.supervised_loss: True → False": "`non_blocking` only changes how a pinned host→CUDA copy is scheduled; the copied values are the same",
    "rc2l/engine/methods/rc2l.py::RC2L.step: True → False": "`non_blocking` only changes how a pinned host→CUDA copy is scheduled; the copied values are the same",
    "rc2l/engine/methods/rc2l.py::RC2L.step: -2 → 2": "the same axes: `shape[-2:]`/`sum((-2, -1))` vs `shape[2:]`/`sum((2, -1))` of a 4-D tensor, or dim ±1 of a 2-D one",
    "rc2l/engine/methods/rc2l.py::RC2L.step: 1 → 0": "`max(len(regions), 1)` / `real.sum().clamp(min=1)`: guards for an empty batch or an image that is all padding, which the loader never yields",
    "rc2l/engine/methods/rc2l.py::RC2L.pixel_contrast: 4096 → 8192": "the chunk size of the exact similarity rows: chunking is exact (tests/test_pixel_losses.py), only peak memory changes",
    "rc2l/engine/methods/rc2l.py::RC2L.step: targets['conf'] >= threshold → targets['conf'] > threshold": "a `>=` vs `>` at a threshold met only by a float exactly equal to it; on real confidences the two never differ (the inclusive case is tested where the value can be made exact) (the logged conf_frac only)",
    "rc2l/engine/methods/rc2l.py::RC2L.step: st['num_regions'] == 0 → st['num_regions'] != 0": "only decides whether a debug log line is written",
    "rc2l/engine/methods/rc2l.py::RC2L.step: 0 → 1": "only decides whether a debug log line is written",
    "rc2l/engine/methods/unimatch.py::<module>: 17 → 34": "the second strong view's box stream only has to differ from the first (11, tested); any other constant does",
    "rc2l/engine/methods/unimatch.py::UniMatch.step: True → False": "`non_blocking` only changes how a pinned host→CUDA copy is scheduled; the copied values are the same",
    "rc2l/engine/methods/unimatch.py::UniMatch.step: -2 → 2": "the same axes: `shape[-2:]`/`sum((-2, -1))` vs `shape[2:]`/`sum((2, -1))` of a 4-D tensor, or dim ±1 of a 2-D one",
    "rc2l/engine/methods/unimatch.py::UniMatch.step: 1 → 0": "`real.sum().clamp(min=1)` in the logged conf_frac: only an all-padding batch reaches it",
    "rc2l/engine/methods/unimatch.py::UniMatch.step: 0 → 1": "the end of the view slice `v[i·B:(i+1)·weak.shape[1]]`: for the first view it takes one image too many, which `gather` ignores (its index, the label, has B images); for the second it ends at the end anyway",
    "rc2l/engine/methods/unimatch.py::UniMatch.step: conf >= u.threshold → conf > u.threshold": "a `>=` vs `>` at a threshold met only by a float exactly equal to it; on real confidences the two never differ (the inclusive case is tested where the value can be made exact) (the logged conf_frac only)",
    "rc2l/engine/teacher.py::query_regions: keep = keep.cpu() → pass": "a device argument or transfer: a no-op with one device, and the mutated branch picks the same device (the tensor's own)",
    "rc2l/engine/teacher.py::regions_from_label: 0 → 1": "`ignore = int(label.max()) + 1 if label.numel() else 0`: only reachable with an empty list (no image, no label pixel), which no caller passes (the loader drops incomplete batches)",
    "rc2l/engine/teacher.py::regions_from_label: 1 → 0": "`clamp_min(1)` of a class region's pixel count: every region has at least one pixel",
    "rc2l/engine/teacher.py::regions_from_label: -2 → 2": "the same axes: `shape[-2:]`/`sum((-2, -1))` vs `shape[2:]`/`sum((2, -1))` of a 4-D tensor, or dim ±1 of a 2-D one",
    "rc2l/engine/teacher.py::ema_update: src[name].detach() → src[name]": "`ema_update` runs under `@torch.no_grad`: detaching inside it changes nothing",
    "rc2l/engine/teacher.py::cutmix_targets: masks > 0.5 → masks >= 0.5": "a `>=` vs `>` at a threshold met only by a float exactly equal to it; on real confidences the two never differ (the inclusive case is tested where the value can be made exact) (binary masks are 0 or 1; a soft mask exactly 0.5 at a pixel)",
    "rc2l/engine/train.py::Trainer.train_step: self.scaler.unscale_(self.optimizer) → pass": "NOT equivalent, not killed by the mapped in-process tests: the GradScaler is disabled unless train.amp=fp16, so this is a no-op with amp off/bf16; with fp16 GradScaler.step would unscale by itself, so only the logged grad_norm and clipping of fp16 runs change",
    "rc2l/engine/train.py::Trainer.train_step: self.scaler.update() → pass": "NOT equivalent, not killed by the mapped in-process tests: the GradScaler is disabled unless train.amp=fp16, so this is a no-op with amp off/bf16; with fp16 GradScaler.step would unscale by itself, so only the logged grad_norm and clipping of fp16 runs change",
    "rc2l/engine/train.py::Trainer.train_step: D.is_dist() and len(self.heads) → D.is_dist() or len(self.heads)": "in one process `_sync_head_grads` all-reduces over a world of 1 (a no-op) and divides by 1; under DDP both conditions are true",
    "rc2l/engine/train.py::Trainer.train_step: self._sync_head_grads() → pass": "DDP-only code: a no-op in one process; under 2 ranks it is checked by tests/test_distributed.py::test_rc2l_two_ranks_equal_one_process_with_accumulation (with `_sync_head_grads` switched off by hand the heads differ by 1.2e-3 after 2 steps), which runs ranks in subprocesses that import the unmutated code, so this runner cannot see it",
    "rc2l/engine/train.py::Trainer.train_step: D.all_reduce_sum(finite) → pass": "DDP-only code: a no-op in one process; under 2 ranks it is checked by tests/test_distributed.py::test_rc2l_two_ranks_equal_one_process_with_accumulation (with `_sync_head_grads` switched off by hand the heads differ by 1.2e-3 after 2 steps), which runs ranks in subprocesses that import the unmutated code, so this runner cannot see it",
    "rc2l/engine/train.py::Trainer.train_step: micro == c.train.accum_steps - 1 → micro != c.train.accum_steps - 1": "which micro-batch synchronises under DDP (`no_sync` otherwise): DDP-only code: a no-op in one process; under 2 ranks it is checked by tests/test_distributed.py::test_rc2l_two_ranks_equal_one_process_with_accumulation (with `_sync_head_grads` switched off by hand the heads differ by 1.2e-3 after 2 steps), which runs ranks in subprocesses that import the unmutated code, so this runner cannot see it",
    "rc2l/engine/train.py::Trainer.train_step: c.train.accum_steps - 1 → c.train.accum_steps + 1": "which micro-batch synchronises under DDP (`no_sync` otherwise): DDP-only code: a no-op in one process; under 2 ranks it is checked by tests/test_distributed.py::test_rc2l_two_ranks_equal_one_process_with_accumulation (with `_sync_head_grads` switched off by hand the heads differ by 1.2e-3 after 2 steps), which runs ranks in subprocesses that import the unmutated code, so this runner cannot see it",
    "rc2l/engine/train.py::Trainer.train_step: loss.detach() → loss": "the finiteness check of the loss: `isfinite` returns a boolean, detached or not",
    "rc2l/engine/train.py::Trainer.train_step: v.detach() → v": "a logged value turned into a Python float: the same number",
    "rc2l/engine/methods/base.py::Method.__init__: 255 → 510": "a default argument every caller passes (the trainer gives the dataset's ignore index; tests pass their own or use the default consistently)",
    "rc2l/engine/methods/rc2l.py::RC2L.weak_targets: True → False": "`non_blocking` only changes how a pinned host→CUDA copy is scheduled; the copied values are the same",
    "rc2l/engine/methods/rc2l.py::RC2L.weak_targets: -2 → 2": "the same axes: `shape[-2:]` vs `shape[2:]` of a 4-D tensor",
    "rc2l/engine/methods/rc2l.py::RC2L.mix: -2 → 2": "the same axes: `shape[-2:]` vs `shape[2:]` of a 4-D tensor",
    "rc2l/engine/methods/rc2l.py::RC2L.step: mixed_t['conf'] >= threshold → mixed_t['conf'] > threshold": "a `>=` vs `>` at a threshold met only by a float exactly equal to it (the logged conf_frac only)",
    "rc2l/engine/methods/rc2l.py::RC2L.region_terms: st['num_regions'] == 0 → st['num_regions'] != 0": "only decides whether a debug log line is written (the logged empty_teacher flag is computed on the line before)",
    "rc2l/engine/methods/rc2l.py::RC2L.region_terms: 0 → 1": "only decides whether a debug log line is written",
    "rc2l/engine/methods/rc2l.py::RC2L.perturbed_step: 1 → 0": "`max(len(regions), 1)` in the logged regions_per_image: a batch always has at least one image",
    "rc2l/engine/methods/rc2l.py::RC2L.perturbed_step: True → False": "`non_blocking` only changes how a pinned host→CUDA copy is scheduled; the copied values are the same",
}


# ----------------------------------------------------------------------------- mutants
@dataclass
class Mutant:
    file: str
    index: int  # node index in ast.walk order of the parsed file
    kind: str  # operator name
    arg: int  # operator argument (which comparator, ...)
    line: int
    func: str
    desc: str
    status: str = ""  # killed | timeout | survived | error
    seconds: float = 0.0
    killed_by: str = ""

    @property
    def key(self) -> str:
        return f"{self.file}::{self.func}: {self.desc}"


BINOP_SWAP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
}
CMP_SWAP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
NAME_SWAP = {"min": "max", "max": "min"}
ATTR_SWAP = {
    "min": "max",
    "max": "min",
    "amin": "amax",
    "amax": "amin",
    "clamp_min": "clamp_max",
    "clamp_max": "clamp_min",
    "sum": "mean",
}
LOG_NAMES = {"log", "logger", "logging", "warnings"}


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}


def _excluded(tree: ast.AST) -> set[ast.AST]:
    """Nodes no mutant touches: docstrings, strings, annotations, decorators, raise, logging."""
    out: set[ast.AST] = set()

    def drop(n):
        if n is not None:
            out.update(ast.walk(n))

    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = n.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                drop(body[0])
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            drop(n.returns)
            for d in n.decorator_list:
                drop(d)
            for a in [*n.args.posonlyargs, *n.args.args, *n.args.kwonlyargs, n.args.vararg, n.args.kwarg]:
                if a is not None:
                    drop(a.annotation)
        if isinstance(n, ast.ClassDef):
            for d in n.decorator_list:
                drop(d)
        if isinstance(n, ast.AnnAssign):
            drop(n.annotation)
        if isinstance(n, (ast.JoinedStr, ast.Raise, ast.ImportFrom, ast.Import)):
            drop(n)
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call):
            f = n.value.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in LOG_NAMES:
                drop(n)
    return out


def _functions(tree: ast.AST) -> dict[ast.AST, str]:
    """node → qualified name of the innermost function (or class) holding it."""
    owner: dict[ast.AST, str] = {}

    def visit(n, name):
        for c in ast.iter_child_nodes(n):
            if isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                sub = f"{name}.{c.name}" if name else c.name
                owner[c] = sub
                visit(c, sub)
            else:
                owner[c] = name or "<module>"
                visit(c, name)

    visit(tree, "")
    return owner


def _self_rebind(node: ast.Assign) -> bool:
    """``x = f(x)`` / ``a, b = g(a), h(b)`` (deleting it leaves the old value, not a NameError),
    or a write into a subscript/attribute."""
    targets = []
    for t in node.targets:
        targets.extend(t.elts if isinstance(t, ast.Tuple) else [t])
    if all(isinstance(t, (ast.Subscript, ast.Attribute)) for t in targets):
        return True
    names = {t.id for t in targets if isinstance(t, ast.Name)}
    used = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
    return bool(names) and len(names) == len(targets) and names <= used


def sites(tree: ast.AST) -> list[tuple[int, str, int]]:
    """Every (node index, operator, argument) of a parsed file."""
    skip = _excluded(tree)
    out = []
    for i, n in enumerate(ast.walk(tree)):
        if n in skip:
            continue
        if isinstance(n, (ast.BinOp, ast.AugAssign)) and type(n.op) in BINOP_SWAP:
            if isinstance(n, ast.BinOp) and any(
                isinstance(x, ast.Constant) and isinstance(x.value, str) for x in (n.left, n.right)
            ):
                continue
            out.append((i, "binop", 0))
        if isinstance(n, ast.Compare):
            out += [(i, "compare", j) for j, op in enumerate(n.ops) if type(op) in CMP_SWAP]
        if isinstance(n, ast.BoolOp):
            out.append((i, "boolop", 0))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.Not, ast.USub, ast.Invert)):
            out.append((i, "unary", 0))
        if isinstance(n, ast.If) and isinstance(n.test, (ast.Name, ast.Attribute, ast.Call)):
            out.append((i, "negate_if", 0))
        if isinstance(n, ast.Constant) and (
            isinstance(n.value, bool) or (isinstance(n.value, (int, float)) and not isinstance(n.value, bool))
        ):
            out.append((i, "constant", 0))
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Attribute) and f.attr == "detach" and not n.args:
                out.append((i, "drop_detach", 0))
            elif isinstance(f, ast.Name) and f.id in NAME_SWAP:
                out.append((i, "swap_call", 0))
            elif isinstance(f, ast.Attribute) and f.attr in ATTR_SWAP:
                out.append((i, "swap_call", 0))
        if isinstance(n, (ast.Expr, ast.AugAssign)) or (isinstance(n, ast.Assign) and _self_rebind(n)):
            out.append((i, "delete", 0))
        if (
            isinstance(n, ast.Return)
            and n.value is not None
            and not (isinstance(n.value, ast.Constant) and n.value.value is None)
        ):
            out.append((i, "return_none", 0))
    return out


def apply(tree: ast.AST, index: int, kind: str, arg: int) -> tuple[ast.AST, str, int]:
    """Mutate ``tree`` in place at (index, kind, arg). Returns (tree, description, line)."""
    nodes = list(ast.walk(tree))
    n = nodes[index]
    parents = _parents(tree)
    before = _short(n)
    line = getattr(n, "lineno", 0)

    def replace(old, new):
        p = parents[old]
        for fname, value in ast.iter_fields(p):
            if value is old:
                setattr(p, fname, new)
                return
            if isinstance(value, list) and any(v is old for v in value):
                value[next(j for j, v in enumerate(value) if v is old)] = new
                return
        raise RuntimeError("node not found in its parent")

    if kind == "binop":
        n.op = BINOP_SWAP[type(n.op)]()
        after = _short(n)
    elif kind == "compare":
        n.ops[arg] = CMP_SWAP[type(n.ops[arg])]()
        after = _short(n)
    elif kind == "boolop":
        n.op = ast.Or() if isinstance(n.op, ast.And) else ast.And()
        after = _short(n)
    elif kind == "unary":
        replace(n, n.operand)
        after = _short(n.operand)
    elif kind == "negate_if":
        before = f"if {_short(n.test)}:"
        n.test = ast.UnaryOp(ast.Not(), n.test)
        after = f"if {_short(n.test)}:"
    elif kind == "constant":
        v = n.value
        if isinstance(v, bool):
            new = not v
        elif v == 0:
            new = type(v)(1)
        elif v == 1:
            new = type(v)(0)
        else:
            new = v * 2
        n.value = new
        before, after = repr(v), repr(new)
        p = parents.get(n)
        if isinstance(p, ast.UnaryOp) and isinstance(p.op, ast.USub):
            before, after = "-" + before, "-" + after
    elif kind == "drop_detach":
        replace(n, n.func.value)
        after = _short(n.func.value)
    elif kind == "swap_call":
        if isinstance(n.func, ast.Name):
            n.func.id = NAME_SWAP[n.func.id]
        else:
            n.func.attr = ATTR_SWAP[n.func.attr]
        after = _short(n)
    elif kind == "delete":
        replace(n, ast.Pass())
        after = "pass"
    elif kind == "return_none":
        n.value = ast.Constant(None)
        after = "return None"
    else:
        raise ValueError(kind)
    ast.fix_missing_locations(tree)
    return tree, f"{before} → {after}", line


def _short(n: ast.AST, width: int = 90) -> str:
    s = " ".join(ast.unparse(n).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def mutants_of(file: str) -> list[Mutant]:
    src = (REPO / file).read_text()
    tree = ast.parse(src)
    owner = _functions(tree)
    only = ONLY_FUNCTIONS.get(file)
    nodes = list(ast.walk(tree))
    out = []
    for index, kind, arg in sites(tree):
        func = owner.get(nodes[index], "<module>")
        if only is not None and func.split(".")[-1] not in only:
            continue
        _, desc, line = apply(ast.parse(src), index, kind, arg)
        out.append(Mutant(file, index, kind, arg, line, func, desc))
    return out


# ----------------------------------------------------------------------------- running
def module_name(file: str) -> str:
    return file[:-3].replace("/", ".")


class MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one module from a code object compiled from the mutated AST."""

    def __init__(self, name: str, path: Path, code):
        self.name, self.path, self.code = name, path, code

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_file_location(fullname, self.path, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__file__ = str(self.path)
        exec(self.code, module.__dict__)  # noqa: S102 - the mutated module's own code


def child(mutant: Mutant | None, tests: list[str], log_path: Path) -> None:
    """In the forked child: install the mutant, run the tests, exit with pytest's status."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 3
    try:
        if mutant is not None:
            path = REPO / mutant.file
            tree, _, _ = apply(ast.parse(path.read_text()), mutant.index, mutant.kind, mutant.arg)
            compiled = compile(tree, str(path), "exec")
            sys.meta_path.insert(0, MutantFinder(module_name(mutant.file), path, compiled))
        import pytest
        from hypothesis import settings

        settings.register_profile("mutation", database=None, derandomize=True, deadline=None)
        settings.load_profile("mutation")
        code = pytest.main(
            [
                *tests,
                "-x",
                "-q",
                "-p",
                "no:cacheprovider",
                "-o",
                "addopts=",
                "-rfE",
                "--no-header",
                "-W",
                "ignore::DeprecationWarning",
            ]
        )
        code = int(code)
    except BaseException as e:  # noqa: BLE001 - any failure of the mutant is a kill
        print(f"mutation runner: {type(e).__name__}: {e}", flush=True)
        code = 4
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def killed_by(log_path: Path) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0][:160]
    for line in reversed(text.splitlines()):
        if "mutation runner:" in line:
            return line[:160]
    return ""


def run_all(
    jobs_list: list[tuple[Mutant | None, list[str], float]], jobs: int, tmp: Path, progress
) -> list[tuple[int, float, str]]:
    """Fork up to ``jobs`` children at a time. Returns per job (exit code or -9 on timeout,
    seconds, killed-by)."""
    results: list[tuple[int, float, str] | None] = [None] * len(jobs_list)
    running: dict[int, tuple[int, float, float, Path]] = {}  # pid → (job, start, timeout, log)
    nxt = 0
    while nxt < len(jobs_list) or running:
        while nxt < len(jobs_list) and len(running) < jobs:
            mutant, tests, timeout = jobs_list[nxt]
            log = tmp / f"job{nxt}.log"
            pid = os.fork()
            if pid == 0:
                child(mutant, tests, log)
            running[pid] = (nxt, time.time(), timeout, log)
            nxt += 1
        time.sleep(0.05)
        for pid, (job, start, timeout, log) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            elapsed = time.time() - start
            if done == 0 and elapsed > timeout:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                results[job] = (-9, elapsed, "timeout")
            elif done == 0:
                continue
            else:
                rc = os.waitstatus_to_exitcode(status)
                results[job] = (rc, elapsed, killed_by(log) if rc != 0 else "")
            del running[pid]
            progress(job, results[job])
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------- report
def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def group(file: str) -> str:
    return (
        "rc2l/losses/"
        if file.startswith("rc2l/losses/")
        else ("rc2l/engine/train.py (step)" if file.endswith("train.py") else "methods + teacher")
    )


def report(
    mutants: list[Mutant],
    seconds: float,
    jobs: int,
    before: dict | None = None,
    reused: int = 0,
    rerun_of: str | None = None,
    full_seconds: float | None = None,
) -> str:
    rows, groups = [], {}
    files = list(dict.fromkeys(m.file for m in mutants))
    for f in files:
        ms = [m for m in mutants if m.file == f]
        k = sum(m.status in ("killed", "timeout") for m in ms)
        eq = sum(m.status == "survived" and m.key in EQUIVALENT and not EQUIVALENT[m.key].startswith("NOT") for m in ms)
        rows.append((f, len(ms), k, sum(m.status == "timeout" for m in ms), len(ms) - k, eq))
        g = groups.setdefault(group(f), [0, 0, 0, 0, 0])
        g[0] += len(ms)
        g[1] += k
        g[2] += eq
        if before and f in before:
            g[3] += before[f][0]
            g[4] += before[f][1]

    def pct(a, b):
        return f"{100 * a / b:.1f} %" if b else "–"

    full = f" (the full run took {full_seconds / 60:.0f} min)" if full_seconds else ""
    how = (
        f"{len(mutants)} mutants; {len(mutants) - reused} run in {seconds / 60:.1f} min with {jobs} worker(s), the "
        f"other {reused} kept as killed from the earlier full run{full} (`--rerun-survivors`: only tests were "
        "added since, so a kill stays a kill)"
        if reused
        else f"{len(mutants)} mutants, {seconds / 60:.1f} min with {jobs} worker(s) on a shared 2-core machine"
    )
    out = [
        BEGIN,
        "## Mutation score",
        "",
        f"`make mutation` (`tools/mutation.py`) at commit `{git_commit()}`: {how}. A mutant is *killed* when a mapped "
        "test fails (or the mutant times out, 4 × the clean run); the operators, the file → tests map and "
        "what is not mutated are in the script's docstring. *Equivalent*: a survivor explained below "
        "(no test can tell it from the original, or it only changes logging); a survivor marked NOT equivalent "
        "is explained but counts as alive.",
        "",
        "The runner is `ast`-based (why not mutmut or cosmic-ray: the script's docstring): one parent "
        "imports torch, scipy and pytest once, forks a child per mutant, and the child serves the mutated "
        "module through an import hook and runs the mapped in-process test files with `pytest -x`. "
        "Operators, one mutant per site:",
        "",
        "- arithmetic `+`↔`-`, `*`↔`/`, `//`→`/`, `%`→`//`, `**`→`*`, `&`↔`|` (also in `x op= y`);",
        "- comparison `<`→`<=`, `<=`→`<`, `>`→`>=`, `>=`→`>`, `==`↔`!=`, `is`↔`is not`, `in`↔`not in`;",
        "- boolean `and`↔`or`, `not x`→`x`, `if x:`→`if not x:`; unary `-x`→`x`, `~x`→`x`;",
        "- constants `True`↔`False`, `0`→`1`, `1`→`0`, any other number ×2 (`1e-6`→`2e-6`, `0.5`→`1.0`);",
        "- calls: `x.detach()`→`x`, `min`↔`max` (builtins and tensor methods), `clamp_min`↔`clamp_max`, "
        "`x.sum()`→`x.mean()`;",
        "- statements: a call statement, an augmented assignment, or an assignment that rebinds a name from "
        "itself (`a, b = a * w, b * w`) or writes into a subscript/attribute → `pass`; `return x`→`return None`.",
        "",
        "Not mutated: docstrings and strings, annotations, decorators, `raise` statements, logging calls, and "
        "in `rc2l/engine/train.py` everything but `train_step`, `_sync_head_grads`, `_mask_norm` and "
        "`_restore_buffers`.",
        "",
        "| file | mutants | killed | of which timeout | survived | explained equivalent | score (killed / total) | "
        "killed + equivalent |" + (" score before the mutant-killing tests |" if before else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if before else ""),
    ]
    for f, n, k, to, s, eq in rows:
        b = f" {pct(before[f][1], before[f][0])} |" if before and f in before else (" – |" if before else "")
        out.append(f"| `{f}` | {n} | {k} | {to} | {s} | {eq} | {pct(k, n)} | {pct(k + eq, n)} |" + b)
    for g, (n, k, eq, bn, bk) in groups.items():
        b = f" {pct(bk, bn)} |" if before else ""
        out.append(f"| **{g}** | {n} | {k} | | {n - k} | {eq} | **{pct(k, n)}** | {pct(k + eq, n)} |" + b)
    surv = [m for m in mutants if m.status == "survived"]
    out += ["", f"### Surviving mutants ({len(surv)})", ""]
    if not surv:
        out.append("None.")
    for m in surv:
        why = EQUIVALENT.get(m.key, "**not explained**")
        out.append(f"- `{m.file}:{m.line}` `{m.func}`: `{m.desc}` — {why}")
    errs = [m for m in mutants if m.status == "error"]
    if errs:
        out += ["", "Mutants the runner could not run: " + ", ".join(f"`{m.file}:{m.line}`" for m in errs)]
    out.append(END)
    return "\n".join(out) + "\n"


def write_doc(section: str) -> None:
    text = DOC.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


# ----------------------------------------------------------------------------- main
def _before(path: str | None) -> dict | None:
    """file → (mutants, killed) of an earlier run's results."""
    if not path:
        return None
    before: dict[str, tuple[int, int]] = {}
    for d in json.loads(Path(path).read_text())["mutants"]:
        n, k = before.get(d["file"], (0, 0))
        before[d["file"]] = (n + 1, k + (d["status"] in ("killed", "timeout")))
    return before


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", nargs="*", default=None, help="target files (default: all of TARGETS)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", "2")))
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/reliability.md")
    ap.add_argument("--json", default=str(REPO / "runs" / "mutation.json"), help="where the full results go")
    ap.add_argument("--line", type=int, nargs="*", help="only mutants on these lines (with one --files)")
    ap.add_argument(
        "--rerun-survivors",
        metavar="JSON",
        help="results of an earlier run (--json): keep its kills, run only its survivors (and mutants it "
        "did not have) again; sound when only tests were added since",
    )
    ap.add_argument("--before", metavar="JSON", help="an earlier run's results, shown as the 'before' score column")
    ap.add_argument("--report-only", metavar="JSON", help="write the report of a finished run (its --json) again")
    args = ap.parse_args(argv)
    if args.report_only:
        data = json.loads(Path(args.report_only).read_text())
        ms = [Mutant(**{k: v for k, v in d.items() if k != "key"}) for d in data["mutants"]]
        before = _before(args.before)
        section = report(
            ms,
            data["seconds"],
            data.get("jobs", args.jobs),
            before,
            data.get("reused", 0),
            data.get("rerun_of"),
            data.get("full_seconds"),
        )
        print(section)
        if not args.no_doc:
            write_doc(section)
        return 0
    files = args.files or list(TARGETS)
    for f in files:
        if f not in TARGETS:
            ap.error(f"{f} is not a target (known: {', '.join(TARGETS)})")
    mutants = [m for f in files for m in mutants_of(f)]
    if args.line:
        mutants = [m for m in mutants if m.line in set(args.line)]
    if args.list:
        for m in mutants:
            print(f"{m.file}:{m.line} {m.func}: {m.desc}")
        print(f"{len(mutants)} mutants", file=sys.stderr)
        return 0

    previous = {}
    if args.rerun_survivors:
        for d in json.loads(Path(args.rerun_survivors).read_text())["mutants"]:
            previous[(d["file"], d["index"], d["kind"], d["arg"], d["desc"])] = d
    reused = []
    for m in mutants:
        d = previous.get((m.file, m.index, m.kind, m.arg, m.desc))
        if d is not None and d["status"] in ("killed", "timeout"):
            m.status, m.seconds, m.killed_by = d["status"], d["seconds"], d["killed_by"] + " (earlier run)"
            reused.append(m)
    todo = [m for m in mutants if not m.status]
    if previous:
        print(f"{len(reused)} kills kept from {args.rerun_survivors}, {len(todo)} mutants to run", flush=True)
    before = _before(args.before)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # heavy third-party imports once, in the parent; rc2l itself only in the children
    import hypothesis  # noqa: F401
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import scipy.optimize  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    assert not any(k == "rc2l" or k.startswith("rc2l.") for k in sys.modules), "the parent must not import rc2l"

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="rc2l-mutation-") as tmp:
        tmp = Path(tmp)
        # 1) the unmutated tests must pass; their time sets each file's timeout
        base = run_all([(None, TARGETS[f], 900.0) for f in files], args.jobs, tmp, lambda *a: None)
        timeouts = {}
        for f, (rc, sec, why) in zip(files, base):
            if rc != 0:
                print(
                    f"error: the tests of {f} fail without a mutant ({why}); see:\n"
                    + (tmp / f"job{files.index(f)}.log").read_text()[-3000:],
                    file=sys.stderr,
                )
                return 2
            timeouts[f] = max(30.0, 4 * sec)
            print(f"baseline {f}: {sec:.1f} s ({len(TARGETS[f])} test files)", flush=True)
        # 2) one child per mutant
        done = [0]

        def progress(job, res):
            done[0] += 1
            m = todo[job]
            rc, sec, why = res
            m.seconds = round(sec, 2)
            m.status = "timeout" if rc == -9 else ("survived" if rc == 0 else "killed")
            m.killed_by = why
            if m.status == "survived" or done[0] % 25 == 0:
                print(
                    f"[{done[0]}/{len(todo)} {time.time() - t0:.0f}s] {m.status}: {m.file}:{m.line} {m.desc}",
                    flush=True,
                )

        run_all([(m, TARGETS[m.file], timeouts[m.file]) for m in todo], args.jobs, tmp, progress)
    seconds = time.time() - t0
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    full_seconds = None
    if args.rerun_survivors:
        prev = json.loads(Path(args.rerun_survivors).read_text())
        full_seconds = prev.get("full_seconds") or prev["seconds"]
    Path(args.json).write_text(
        json.dumps(
            {
                "seconds": seconds,
                "jobs": args.jobs,
                "reused": len(reused),
                "rerun_of": args.rerun_survivors,
                "full_seconds": full_seconds,
                "mutants": [asdict(m) | {"key": m.key} for m in mutants],
            },
            indent=1,
        )
    )
    section = report(mutants, seconds, args.jobs, before, len(reused), args.rerun_survivors, full_seconds)
    print(section)
    if not args.no_doc:
        write_doc(section)
        print(f"wrote the mutation section of {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
