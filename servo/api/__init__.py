"""The public Python API for declaring pipelines."""

from __future__ import annotations

from servo.api._pipeline import Pipeline, PipelineError, RetryPolicy, TaskContext, TaskSpec

__all__ = ["Pipeline", "PipelineError", "RetryPolicy", "TaskContext", "TaskSpec"]
