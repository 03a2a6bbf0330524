"""Soft-delete rewrite: a DELETE on a table configured for soft delete becomes an UPDATE
that marks the rows the DELETE would remove (docs/decisions/0008-soft-delete.md).

Pure: parses the client's statement text with pglast, rewrites every DELETE that runs
(top level, inside a data-modifying WITH, under PREPARE, EXPLAIN ANALYZE or COPY, and the
DELETE actions of a MERGE) whose target is a soft-delete table of ``SoftDeleteTables``,
and deparses the result.

For ``DELETE FROM t [USING u] [WHERE w] [RETURNING r]`` the UPDATE is::

    UPDATE t SET col = (SELECT softguard.soft_delete_begin('t'::regclass, 'schema.t',
                                                          '{...}'::jsonb, (value)::type)),
                 [by_col = current_user,]
      [FROM u] WHERE (w) AND <t.col is unmarked> [RETURNING r']

- ``soft_delete_begin`` (migration 0005) runs once per statement, as an InitPlan, and only
  when a row is marked. It checks that ``t`` resolved to the configured table (the proxy
  cannot see the session's search_path), and tells the table's capture trigger, through a
  transaction-local setting, that this statement is a soft delete and which mark it wrote.
- Only unmarked rows are marked, so rows already soft-deleted are not counted again.
- ``r'`` is ``r`` with the mark columns read from the row as it was before the statement
  (a sub-select by key sees the statement's snapshot): what the DELETE would return.
- The command tag becomes ``UPDATE n``; the proxy turns it back into ``DELETE n``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from pglast.printers import dml as _dml
from pglast.stream import RawStream

from softguard.contract import TAG_MARKER as TAG_MARKER  # re-exported for the proxy
from softguard.sql.classify import quote_ident
from softguard.sql.rewrite import jsonb_text


# pglast prints PostgreSQL 17's "WHEN NOT MATCHED BY TARGET", which 15 and 16 reject; the
# plain "WHEN NOT MATCHED" means the same on every version.
def _not_matched(self: object, node: object, output: RawStream) -> None:
    output.write("NOT MATCHED")


_dml.MergeMatchKindPrinter.MERGE_WHEN_NOT_MATCHED_BY_TARGET = _not_matched  # type: ignore[method-assign]

MarkKind = Literal["timestamp", "boolean", "expression"]
ByValue = Literal["role", "application_name"]

# TAG_MARKER (softguard.contract) is put in front of a rewritten extended-protocol
# statement whose command tag must be turned back into DELETE.

REWRITE_CACHE_SIZE = 1024

# soft_delete_begin's last argument as the rewrite sends it: the proxy puts the session's
# mark of the final text in its place (softguard.proxy.statements, decision 0031), or
# leaves it (no key, or a text whose claim cannot be bound). As long as the mark (64
# characters), so no position moves; the database's softguard._sd_filler() is the same.
CALL_MARK_FILLER = "softguard:unmarked:" + "0" * 45

_BY_SQL = {"role": "current_user", "application_name": "current_setting('application_name')"}


@dataclass(frozen=True, slots=True)
class SoftTarget:
    """One soft-delete table as found in the catalog (ledger/soft_delete_tables.py)."""

    schema: str
    table: str
    column: str
    column_type: str  # format_type() of the column
    mark: MarkKind
    value: str  # SQL expression of the mark: now(), true, or the configured one
    key: tuple[str, ...]  # primary key (or unique NOT NULL key) columns
    by_column: str | None = None
    by_value: ByValue = "role"
    problem: str | None = None  # set: misconfigured, DELETEs on it are refused

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"

    def unmarked(self, ref: str) -> str:
        """SQL: the row ``ref`` is not soft-deleted."""
        col = f"{ref}.{quote_ident(self.column)}"
        if self.mark == "boolean":
            return f"{col} IS NOT TRUE"
        if self.mark == "expression":
            return f"{col} IS DISTINCT FROM ({self.value})::{self.column_type}"
        return f"{col} IS NULL"


@dataclass
class SoftDeleteTables:
    """The soft-delete tables of one database, by name."""

    tables: dict[tuple[str, str], SoftTarget] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_name: dict[str, list[SoftTarget]] = {}
        for target in self.tables.values():
            self._by_name.setdefault(target.table, []).append(target)
        self._lowered = frozenset(name.lower() for name in self._by_name)
        # statement text -> its rewrite (or the Misconfigured it raises): a refresh of the
        # catalog makes a new SoftDeleteTables, so entries never outlive what they used
        self._rewrites: OrderedDict[str, SoftRewrite | Misconfigured | None] = OrderedDict()

    def rewrite(self, text: str) -> SoftRewrite | None:
        """``rewrite(text, self)``, remembered for the last REWRITE_CACHE_SIZE texts."""
        cache = self._rewrites
        if text in cache:
            cache.move_to_end(text)
            done = cache[text]
        else:
            try:
                done = rewrite(text, self)
            except Misconfigured as exc:
                done = exc
            cache[text] = done
            if len(cache) > REWRITE_CACHE_SIZE:
                cache.popitem(last=False)
        if isinstance(done, Misconfigured):
            raise done
        return done

    def __bool__(self) -> bool:
        return bool(self.tables)

    @property
    def lowered_names(self) -> frozenset[str]:
        """The tables' names in lower case: a statement naming none is not rewritten."""
        return self._lowered

    def lookup(self, schema: str | None, name: str) -> SoftTarget | None:
        """The target a relation name refers to. Unqualified: the only table of that name,
        else the one in ``public`` (checked again by the server when the statement runs)."""
        if schema is not None:
            return self.tables.get((schema, name))
        found = self._by_name.get(name)
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        return next((t for t in found if t.schema == "public"), found[0])


