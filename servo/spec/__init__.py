"""The spec tables (`spec/`) loaded into typed, validated records."""

from __future__ import annotations

from servo.spec._load import REJECT_REASONS, load_spec
from servo.spec._model import (
    Column,
    EventSpec,
    FieldSpec,
    Invariant,
    Machine,
    RecordSpec,
    RuleNames,
    Spec,
    State,
    TableSpec,
    Transition,
)
from servo.spec._paths import default_spec_dir, project_root

__all__ = [
    "REJECT_REASONS",
    "Column",
    "EventSpec",
    "FieldSpec",
    "Invariant",
    "Machine",
    "RecordSpec",
    "RuleNames",
    "Spec",
    "State",
    "TableSpec",
    "Transition",
    "default_spec_dir",
    "load_spec",
    "project_root",
]
