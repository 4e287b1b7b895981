"""The root Typer app; sub-commands live in their own modules and mount here."""

from __future__ import annotations

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="servo",
    help="Servo: data-task orchestration whose state machines are declared as data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    """Entry point of the `servo` script."""
    app()
