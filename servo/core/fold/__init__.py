"""The Layer 1 fold: events -> tables, driven by the spec rows (pure, no I/O)."""

from __future__ import annotations

from servo.core.fold import _rules as _rules  # registers guards, effects, locators
from servo.core.fold._projection import LAYER1_TABLES, Projection, fold, fold_file, fold_lines

__all__ = ["LAYER1_TABLES", "Projection", "fold", "fold_file", "fold_lines"]
