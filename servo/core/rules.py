"""The full registry: importing this module registers every guard, effect and locator."""

from __future__ import annotations

import servo.core.fold as _layer1  # noqa: F401  (registers Layer 1 rules)
from servo.core._registry import REGISTRY, Registry
from servo.spec import Spec, default_spec_dir, load_spec

__all__ = ["default_spec", "registry"]


def registry() -> Registry:
    """The registry with Layer 1 and Layer 2 rules loaded."""
    import servo.core.layer2  # noqa: F401  (registers Layer 2 rules)

    return REGISTRY


def default_spec() -> Spec:
    """The project's spec tables, validated against the full registry (cached)."""
    global _SPEC
    if _SPEC is None:
        _SPEC = load_spec(default_spec_dir(), registry().names())
    return _SPEC


_SPEC: Spec | None = None
