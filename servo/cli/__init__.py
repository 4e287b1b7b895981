"""The `servo` command line (Typer). Thin: it parses, calls the library, prints."""

from __future__ import annotations

from servo.cli._app import app, main

__all__ = ["app", "main"]
