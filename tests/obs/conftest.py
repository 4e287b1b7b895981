"""The session's observed embedded run (see obs_support)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from obs_support import ObservedRun, run_observed


@pytest.fixture(scope="session")
def observed_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedRun]:
    """`tiny_pipeline` run once in-process with JSON logs at INFO and a spy on the queue."""
    yield run_observed(tmp_path_factory.mktemp("obs") / ".servo")
