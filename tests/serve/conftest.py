"""Fixtures for the worker contract over real HTTP: a served home on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_helpers import Stage, serving

from servo.core._registry import Registry
from servo.core.events import Catalog
from servo.engine import Home
from servo.spec import Spec


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home.open(tmp_path / ".servo")


@pytest.fixture
def stage(home: Home, spec: Spec, rules: Registry, catalog: Catalog) -> Stage:
    return Stage(home, spec, rules, catalog)


@pytest.fixture
def api(home: Home) -> Iterator[httpx.Client]:
    """An httpx client talking to `servo serve`'s app over a real loopback socket."""
    from servo.api import create_app

    with serving(create_app(home, lag_wait_seconds=1.0)) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client
