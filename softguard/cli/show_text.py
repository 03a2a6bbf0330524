"""``softguard show OP`` for a person: what the operation did, what it keeps, what undo
will do. Pure: an Operation in, lines out (``--json`` prints the raw record instead).

What always holds: no raw JSON plans; only the objects the statement named and those
CASCADE took along are listed; the rest that went with them (toast tables, row types,
indexes, foreign-key and capture triggers) are counted, never listed.
"""

from __future__ import annotations

import textwrap
from datetime import datetime
from typing import Any

from softguard.ledger.operations import Operation

_WIDTH = 80
_LABEL = 11  # width of the label column

_ROW_EVENTS = {
    "delete": ("removed rows kept", "put back {rows} row(s) into {table}"),
    "truncate": ("removed rows kept", "put back {rows} row(s) into {table}"),
    "update": ("old values kept", "write back the old values of {rows} row(s) of {table}"),
    "soft_delete": ("rows marked deleted", "unmark {rows} row(s) of {table}"),
}


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return "-" if value is None else str(value)


def _shown(op: Operation, obj: dict[str, Any]) -> bool:
    """An object a person cares about: named by the statement, or taken along by CASCADE
    (a dependent view, a foreign key on a live table; what the ledger calls cascaded)."""
    if obj.get("original"):
        return True
    return f"{obj.get('type', '?')} {obj.get('identity', '?')}" in op.cascaded()


def _object_text(obj: dict[str, Any]) -> str:
    text = f"{obj.get('type', '?')} {obj.get('identity', '?')}"
    if obj.get("held_by") is not None:
        return f"{text} (already held by operation {obj['held_by']})"
    if not obj.get("original"):
        text += " (by cascade)"
    if obj.get("type") == "table column" and obj.get("event") is None:
        text += " (restored as the last column)"  # README, known limits
    return text


def _step_text(step: dict[str, Any]) -> str | None:
    """What undo does for one restore step, in words (None: an internal rename)."""
    kind = step.get("step")
    name = step.get("name", "?")
    table = step.get("table_name", "?")
    if kind == "move":
        keyword = str(step.get("keyword", "object")).lower()
        return (
            f"move {keyword} {step.get('schema', '?')}.{name} back "
            f"(kept as softguard_quarantine.{step.get('qname', '?')})"
        )
    if kind == "rename_schema":
        return f"give schema {name} its name back (kept as {step.get('qname', '?')})"
    if kind == "rename":
        return None
    if kind == "definition":
        return (
            f"put back the previous definition of {step.get('identity', '?')} (--details prints it)"
        )
    if kind == "sequence":
        return f"put back the previous value and settings of {step.get('identity', '?')}"
    if kind == "owner":
        keyword = str(step.get("keyword", "object")).lower()
        grants = len(step.get("acl") or [])
        ident = step.get("identity", "?")
        if step.get("owner_changed") is False:
            return f"give back {grants} privilege(s) on {keyword} {ident}"
        what = f" with {grants} privilege(s)" if grants else ""
        return f"give {keyword} {ident} back to role {step.get('owner', '?')}{what}"
    words = {
        "drop_constraint": f"re-add constraint {name} on {table}",
        "drop_trigger": f"re-create trigger {name} on {table}",
        "drop_default": f"restore the default of {table}.{name}",
        "drop_policy": f"re-create policy {name} on {table}",
        "drop_rule": f"re-create rule {name} on {table}",
        "drop_index": f"re-create index {name} on {table}",
        "detach_partition": f"re-attach partition {step.get('child', '?')} to "
        f"{step.get('parent_name', '?')}",
        "no_inherit": f"make {step.get('child', '?')} inherit from {step.get('parent_name', '?')}"
        " again",
        "seq_owned_by": f"make a sequence owned by {step.get('table', '?')} again",
        # a kept server's user mapping (decision 0043): its options are in the ledger's
        # softguard.kept_mappings, which show cannot read (nor print)
        "user_mapping": f"make the user mapping for {step.get('user', '?')} on server "
        f"{step.get('server_name', '?')} again (options kept, not shown)",
        # the columns a type's CASCADE took (decision 0029)
        "drop_columns": "re-add column(s) "
        f"{', '.join(str(c) for c in step.get('columns') or [])} with their values"
        " (as the last columns)",
        # a view that read one of those columns: kept, its query set aside until then
        "view_query": f"put back the query of view {step.get('view', '?')} (after its columns)",
        # memberships in publications that what went had (decision 0038)
        "publications": "add "
        + ", ".join(
            dict.fromkeys(  # each once, however many publications it was in
                [f"table {m.get('table_name', '?')}" for m in step.get("tables") or []]
                + [f"schema {m.get('schema_name', '?')}" for m in step.get("schemas") or []]
            )
        )
        + " back to their publications (with column lists and row filters)",
        # a materialized view that read one: dropped, re-made (decision 0035)
        "remake_matview": f"re-make materialized view {step.get('name', '?')}"
        + (" and refresh it" if step.get("populated") else " (not populated)")
        + " (after its columns)",
    }
    return words.get(str(kind), f"{kind} step")


