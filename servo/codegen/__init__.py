"""Generators: the spec tables compiled into `servo/reference/` and `docs/spec/`.

Pure functions turn a loaded `Spec` into trees (`{relative path: text}`);
`write_tree` puts a tree on disk and `drift` says how the disk differs from the
tables. Output is deterministic: regenerating gives byte-identical files.
"""

from __future__ import annotations

from servo.codegen._docs import docs_tree
from servo.codegen._reference import class_name, reference_tree
from servo.codegen._tree import (
    DOCS_DIR,
    GENERATED_MARKER,
    REFERENCE_DIR,
    drift,
    generated_trees,
    is_generated,
    write_tree,
)

__all__ = [
    "DOCS_DIR",
    "GENERATED_MARKER",
    "REFERENCE_DIR",
    "class_name",
    "docs_tree",
    "drift",
    "generated_trees",
    "is_generated",
    "reference_tree",
    "write_tree",
]
