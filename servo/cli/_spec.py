"""`servo spec check|generate|docs`: validate the tables, and compile them.

`check` is what CI runs: the tables load, every guard/effect/locator they name is
registered, every test an invariant names exists, and the generated trees on disk
match what the tables produce. `generate` and `docs` rewrite those trees.
A mistake in the tables is reported as one line, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from servo._errors import ServoError
from servo.codegen import DOCS_DIR, REFERENCE_DIR, docs_tree, drift, reference_tree, write_tree
from servo.spec import RuleNames, Spec, default_spec_dir, load_spec, project_root

__all__ = ["spec_app"]

spec_app = typer.Typer(
    name="spec",
    help="Check the spec tables, and generate the reference implementation and docs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SpecDirOption = Annotated[
    Path | None,
    typer.Option(
        "--spec-dir",
        help="The spec tables (default: $SERVO_SPEC_DIR, else the checkout's spec/).",
        file_okay=False,
    ),
]
RootOption = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help=(
            "The project checkout holding servo/reference/, docs/spec/ and tests/ "
            "(default: the parent of --spec-dir if it has a pyproject.toml, else "
            "Servo's own checkout when --spec-dir is not given)."
        ),
        file_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a machine-readable result.")]

_REGENERATE = "run `servo spec generate` to regenerate them"


class _Failure(Exception):
    """A one-line reason to exit 1."""


@spec_app.command("check")
def check(
    spec_dir: SpecDirOption = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Validate the tables against the registry and tests; fail on generated-file drift."""
    where, checkout = _locate(spec_dir, root)
    result: dict[str, Any] = {"command": "check", "spec_dir": str(where), "root": _str(checkout)}
    try:
        spec = load_spec(where, _rule_names(), project_root=checkout)
    except (ServoError, _Failure) as exc:
        _fail(result, str(exc), as_json)
    result.update(_summary(spec))
    problems = drift(checkout, spec) if checkout is not None else []
    result["drift"] = problems
    result["drift_checked"] = checkout is not None
    if problems:
        message = f"the generated files differ from the spec tables; {_REGENERATE}"
        _fail(result, message, as_json, details=problems)
    result["ok"] = True
    result["error"] = None
    if as_json:
        _print_json(result)
        return
    tail = (
        "generated files up to date" if checkout is not None else "no checkout: drift not checked"
    )
    typer.echo(f"spec OK: {_summary_text(result)}; {tail}")


@spec_app.command("generate")
def generate(
    spec_dir: SpecDirOption = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write servo/reference/ and docs/spec/ from the tables."""
    _write("generate", spec_dir, root, as_json, reference=True)


@spec_app.command("docs")
def docs(
    spec_dir: SpecDirOption = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write docs/spec/ only."""
    _write("docs", spec_dir, root, as_json, reference=False)


# ------------------------------------------------------------------ helpers --


def _rule_names() -> RuleNames | None:
    """The names registered in servo (guards, effects, locators)."""
    try:
        from servo.core.rules import registry

        return registry().names()
    except ImportError as exc:
        raise _Failure(f"cannot load the rule registry: {exc}") from None


def _write(
    command: str, spec_dir: Path | None, root: Path | None, as_json: bool, *, reference: bool
) -> None:
    where, checkout = _locate(spec_dir, root)
    result: dict[str, Any] = {"command": command, "spec_dir": str(where), "root": _str(checkout)}
    if checkout is None:
        _fail(result, "no project checkout to write into; pass --root", as_json)
    try:
        # Generation reads only the tables; `servo spec check` validates rule names.
        spec = load_spec(where)
        changed: list[str] = []
        if reference:
            changed += write_tree(checkout, reference_tree(spec), REFERENCE_DIR)
        changed += write_tree(checkout, docs_tree(spec), DOCS_DIR)
    except ServoError as exc:
        _fail(result, str(exc), as_json)
    except OSError as exc:
        _fail(result, f"cannot write generated files: {exc}", as_json)
    result.update(_summary(spec))
    result.update(ok=True, error=None, changed=changed)
    if as_json:
        _print_json(result)
        return
    targets = f"{REFERENCE_DIR}/ and {DOCS_DIR}/" if reference else f"{DOCS_DIR}/"
    if changed:
        typer.echo(f"generated {targets}: {len(changed)} file(s) changed")
        for path in changed:
            typer.echo(f"  {path}")
    else:
        typer.echo(f"generated {targets}: already up to date")


def _locate(spec_dir: Path | None, root: Path | None) -> tuple[Path, Path | None]:
    """The spec directory and the project checkout the command works on."""
    where = spec_dir if spec_dir is not None else default_spec_dir()
    if root is not None:
        return where, root
    if spec_dir is not None:
        parent = spec_dir.resolve().parent
        return where, parent if (parent / "pyproject.toml").is_file() else None
    return where, project_root()


def _summary(spec: Spec) -> dict[str, Any]:
    return {
        "machines": len(spec.machines),
        "rows": sum(len(m.transitions) for m in spec.machines.values()),
        "events": len(spec.events),
        "invariants": len(spec.invariants),
        "unverified": [i.id for i in spec.invariants if not i.tests and not i.model_checks],
    }


def _summary_text(result: dict[str, Any]) -> str:
    text = (
        f"{result['machines']} machines, {result['rows']} rows, {result['events']} events, "
        f"{result['invariants']} invariants"
    )
    if result["unverified"]:
        text += f" ({len(result['unverified'])} not yet verified)"
    return text


def _fail(
    result: dict[str, Any], message: str, as_json: bool, *, details: list[str] | None = None
) -> NoReturn:
    """Report `message` (and `details`) and exit 1."""
    result.update(ok=False, error=message)
    if as_json:
        _print_json(result)
    else:
        typer.echo(f"error: {message}", err=True)
        for line in details or []:
            typer.echo(f"  {line}", err=True)
    raise typer.Exit(code=1)


def _print_json(result: dict[str, Any]) -> None:
    typer.echo(json.dumps(result, indent=2, sort_keys=True))


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
