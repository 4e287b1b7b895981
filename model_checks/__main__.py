"""`python -m model_checks`: explore a profile, run the mutants, or check contracts.

    python -m model_checks --profile ci            # exit 1 on any violation
    python -m model_checks --profile deep --jobs 2
    python -m model_checks --mutants               # exit 0 only if every mutant is caught
    python -m model_checks --crosshair             # CrossHair on the PEP 316 contracts
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from model_checks._config import PROFILES, McConfig, profile
from model_checks._explore import Result, explore

MAX_COUNTEREXAMPLE = 15
CROSSHAIR_TARGETS = (
    "servo/core/ids.py",
    "servo/core/controllers/_timers.py",
)


def _explore_one(cfg: McConfig) -> Result:
    return explore(cfg)


def _mutant_one(name: str) -> tuple[str, Result]:
    from model_checks._mutants import MUTANTS, applied

    mutant = next(m for m in MUTANTS if m.name == name)
    with applied(mutant) as rules:
        return name, explore(mutant.config, rules=rules, max_states=mutant.max_states)


def _pool_map(fn: object, items: list[object], jobs: int) -> Iterator[object]:
    if jobs <= 1 or len(items) <= 1:
        yield from map(fn, items)  # type: ignore[call-overload]
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs) as pool:
        yield from pool.imap_unordered(fn, items)  # type: ignore[arg-type]


def _write(result: Result, out: Path) -> Path:
    name = result.config.name.replace(":", "-")
    return result.write_ledger(out / f"{name}.jsonl")


def run_profile(name: str, jobs: int, out: Path, only: Iterable[str] = (), max_states: int | None = None) -> int:
    """Explore every configuration of a profile; the exit status (1 on a violation)."""
    configs = [c for c in profile(name) if not only or c.name in only]
    if max_states is not None:
        configs = [c.with_(max_states=max_states) for c in configs]
    start = time.perf_counter()
    print(f"profile {name}: {len(configs)} configurations on {jobs} process(es)", flush=True)
    total = failures = 0
    results: list[Result] = []
    for result in _pool_map(_explore_one, configs, jobs):  # type: ignore[arg-type]
        assert isinstance(result, Result)
        results.append(result)
        total += result.states
        print(result.report(), flush=True)
        if result.violation is not None:
            failures += 1
            print(f"  ledger: {_write(result, out)}  (replay: servo fold FILE --json)", flush=True)
    wall = time.perf_counter() - start
    print(f"total: {total:,} distinct states in {wall:.1f}s wall ({total / wall:,.0f} states/s over {jobs} "
          f"process(es)); {failures} violation(s)")
    return 1 if failures else 0


def run_mutants(jobs: int, out: Path) -> int:
    """Every mutant must be caught with a counterexample of at most 15 actions."""
    from model_checks._mutants import MUTANTS

    start = time.perf_counter()
    by_name = {m.name: m for m in MUTANTS}
    bad = 0
    for item in _pool_map(_mutant_one, list(by_name), jobs):
        name, result = item  # type: ignore[misc]
        mutant = by_name[name]
        if result.violation is None:
            bad += 1
            print(f"{name} -> SURVIVED ({result.states:,} states explored)", flush=True)
            continue
        invariant = result.violation[0]
        note = "" if invariant == mutant.expect else f" (expected {mutant.expect})"
        too_long = result.length > MAX_COUNTEREXAMPLE
        bad += too_long
        flag = f"  TOO LONG (> {MAX_COUNTEREXAMPLE})" if too_long else ""
        print(f"{name} -> {invariant}{note} -> {result.length} actions{flag}", flush=True)
        if os.environ.get("MODEL_CHECKS_VERBOSE"):
            print(result.report())
        _write(result, out)
    print(f"{len(MUTANTS) - bad}/{len(MUTANTS)} mutants caught in {time.perf_counter() - start:.1f}s; "
          f"counterexample ledgers in {out}/")
    return 1 if bad else 0


def run_crosshair(timeout: int) -> int:
    """CrossHair over the PEP 316 contracts (exit status of crosshair)."""
    exe = Path(sys.executable).with_name("crosshair")
    cmd = [str(exe) if exe.exists() else "crosshair", "check", "--per_condition_timeout", str(timeout), *CROSSHAIR_TARGETS]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m model_checks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--profile", choices=sorted(PROFILES), help="explore a profile's configurations (default ci)")
    mode.add_argument("--mutants", action="store_true", help="plant every mutant; each must be caught")
    mode.add_argument("--crosshair", action="store_true", help="check the PEP 316 contracts with CrossHair")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--config", action="append", default=[], help="only this configuration (repeatable)")
    parser.add_argument("--max-states", type=int, default=None, help="override each configuration's state cap")
    parser.add_argument("--out", type=Path, default=Path("model-checks-out"), help="where counterexample ledgers go")
    parser.add_argument("--per-condition-timeout", type=int, default=5, help="CrossHair seconds per condition")
    args = parser.parse_args(argv)
    if args.crosshair:
        return run_crosshair(args.per_condition_timeout)
    if args.mutants:
        return run_mutants(args.jobs, args.out)
    return run_profile(args.profile or "ci", args.jobs, args.out, args.config, args.max_states)


if __name__ == "__main__":
    sys.exit(main())
