"""Where the spec tables live: a source checkout, or the copy inside a wheel."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_spec_dir", "project_root"]

_PACKAGE = Path(__file__).resolve().parents[1]


def project_root() -> Path | None:
    """The source checkout holding `spec/` and `tests/`, or None for a wheel install."""
    candidate = _PACKAGE.parent
    if (candidate / "spec" / "events.toml").is_file() and (candidate / "pyproject.toml").is_file():
        return candidate
    return None


def default_spec_dir() -> Path:
    """`$SERVO_SPEC_DIR`, else the checkout's `spec/`, else the wheel's bundled copy."""
    override = os.environ.get("SERVO_SPEC_DIR")
    if override:
        return Path(override)
    root = project_root()
    if root is not None:
        return root / "spec"
    return _PACKAGE / "_spec"