@dataclass(frozen=True, slots=True)
class SoftRewrite:
    """What became of one statement."""

    text: str  # the statement to send instead
    retag: bool  # its own command tag must read DELETE (top-level DELETE, or EXECUTE of one)
    targets: tuple[SoftTarget, ...]  # the soft-delete tables it marks rows of
    prepared: str | None = None  # PREPARE name: EXECUTE of it must be retagged too
    # the claim soft_delete_begin makes, as jsonb prints it (rewrite.jsonb_text of its info
    # plus "table"), when the statement can be bound to the session's key (decision 0031):
    # a top-level DELETE of one soft-delete table whose WITH modifies nothing. None: the
    # capture trigger checks the claim against the transition tables instead.
    claim: str | None = None
    # A PREPARE of a DELETE (its name is ``prepared``): a protocol Bind of that name runs
    # the marking UPDATE, whose tag must read DELETE as the EXECUTE's does.
    prepared_delete: bool = False


class Misconfigured(Exception):
    """A DELETE reaches a soft-delete table whose configuration does not fit the catalog."""

    def __init__(self, target: SoftTarget) -> None:
        super().__init__(
            f"softguard: DELETE on {target.qualified} is refused: its soft-delete configuration "
            f"does not fit the table: {target.problem}"
        )
        self.target = target


def parse_statement(text: str) -> ast.Node | None:
    try:
        parsed = parse_sql(text)
    except ParseError:
        return None
    if len(parsed) != 1 or parsed[0].stmt is None:
        return None
    node: ast.Node = parsed[0].stmt
    return node


def rewrite(
    text: str,
    tables: SoftDeleteTables,
    *,
    prepared: frozenset[str] = frozenset(),
) -> SoftRewrite | None:
    """The soft-delete form of one statement, or None when it deletes from no soft-delete
    table (and is not ``EXECUTE`` of a prepared one, named in ``prepared``).

    Raises Misconfigured when a target's configuration does not fit its table."""
    node = parse_statement(text)
    if node is None:
        return None
    if isinstance(node, ast.ExecuteStmt):
        if node.name in prepared:
            return SoftRewrite(text, True, ())
        return None
    # Read before the rewrite replaces the prepared DELETE by its UPDATE.
    prepares_delete = isinstance(node, ast.PrepareStmt) and isinstance(node.query, ast.DeleteStmt)
    targets: list[SoftTarget] = []
    root = _Root(node)
    for holder, attr, delete in _running_deletes(root):
        target = tables.lookup(delete.relation.schemaname, str(delete.relation.relname))
        if target is None:
            continue
        if isinstance(delete, ast.MergeStmt):
            if not _deleting_clauses(delete):
                continue
            if target.problem is not None:
                raise Misconfigured(target)
            _merge_marks(delete, target, text)
        else:
            if target.problem is not None:
                raise Misconfigured(target)
            setattr(holder, attr, _as_update(delete, target, text))
        targets.append(target)
    if not targets:
        return None
    new_text = str(RawStream()(root.stmt))
    retag = isinstance(root.stmt, ast.UpdateStmt)
    prepared_as = (
        node.name if isinstance(node, ast.PrepareStmt) and node.query is not None else None
    )
    claim = None
    if retag and isinstance(node, ast.DeleteStmt) and len(targets) == 1 and _reads_only(root):
        claim = jsonb_text({**_info(targets[0], text, "DELETE"), "table": targets[0].qualified})
    return SoftRewrite(
        new_text,
        retag and isinstance(node, ast.DeleteStmt),
        tuple(targets),
        prepared_as,
        claim,
        prepared_as is not None and prepares_delete,
    )


