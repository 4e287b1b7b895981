"""The public Python API: declaring pipelines, and the HTTP app behind `servo serve`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from servo.api._pipeline import (
    Pipeline,
    PipelineError,
    RetryPolicy,
    TaskContext,
    TaskExited,
    TaskSpec,
)

if TYPE_CHECKING:
    from servo.api._http import create_app

__all__ = ["Pipeline", "PipelineError", "RetryPolicy", "TaskContext", "TaskExited", "TaskSpec", "create_app"]


def __getattr__(name: str) -> Any:
    """Import the HTTP app (FastAPI) only when it is asked for: declaring a pipeline needs none of it."""
    if name == "create_app":
        from servo.api._http import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
