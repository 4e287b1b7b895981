"""Generate `docs/spec/`: an index and one page per machine, for auditors.

A machine page shows its diagram, states, rows, the events it consumes and the
invariants that constrain it. Which invariants: those whose `machines` list names
the machine; an invariant without that list belongs to every machine of its layer
(`L<n>-...` ids are Layer n, `INV-...` Layer 1); platform invariants (`P...`)
constrain storage and compaction, not a machine, and appear on the index only.
"""

from __future__ import annotations

import re

from servo.codegen._reference import class_name
from servo.codegen._tree import markdown_header
from servo.spec import EventSpec, Invariant, Machine, Spec

__all__ = ["docs_tree", "invariant_layer", "machine_invariants", "machine_layer"]

_ROOT = "../.."  # docs/spec/ -> project root, for relative links
_RULE = (
    "Rows are tried in declared order for each (from, event); the first row whose "
    "guards all hold wins. An event that no row accepts changes nothing and is "
    "recorded in `rejected_events` with the reason shown under Events."
)


def docs_tree(spec: Spec) -> dict[str, str]:
    """`{path relative to docs/spec/: page text}`: `index.md` and `{machine}.md`."""
    tree = {"index.md": _index(spec)}
    for name in sorted(spec.machines):
        tree[f"{name}.md"] = _machine_page(spec, spec.machines[name])
    return dict(sorted(tree.items()))


def machine_layer(spec: Spec, machine: Machine) -> int:
    """The layer of the machine's table, else the highest layer of its events."""
    table = spec.tables.get(machine.table)
    if table is not None:
        return table.layer
    return max(spec.events[name].layer for name in machine.events)


def invariant_layer(invariant: Invariant) -> int | None:
    """Layer n for `L<n>-...` ids, 1 for `INV-...`, None for platform invariants."""
    match = re.match(r"^L(\d+)-", invariant.id)
    if match:
        return int(match.group(1))
    if invariant.id.startswith("INV-"):
        return 1
    return None


def machine_invariants(spec: Spec, machine: Machine) -> list[Invariant]:
    """The invariants shown on a machine's page, in declared order."""
    layer = machine_layer(spec, machine)
    return [
        inv
        for inv in spec.invariants
        if machine.name in inv.machines or (not inv.machines and invariant_layer(inv) == layer)
    ]


# ------------------------------------------------------------------- pages --


def _index(spec: Spec) -> str:
    out = [
        markdown_header("machines/*.toml, spec/events.toml and spec/invariants.toml"),
        "# Servo specification",
        "",
        "Servo's state machines are declared as data in `spec/`. This page and one page",
        "per machine are generated from those tables, as is the reference implementation",
        "in `servo/reference/`; CI fails when either drifts from the tables.",
        "",
        "## Machines",
        "",
        _row("machine", "layer", "table", "initial", "states", "rows", "summary"),
        _rule(7),
    ]
    for name in sorted(spec.machines):
        m = spec.machines[name]
        out.append(
            _row(
                f"[`{name}`]({name}.md)",
                str(machine_layer(spec, m)),
                f"`{m.table}`",
                f"`{m.initial}`",
                str(len(m.states)),
                str(len(m.transitions)),
                _first_sentence(m.description),
            )
        )
    out += [
        "",
        "## Events",
        "",
        "Derived events are computed inside the fold and never written to the ledger.",
        "",
        _row("type", "category", "layer", "machine", "also moves", "idempotency key"),
        _rule(6),
    ]
    for name in sorted(spec.events, key=lambda n: (spec.events[n].layer, n)):
        e = spec.events[name]
        out.append(
            _row(
                f"`{name}`",
                e.category,
                str(e.layer),
                f"[`{e.machine}`]({e.machine}.md)",
                ", ".join(f"[`{m}`]({m}.md)" for m in e.also) or "—",
                _idempotency(e),
            )
        )
    out += [
        "",
        "## Invariants",
        "",
        "Each invariant names the tests and model checks that prove it; one that names",
        "none is shown as **not yet verified**.",
        "",
        _row("id", "title", "statement", "applies to", "verified by"),
        _rule(5),
    ]
    for inv in spec.invariants:
        out.append(
            _row(
                f"**{inv.id}**",
                inv.title,
                _flat(inv.statement),
                _scope(spec, inv),
                _proofs(inv),
            )
        )
    return "\n".join(out) + "\n"


