"""Shared fixtures: the project's spec (validated against the full registry)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from servo.core._registry import Registry
from servo.core.events import Catalog
from servo.core.rules import default_spec, registry
from servo.spec import Spec

pytest_plugins = ["backends", "queue_fixtures"]

settings.register_profile(
    "ci",
    max_examples=60,
    stateful_step_count=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "deep",
    max_examples=2000,
    stateful_step_count=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def spec() -> Spec:
    """The project's spec tables."""
    return default_spec()


@pytest.fixture(scope="session")
def rules() -> Registry:
    """The registry with every guard, effect and locator."""
    return registry()


@pytest.fixture(scope="session")
def catalog(spec: Spec) -> Catalog:
    """The compiled event catalog."""
    return Catalog(spec)