def _reads_only(root: _Root) -> bool:
    """The rewritten statement's WITH holds no INSERT / UPDATE / DELETE / MERGE: its rows
    would share the marking UPDATE's transition tables (PostgreSQL allows data-modifying
    WITH only at the top level, so only that one needs looking at)."""
    with_clause = getattr(root.stmt, "withClause", None)
    if with_clause is None:
        return True
    return all(
        isinstance(cte, ast.CommonTableExpr) and isinstance(cte.ctequery, ast.SelectStmt)
        for cte in with_clause.ctes or ()
    )


def prepared_name(text: str) -> tuple[str, str] | None:
    """("prepare", name) / ("deallocate", name or "") / ("discard", "") for statements that
    change the session's SQL-level prepared statements; else None."""
    node = parse_statement(text)
    if isinstance(node, ast.PrepareStmt):
        return "prepare", str(node.name)
    if isinstance(node, ast.DeallocateStmt):
        return "deallocate", "" if node.isall or node.name is None else str(node.name)
    if isinstance(node, ast.DiscardStmt) and node.target == enums.DiscardMode.DISCARD_ALL:
        return "discard", ""
    return None


def prepared_changes(text: str) -> list[tuple[str, str]] | None:
    """``prepared_name``'s answer for each statement of ``text`` that has one, in order;
    None when the text does not parse."""
    try:
        parsed = parse_sql(text)
    except ParseError:
        return None
    changes: list[tuple[str, str]] = []
    for raw in parsed:
        node = raw.stmt
        if isinstance(node, ast.PrepareStmt):
            changes.append(("prepare", str(node.name)))
        elif isinstance(node, ast.DeallocateStmt):
            name = "" if node.isall or node.name is None else str(node.name)
            changes.append(("deallocate", name))
        elif isinstance(node, ast.DiscardStmt) and node.target == enums.DiscardMode.DISCARD_ALL:
            changes.append(("discard", ""))
    return changes


# -- finding the DELETEs that run ---------------------------------------------------------


class _Root:
    """A holder for the top-level statement, so it can be replaced like a nested one."""

    __slots__ = ("stmt",)

    def __init__(self, stmt: Any) -> None:
        self.stmt = stmt


def _running_deletes(root: _Root) -> Iterator[tuple[Any, str, Any]]:
    """(holder, attribute, DeleteStmt or MergeStmt) for each DELETE (or MERGE, which may
    delete) the statement executes. DELETEs in definitions (rules, functions) do not run
    now and are left alone."""
    stack: list[tuple[Any, str]] = [(root, "stmt")]
    found: list[tuple[Any, str, Any]] = []
    bound = 1000
    while stack and bound > 0:
        bound -= 1
        holder, attr = stack.pop()
        stmt = getattr(holder, attr)
        if isinstance(stmt, ast.PrepareStmt | ast.CopyStmt):
            if stmt.query is not None:
                stack.append((stmt, "query"))
            continue
        if isinstance(stmt, ast.ExplainStmt):
            if _explain_analyze(stmt):
                stack.append((stmt, "query"))
            continue
        with_clause = getattr(stmt, "withClause", None)
        if (
            isinstance(
                stmt,
                ast.SelectStmt | ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt,
            )
            and with_clause is not None
        ):
            for cte in with_clause.ctes or ():
                if isinstance(cte, ast.CommonTableExpr):
                    stack.append((cte, "ctequery"))
        if isinstance(stmt, ast.DeleteStmt | ast.MergeStmt):
            found.append((holder, attr, stmt))
    yield from found


def _explain_analyze(stmt: ast.ExplainStmt) -> bool:
    for opt in stmt.options or ():
        if isinstance(opt, ast.DefElem) and opt.defname == "analyze":
            arg = opt.arg
            if arg is None:
                return True
            value = getattr(arg, "sval", None) or getattr(arg, "boolval", None)
            if isinstance(arg, ast.Boolean):
                return bool(arg.boolval)
            if isinstance(arg, ast.Integer):
                return arg.ival != 0
            return str(value).lower() in ("true", "on", "1", "yes")
    return False