def _machine_page(spec: Spec, m: Machine) -> str:
    source = f"spec/machines/{m.name}.toml"
    out = [
        markdown_header(f"machines/{m.name}.toml, spec/events.toml and spec/invariants.toml"),
        f"# Machine `{m.name}`",
        "",
    ]
    if m.description:
        out += [_flat(m.description), ""]
    out += [
        f"- **Layer:** {machine_layer(spec, m)}",
        f"- **Table:** `{m.table}`",
        f"- **Initial state:** `{m.initial}`",
        f"- **Created by:** {', '.join(f'`{e}`' for e in m.created_by) or '—'}",
        f"- **Locator:** `{m.locator}`",
        f"- **Source:** [`{source}`]({_ROOT}/{source})",
        f"- **Reference:** [`{class_name(m.name)}`]({_ROOT}/servo/reference/{m.name}.py)",
        "",
        "[All machines, events and invariants](index.md)",
        "",
        "## Diagram",
        "",
        "```mermaid",
        *_mermaid(m),
        "```",
        "",
        "## States",
        "",
        _row("state", "rank", "terminal", "description"),
        _rule(4),
    ]
    for s in m.states:
        out.append(_row(f"`{s.name}`", str(s.rank), "yes" if s.terminal else "no", s.description))
    out += [
        "",
        "## Transitions",
        "",
        _RULE,
        "",
        _row("#", "from", "event", "guards", "to", "effects"),
        _rule(6),
    ]
    for r in m.transitions:
        out.append(
            _row(
                str(r.index),
                f"`{r.source}`",
                f"`{r.event}`",
                _codes(r.guards),
                f"`{r.target}`",
                _codes(r.effects),
            )
        )
    out += [
        "",
        "## Events",
        "",
        "*primary*: this machine's rows decide whether the event is accepted; *also*: the",
        "event moves this machine too when its primary machine accepts it, and a refusal",
        "here is not a rejection.",
        "",
        _row("event", "category", "layer", "role", "idempotency key", "no matching row"),
        _rule(6),
    ]
    for name in m.events:
        e = spec.events[name]
        roles = []
        if name in m.created_by:
            roles.append("creates")
        roles.append("primary" if e.machine == m.name else "also")
        if e.derived:
            rejected = "ignored (derived)"
        elif e.machine == m.name:
            rejected = f"`{e.unmatched}`"
        else:
            rejected = "not a rejection"
        out.append(
            _row(f"`{name}`", e.category, str(e.layer), ", ".join(roles), _idempotency(e), rejected)
        )
    out += ["", "## Invariants", ""]
    invariants = machine_invariants(spec, m)
    if invariants:
        out += [_row("id", "title", "statement", "verified by"), _rule(4)]
        for inv in invariants:
            out.append(_row(f"**{inv.id}**", inv.title, _flat(inv.statement), _proofs(inv)))
    else:
        out.append("No invariant applies to this machine.")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ pieces --


def _mermaid(m: Machine) -> list[str]:
    lines = ["stateDiagram-v2"]
    if m.created_by:
        lines.append(f"    [*] --> {m.initial} : {', '.join(m.created_by)}")
    else:
        lines.append(f"    [*] --> {m.initial}")
    for r in m.transitions:
        label = r.event + (f" [{', '.join(r.guards)}]" if r.guards else "")
        lines.append(f"    {r.source} --> {r.target} : {label}")
    lines += [f"    {s.name} --> [*]" for s in m.states if s.terminal]
    return lines


def _idempotency(e: EventSpec) -> str:
    if e.derived:
        return "— (derived, never stored)"
    if e.idempotency_key is not None:
        return f"`{e.idempotency_key}`"
    variants = "; ".join(f"{variant}: `{template}`" for variant, template in e.idempotency_keys)
    return f"by `{e.idempotency_key_by}` — {variants}"


def _proofs(inv: Invariant) -> str:
    if not inv.tests and not inv.model_checks:
        return "**not yet verified**"
    parts = [f"test {_link(ref)}" for ref in inv.tests]
    parts += [f"model check {_link(ref)}" for ref in inv.model_checks]
    if not inv.model_checks:
        parts.append("(no model check yet)")
    elif not inv.tests:
        parts.append("(no test yet)")
    return "<br>".join(parts)


def _link(ref: str) -> str:
    path = ref.partition("::")[0]
    return f"[`{ref}`]({_ROOT}/{path})"


def _scope(spec: Spec, inv: Invariant) -> str:
    if inv.machines:
        return ", ".join(f"[`{m}`]({m}.md)" for m in inv.machines)
    layer = invariant_layer(inv)
    if layer is None:
        return "platform"
    machines = [n for n in sorted(spec.machines) if machine_layer(spec, spec.machines[n]) == layer]
    return f"Layer {layer}: " + (", ".join(f"[`{n}`]({n}.md)" for n in machines) or "—")


def _codes(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{n}`" for n in names) if names else "—"


def _first_sentence(text: str) -> str:
    flat = _flat(text)
    match = re.match(r"^(.+?[.!?])(\s|$)", flat)
    return match.group(1) if match else flat


def _flat(text: str) -> str:
    return " ".join(text.split())


def _row(*cells: str) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _rule(count: int) -> str:
    return "|" + "---|" * count


def _cell(text: str) -> str:
    return _flat(text).replace("|", "\\|")
