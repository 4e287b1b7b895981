"""Generated trees on disk: write them, and tell how the disk drifted from the tables.

A tree is `{relative path: file text}` for one subdirectory of the project
(`servo/reference/`, `docs/spec/`). Every generated file carries `GENERATED_MARKER`
in its first line, which is how `write_tree` knows a stale file is its own to remove
and a hand-written one is not.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from servo.spec import Spec

__all__ = [
    "DOCS_DIR",
    "GENERATED_MARKER",
    "REFERENCE_DIR",
    "drift",
    "generated_trees",
    "is_generated",
    "markdown_header",
    "python_header",
    "write_tree",
]

REFERENCE_DIR = "servo/reference"
DOCS_DIR = "docs/spec"
GENERATED_MARKER = "GENERATED from spec/"
_COMMAND = "`servo spec generate`"


def python_header(sources: str) -> str:
    """The first lines of a generated Python file built from `sources`."""
    return (
        f"# {GENERATED_MARKER}{sources} by {_COMMAND}. Do not edit:\n"
        "# change the spec tables and regenerate (a test fails when this file drifts).\n"
    )


def markdown_header(sources: str) -> str:
    """The first line of a generated Markdown page built from `sources`."""
    return (
        f"<!-- {GENERATED_MARKER}{sources} by {_COMMAND}. Do not edit: "
        "change the spec tables and regenerate. -->\n"
    )


def is_generated(path: Path) -> bool:
    """Whether the file at `path` says, in its first line, that it is generated."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            first = handle.readline()
    except OSError:
        return False
    return GENERATED_MARKER in first


def generated_trees(spec: Spec) -> dict[str, dict[str, str]]:
    """Every tree the tables produce, by project subdirectory."""
    from servo.codegen._docs import docs_tree
    from servo.codegen._reference import reference_tree

    return {REFERENCE_DIR: reference_tree(spec), DOCS_DIR: docs_tree(spec)}


def write_tree(root: Path, tree: Mapping[str, str], subdir: str) -> list[str]:
    """Make `root/subdir` hold exactly `tree`; return the paths written or removed.

    A file whose bytes already match is left alone (so regeneration touches
    nothing); a file the tree no longer produces is removed only when it carries
    the generated header, so hand-written files are never deleted (`drift` still
    reports them).
    """
    base = Path(root) / subdir
    changed: list[str] = []
    for rel in sorted(tree):
        path = base / rel
        data = tree[rel].encode("utf-8")
        if path.is_file() and path.read_bytes() == data:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)
        changed.append(f"{subdir}/{rel}")
    for rel, path in _files(base):
        if rel not in tree and is_generated(path):
            path.unlink()
            changed.append(f"{subdir}/{rel}")
    return sorted(changed)


def drift(project_root: Path, spec: Spec) -> list[str]:
    """How the generated trees on disk differ from what the tables produce.

    One line per file: missing, changed (with the first differing line) or extra.
    An empty list means the checkout is up to date.
    """
    problems: list[str] = []
    for subdir, tree in generated_trees(spec).items():
        base = Path(project_root) / subdir
        on_disk = dict(_files(base))
        for rel in sorted(set(tree) | set(on_disk)):
            shown = f"{subdir}/{rel}"
            if rel not in on_disk:
                problems.append(f"{shown}: missing")
            elif rel not in tree:
                if is_generated(on_disk[rel]):
                    problems.append(f"{shown}: stale (the spec tables no longer produce it)")
                else:
                    problems.append(
                        f"{shown}: not generated from the spec tables "
                        f"(remove it or move it out of {subdir}/)"
                    )
            else:
                found = on_disk[rel].read_bytes().decode("utf-8", errors="replace")
                if found != tree[rel]:
                    problems.append(f"{shown}: {_first_difference(tree[rel], found)}")
    return problems


def _files(base: Path) -> Iterator[tuple[str, Path]]:
    """Files under `base` as (posix relative path, path), skipping bytecode caches."""
    if not base.is_dir():
        return
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if "__pycache__" in rel.parts or path.suffix == ".pyc" or not path.is_file():
            continue
        if path.name.endswith(".partial"):
            continue
        yield rel.as_posix(), path


def _first_difference(expected: str, found: str) -> str:
    want = expected.splitlines(keepends=True)
    have = found.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(a=want, b=have, autojunk=False)
    for tag, i1, _i2, j1, _j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        line = j1 + 1 if j1 < len(have) else len(have)
        if tag == "insert":
            return f"changed (line {line}: unexpected {have[j1].rstrip()!r})"
        if i1 < len(want):
            return f"changed (line {line}: expected {want[i1].rstrip()!r})"
        return f"changed (line {line}: unexpected {have[j1].rstrip()!r})"
    return "changed (line endings or encoding)"