# -- building the UPDATE -----------------------------------------------------------------


def _expr(sql: str) -> Any:
    stmt: Any = parse_sql("SELECT " + sql)[0].stmt
    return stmt.targetList[0].val


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _relation_text(rel: Any) -> str:
    parts = [p for p in (rel.catalogname, rel.schemaname, rel.relname) if p]
    return ".".join(quote_ident(p) for p in parts)


def _ref(rel: Any) -> str:
    """How the statement refers to its target: its alias, else its name."""
    return quote_ident(rel.alias.aliasname) if rel.alias is not None else quote_ident(rel.relname)


def _marking(
    rel: Any, target: SoftTarget, statement: str, *, current_of: bool = False, verb: str = "DELETE"
) -> tuple[Any, ...]:
    """The SET list that marks a row: the mark (through soft_delete_begin) and deleted_by."""
    ref = _ref(rel)
    info = orjson.dumps(_info(target, statement, verb)).decode()
    begin = (
        f"(SELECT softguard.soft_delete_begin({_literal(_relation_text(rel))}::regclass, "
        f"{_literal(target.qualified)}, {_literal(info)}::jsonb, "
        f"({target.value})::{target.column_type}, {_literal(CALL_MARK_FILLER)}))"
    )
    col = quote_ident(target.column)
    if current_of:
        # WHERE CURRENT OF takes no other condition: a marked row keeps its mark.
        mark = f"CASE WHEN {target.unmarked(ref)} THEN {begin} ELSE {ref}.{col} END"
    else:
        mark = begin
    targets = [ast.ResTarget(name=target.column, val=_expr(mark))]
    if target.by_column is not None:
        by = _BY_SQL[target.by_value]
        if current_of:
            old_by = f"{ref}.{quote_ident(target.by_column)}"
            by = f"CASE WHEN {target.unmarked(ref)} THEN {by} ELSE {old_by} END"
        targets.append(ast.ResTarget(name=target.by_column, val=_expr(by)))
    return tuple(targets)


def _info(target: SoftTarget, statement: str, verb: str) -> dict[str, object]:
    """soft_delete_begin's info argument: what the capture trigger needs to know."""
    return {
        "column": target.column,
        "mark_kind": target.mark,
        "by_column": target.by_column,
        "by_value": target.by_value,
        "statement": statement,
        "verb": verb,
        # a MERGE's own UPDATE actions change rows too: capture only those marked
        "verify": verb == "MERGE",
    }


def _as_update(delete: Any, target: SoftTarget, statement: str) -> ast.UpdateStmt:
    rel: Any = delete.relation
    ref = _ref(rel)
    current_of = isinstance(delete.whereClause, ast.CurrentOfExpr)
    targets = _marking(rel, target, statement, current_of=current_of)
    where = delete.whereClause
    if not current_of:
        unmarked = _expr(target.unmarked(ref))
        if where is None:
            where = unmarked
        else:
            where = ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=(where, unmarked))
    returning = delete.returningClause
    if returning is not None and returning.exprs:
        returning = ast.ReturningClause(
            options=returning.options,
            exprs=tuple(
                out
                for e in returning.exprs
                for out in _old_values(e, target, rel, ref, delete.usingClause)
            ),
        )
    return ast.UpdateStmt(
        relation=rel,
        targetList=targets,
        whereClause=where,
        fromClause=delete.usingClause,
        returningClause=returning,
        withClause=delete.withClause,
    )


def _deleting_clauses(merge: Any) -> bool:
    return any(
        isinstance(c, ast.MergeWhenClause) and c.commandType == enums.CmdType.CMD_DELETE
        for c in merge.mergeWhenClauses or ()
    )


def _merge_marks(merge: Any, target: SoftTarget, statement: str) -> None:
    """``WHEN [NOT] MATCHED [AND c] THEN DELETE`` becomes ``WHEN ... [AND c] AND <unmarked>
    THEN UPDATE SET <mark>`` followed by ``WHEN ... [AND c] THEN DO NOTHING``: a row marked
    already is left alone (and not counted), not passed on to later clauses."""
    rel = merge.relation
    clauses: list[Any] = []
    for clause in merge.mergeWhenClauses or ():
        if not (
            isinstance(clause, ast.MergeWhenClause)
            and clause.commandType == enums.CmdType.CMD_DELETE
        ):
            clauses.append(clause)
            continue
        unmarked = _expr(target.unmarked(_ref(rel)))
        condition = clause.condition
        marks = ast.MergeWhenClause(
            matchKind=clause.matchKind,
            commandType=enums.CmdType.CMD_UPDATE,
            override=clause.override,
            condition=unmarked
            if condition is None
            else ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=(condition, unmarked)),
            targetList=_marking(rel, target, statement, verb="MERGE"),
        )
        clauses.append(marks)
        clauses.append(
            ast.MergeWhenClause(
                matchKind=clause.matchKind,
                commandType=enums.CmdType.CMD_NOTHING,
                override=clause.override,
                condition=condition,
            )
        )
    merge.mergeWhenClauses = tuple(clauses)


