"""Ctrl-C and SIGTERM during `servo run` stop it where stopping is safe.

A signal used to raise KeyboardInterrupt at whatever bytecode was running: inside
importlib's module locks ("Exception ignored", the signal lost, the run went on and
exited 0), inside a class body being built (a RuntimeError traceback), inside a store
write (an odd error about a temp file, exit 2). Now the engine is asked to stop and
raises at the top of its loop; user code that is loading is still stopped at once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from servo.cli import app
from servo.engine import EmbeddedEngine

LONG = Path(__file__).parents[1] / "data" / "pipelines" / "long_task.py"


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_in_the_middle_of_an_engine_step_lets_the_step_finish_then_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: int, code: int, word: str
) -> None:
    original = EmbeddedEngine._append_intents
    finished: list[bool] = []

    def signalled_mid_append(self: EmbeddedEngine, events: Any) -> None:
        if events and not finished:
            os.kill(os.getpid(), sig)  # delivered at the next bytecode, inside the append
            original(self, events)
            finished.append(True)
            return
        original(self, events)

    monkeypatch.setattr(EmbeddedEngine, "_append_intents", signalled_mid_append)
    result = CliRunner().invoke(app, ["run", str(LONG), "--home", str(tmp_path / ".servo")])
    assert finished == [True]  # the append the signal landed in was not cut short
    assert result.exit_code == code, result.output
    assert f"{word}: run run_" in result.output and "resumes it" in result.output
    assert "Traceback" not in result.output
