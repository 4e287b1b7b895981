"""`servo serve` and `servo worker` from the command line: clear errors, never a traceback."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from typer.testing import CliRunner

from servo.cli import app
from servo.engine import Home

runner = CliRunner()
EXAMPLE = Path(__file__).parents[2] / "examples" / "pipeline.py"


def _clear_error(result: object, text: str) -> None:
    exit_code, output = result.exit_code, result.output  # type: ignore[attr-defined]
    assert exit_code == 2, output
    assert text in output, output
    assert "Traceback" not in output


def test_serve_on_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", "--home", str(tmp_path / "h"), "--port", str(port)])
    _clear_error(result, f"cannot listen on 127.0.0.1:{port}")


def test_worker_errors_name_the_problem(tmp_path: Path) -> None:
    home = Home.open(tmp_path / "h").root
    missing = runner.invoke(app, ["worker", "--home", str(home), "--pipeline", str(tmp_path / "nope.py")])
    _clear_error(missing, "no such file")
    no_home = runner.invoke(
        app, ["worker", "--home", str(tmp_path / "none"), "--pipeline", str(EXAMPLE), "--wait-for-server", "0.3"]
    )
    _clear_error(no_home, "no Servo home here")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        args = ["worker", "--home", str(home), "--pipeline", str(EXAMPLE), "--server", f"http://127.0.0.1:{port}"]
        unreachable = runner.invoke(app, [*args, "--wait-for-server", "0.3"])
    _clear_error(unreachable, "cannot reach servo serve at")
    bad = runner.invoke(app, ["worker", "--home", str(home), "--pipeline", str(EXAMPLE), "--concurrency", "0"])
    _clear_error(bad, "--concurrency must be at least 1")


def test_a_worker_started_before_serve_waits_for_the_home_to_appear(tmp_path: Path) -> None:
    """`servo worker` and `servo serve` started together (a compose file, a CI job):
    the worker may look before serve has made a new home; within --wait-for-server it
    waits for it, as it waits for the server, instead of exiting."""
    late = tmp_path / "late"
    maker = threading.Timer(0.5, lambda: Home.open(late))
    maker.start()
    try:
        args = ["worker", "--home", str(late), "--pipeline", str(EXAMPLE), "--wait-for-server", "10", "--idle-exit", "0.2"]
        result = runner.invoke(app, args)
    finally:
        maker.join()
    assert result.exit_code == 0, result.output
    assert "stopped after 0 task(s)" in result.output


def test_out_of_range_options_are_clear_errors(tmp_path: Path) -> None:
    """A port past 65535, an unknown log level, a negative lag wait, a lease of no time:
    each used to be a traceback (OverflowError, KeyError, ValueError)."""
    home = str(tmp_path / "h")
    _clear_error(runner.invoke(app, ["serve", "--home", home, "--port", "99999"]), "--port")
    _clear_error(runner.invoke(app, ["serve", "--home", home, "--log-level", "bogus"]), "--log-level")
    _clear_error(runner.invoke(app, ["serve", "--home", home, "--lag-wait", "-1"]), "--lag-wait")
    Home.open(tmp_path / "h")
    for lease in ("0", "-1"):
        args = ["worker", "--home", home, "--pipeline", str(EXAMPLE), "--lease-seconds", lease]
        _clear_error(runner.invoke(app, args), "--lease-seconds")


def test_ctrl_c_while_a_worker_waits_for_its_server_says_so(tmp_path: Path) -> None:
    """Ctrl-C before the worker is under way (waiting for `servo serve`) ended it with
    130 and nothing said; now one line says it stopped before it started."""
    import os
    import signal

    Home.open(tmp_path / "h")
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    args = ["worker", "--home", str(tmp_path / "h"), "--pipeline", str(EXAMPLE), "--server", "http://127.0.0.1:9",
            "--wait-for-server", "20"]
    result = runner.invoke(app, args)
    assert result.exit_code == 130, result.output
    assert "servo worker: interrupted before it started" in result.output