# -- RETURNING: the values the DELETE would have returned ---------------------------------


def _refnames(using: Any) -> list[str] | None:
    """The names ``u.*`` can use for each USING item, in order (None: one has none, e.g.
    a join without an alias, whose ``*`` merges columns)."""
    names = []
    for item in using or ():
        alias = getattr(item, "alias", None)
        if alias is not None:
            names.append(quote_ident(alias.aliasname))
        elif isinstance(item, ast.RangeVar):
            names.append(quote_ident(str(item.relname)))
        else:
            return None
    return names


def _old_values(
    res: Any, target: SoftTarget, rel: Any, ref: str, using: Any
) -> tuple[ast.ResTarget, ...]:
    """``res`` with references to the marked columns of the target (and stars covering
    them) read from the row as it was before the statement. A bare ``*`` over USING
    tables becomes the old target row's columns, then each USING item's."""
    marked = {target.column} | ({target.by_column} if target.by_column else set())
    refnames = {rel.alias.aliasname} if rel.alias is not None else {rel.relname}
    old_row = (
        f"(SELECT sg_o FROM {_relation_text(rel)} sg_o WHERE "
        + " AND ".join(f"sg_o.{quote_ident(k)} = {ref}.{quote_ident(k)}" for k in target.key)
        + ")"
    )

    def old_column(name: str) -> str:
        return (
            f"(SELECT sg_o.{quote_ident(name)} FROM {_relation_text(rel)} sg_o WHERE "
            + " AND ".join(f"sg_o.{quote_ident(k)} = {ref}.{quote_ident(k)}" for k in target.key)
            + ")"
        )

    def replace(node: Any) -> Any:
        if isinstance(node, ast.ColumnRef):
            fields = node.fields or ()
            names = [getattr(f, "sval", None) for f in fields]
            star = bool(fields) and isinstance(fields[-1], ast.A_Star)
            if star and len(fields) == 1:
                if using:
                    return node  # a join without alias in USING: left as is (decision 0008)
                return _expr(f"({old_row}).*")
            if star and names[-2] in refnames:
                return _expr(f"({old_row}).*")
            if not star and names[-1] in marked:
                if len(names) == 1 or names[-2] in refnames:
                    return _expr(old_column(str(names[-1])))
            if not star and len(names) == 1 and names[0] in refnames:
                return _expr(old_row)  # the whole row, as it was
            return node
        if isinstance(node, ast.SubLink | ast.SelectStmt):
            return node  # names inside a sub-select may mean its own tables
        if isinstance(node, ast.Node):
            for slot in node.__slots__:  # type: ignore[attr-defined]
                value = getattr(node, slot, None)
                if isinstance(value, ast.Node):
                    setattr(node, slot, replace(value))
                elif isinstance(value, tuple) and any(isinstance(v, ast.Node) for v in value):
                    setattr(node, slot, tuple(replace(v) for v in value))
            return node
        return node

    val = res.val
    fields: tuple[Any, ...] = tuple(getattr(val, "fields", None) or ())
    if (
        using
        and isinstance(val, ast.ColumnRef)
        and len(fields) == 1
        and isinstance(fields[0], ast.A_Star)
    ):
        names = _refnames(using)
        if names is not None:
            return (
                ast.ResTarget(val=_expr(f"({old_row}).*")),
                *(ast.ResTarget(val=_expr(f"{n}.*")) for n in names),
            )
    name = res.name
    if isinstance(val, ast.ColumnRef) and name is None:
        fields = val.fields or ()
        last = getattr(fields[-1], "sval", None) if fields else None
        if last in marked or (len(fields) == 1 and last in refnames):
            name = last  # keep the output column's name
    new_val = replace(val)
    return (ast.ResTarget(name=name, val=new_val, indirection=res.indirection),)