def _row_counts(op: Operation) -> tuple[dict[str, Any], bool]:
    counts = op.columns.get("row_counts")
    if not isinstance(counts, dict):
        return {}, False
    tables = counts.get("tables")
    return (dict(tables) if isinstance(tables, dict) else {}), bool(counts.get("estimate"))


def _rows_text(op: Operation) -> str:
    tables, estimate = _row_counts(op)
    if not tables:
        return "-"
    parts = [
        f"{table}: {'not counted' if n is None else ('~' if estimate else '') + str(n)}"
        for table, n in tables.items()
    ]
    return ", ".join(parts)


def _undo_actions(op: Operation) -> list[str]:
    actions: list[str] = []
    restore = op.columns.get("restore")
    steps = restore if isinstance(restore, list) else []
    renames = 0
    for step in reversed(steps):  # undo runs the plan last to first
        text = _step_text(step) if isinstance(step, dict) else None
        if text is None:
            renames += 1
        else:
            actions.append(text)
    if renames:
        actions.append(f"give {renames} dependent object(s) (indexes, sequences) their names back")
    tables, _ = _row_counts(op)
    for obj in op.objects:
        event = obj.get("event")
        if event in _ROW_EVENTS and obj.get("held_by") is None:
            identity = str(obj.get("identity", "?"))
            rows = obj.get("rows", tables.get(identity, "?"))
            actions.append(_ROW_EVENTS[str(event)][1].format(rows=rows, table=identity))
    return actions


def _field(label: str, text: str) -> list[str]:
    return textwrap.wrap(
        text,
        width=_WIDTH,
        initial_indent=f"  {label:<{_LABEL}}",
        subsequent_indent=" " * (_LABEL + 2),
        break_on_hyphens=False,
    ) or [f"  {label}"]


def _state_text(op: Operation) -> str:
    c = op.columns
    if op.is_undo_record:
        return f"the undo of operation {op.undo_of}"
    if op.state == "active":
        return f"active: undo possible until {_when(op.expires_at)}"
    if op.state == "undone":
        by = c.get("undone_by")
        return f"undone at {_when(op.undone_at)}" + (f" by {by}" if by else "")
    if op.state == "purged":
        by = c.get("purged_by")
        return f"purged at {_when(c.get('purged_at'))}" + (f" by {by}" if by else "")
    return str(op.state)


def show_lines(op: Operation) -> list[str]:
    """The person's view of one operation (at most 80 columns, but for long names)."""
    c = op.columns
    who = op.db_role
    extra = [x for x in (op.application_name, op.client_addr) if x]
    if c.get("current_role") and c.get("current_role") != op.db_role:
        extra.insert(0, f"as {c['current_role']}")
    if extra:
        who += f" ({', '.join(extra)})"
    lines = [f"operation {op.id}: {op.kind}"]
    lines += _field("state", _state_text(op))
    lines += _field("when", f"{_when(op.created_at)} by {who}")
    lines += _field("statement", " ".join(op.statement.split()))
    shown = [o for o in op.objects if _shown(op, o)]
    lines += _field("objects", "; ".join(_object_text(o) for o in shown) or "-")
    lines += _field("rows", _rows_text(op))
    hidden = len(op.objects) - len(shown)
    kept = [
        f"{o.get('identity')} as {o['quarantined_as']}"
        for o in shown
        if o.get("quarantined_as") and o.get("held_by") is None
    ]
    if kept or hidden:
        what = "; ".join(kept) or "the objects above"
        if hidden:
            what += f", with {hidden} object(s) of their own (indexes, constraints, triggers)"
        lines += _field("kept", what)
    if op.reversible:
        actions = _undo_actions(op)
        if actions:
            lines.append("  undo will")
            for action in actions:
                lines += textwrap.wrap(
                    action,
                    width=_WIDTH,
                    initial_indent="    - ",
                    subsequent_indent="      ",
                    break_on_hyphens=False,
                )
        lines.append(f"  undo it with: softguard undo {op.id}  (--dry-run to try it first)")
    lines.append("  (--json for the whole record)")
    return lines
