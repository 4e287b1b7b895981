"""The embedded home: one secret however many processes open a fresh home at once."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from servo.engine import Home, HomeError

READ_SECRET = "import sys; from servo.engine import Home; print(Home.open(sys.argv[1]).secret.decode())"


def test_openers_racing_on_a_fresh_home_share_one_secret(tmp_path: Path) -> None:
    """`servo serve` and `servo run` started together on a new home: each creates a
    candidate secret; exactly one wins and every opener reads that one, whole (it
    used to be an O_EXCL create then a write: a loser crashed on FileExistsError or
    read the winner's empty file)."""
    for attempt in range(30):
        home = Home.open(tmp_path / f"home{attempt}")
        barrier = threading.Barrier(8)
        seen: list[bytes | BaseException] = []

        def open_secret(
            home: Home = home, barrier: threading.Barrier = barrier, seen: list[bytes | BaseException] = seen
        ) -> None:
            barrier.wait()
            try:
                seen.append(home.secret)
            except BaseException as exc:
                seen.append(exc)

        threads = [threading.Thread(target=open_secret) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(seen)) == 1 and seen[0] == home.secret, seen
        assert [p.name for p in home.root.iterdir() if p.name.startswith(".secret")] == []  # no temp files left


def test_processes_opening_a_fresh_home_share_one_secret(tmp_path: Path) -> None:
    root = tmp_path / "home"
    procs = [subprocess.Popen([sys.executable, "-c", READ_SECRET, str(root)], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    secrets = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert secrets == {Home.open(root).secret.decode()}


def test_the_secret_file_is_private(tmp_path: Path) -> None:
    home = Home.open(tmp_path / "home")
    assert len(home.secret) == 64
    assert (home.root / "secret").stat().st_mode & 0o777 == 0o600


def test_processes_opening_a_fresh_home_at_once_all_get_it(tmp_path: Path) -> None:
    """Two `servo run` on a new home both create it: the loser of the mkdir must not fail."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    for round_ in range(20):
        root = tmp_path / f"h{round_}" / ".servo"
        barrier = threading.Barrier(6)

        def open_home(_: int, root: Path = root, barrier: threading.Barrier = barrier) -> Path:
            barrier.wait()
            return Home.open(root).root

        with ThreadPoolExecutor(max_workers=6) as pool:
            assert set(pool.map(open_home, range(6))) == {root.resolve()}


def test_a_home_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(HomeError, match="cannot create a Servo home"):
        Home.open(blocker / "home")  # a parent that is a file
    result = subprocess.run(
        [sys.executable, "-m", "servo.cli", "run", "examples/pipeline.py", "--home", str(blocker / "home")],
        capture_output=True, text=True, timeout=60, check=False, cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 2 and "cannot create a Servo home" in result.stderr
    assert "Traceback" not in result.stderr
