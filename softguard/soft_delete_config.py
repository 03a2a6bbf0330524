"""The ``[[soft_delete]]`` configuration entries (docs/decisions/0008-soft-delete.md).

An entry names tables (``schema.table``, shell-style patterns allowed in either part)
whose DELETEs softguard turns into the application's own soft delete: an UPDATE setting a
mark column. The first entry that matches a table decides; ``mode = "quarantine"`` keeps a
table on the ordinary path (rows captured, foreign-key cascades fire) even when a later
pattern would match it. A pattern entry only covers the tables that have its mark column;
an exact name whose table lacks it is a configuration error.

Pure (no I/O): checking the entries against a database's catalog is
softguard/ledger/soft_delete_tables.py; the rewrite itself softguard/sql/soft_delete.py.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pglast import ast, parse_sql
from pglast.parser import ParseError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from softguard.sql.soft_delete import ByValue, MarkKind

_DEFAULT_VALUES = {"timestamp": "now()", "boolean": "true"}


class SoftDeleteRule(BaseModel):
    """Tables whose DELETEs become soft deletes (or, mode quarantine, explicitly do not)."""

    model_config = ConfigDict(extra="forbid")

    table: str = Field(description="schema.table; '*' and '?' patterns allowed in each part")
    column: str | None = Field(None, description="the mark column (deleted_at, is_deleted...)")
    mark: MarkKind = Field(
        "timestamp",
        description="timestamp: set to now() (or value) where NULL; boolean: set to true "
        "where not true; expression: set to value where it differs from value",
    )
    value: str | None = Field(
        None, description="SQL expression written into the column (no column references)"
    )
    deleted_by: str | None = Field(None, description="column filled with who deleted")
    deleted_by_value: ByValue = Field("role", description="role (current_user) or application_name")
    mode: Literal["soft", "quarantine"] = "soft"
    database: str = Field("*", description="databases this entry applies to (pattern)")

    @field_validator("table")
    @classmethod
    def _check_table(cls, value: str) -> str:
        schema, dot, table = value.partition(".")
        if not dot or not schema or not table or "." in table:
            raise ValueError(
                f"expected schema.table (patterns allowed, e.g. public.* or *.users), got {value!r}"
            )
        return value

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parsed = parse_sql(f"SELECT ({value})")
        except ParseError as exc:
            raise ValueError(f"value is not a SQL expression: {exc}") from None
        if len(parsed) != 1:
            raise ValueError("value must be one SQL expression")
        if _has_column_reference(parsed[0].stmt):
            raise ValueError("value may not refer to columns: it is computed once per statement")
        return value

    @model_validator(mode="after")
    def _check_mode(self) -> SoftDeleteRule:
        if self.mode == "soft" and not self.column:
            raise ValueError(f"soft_delete entry {self.table!r} needs column = '...'")
        if self.mode == "soft" and self.mark == "expression" and not self.value:
            raise ValueError(f"soft_delete entry {self.table!r}: mark = 'expression' needs value")
        return self

    @property
    def schema_pattern(self) -> str:
        return self.table.partition(".")[0]

    @property
    def table_pattern(self) -> str:
        return self.table.partition(".")[2]

    def applies_to(self, database: str) -> bool:
        return fnmatch.fnmatchcase(database, self.database)

    def matches(self, database: str, schema: str | None, table: str) -> bool:
        """Does this entry name ``schema.table`` of ``database``? ``schema`` None: an
        unqualified name, which may be in any schema."""
        return (
            self.applies_to(database)
            and (schema is None or fnmatch.fnmatchcase(schema, self.schema_pattern))
            and fnmatch.fnmatchcase(table, self.table_pattern)
        )

    @property
    def is_pattern(self) -> bool:
        """True when ``table`` has wildcards: tables it matches that lack the mark column
        are not soft-delete tables (an exact name that lacks it is a mistake)."""
        return any(ch in self.table for ch in "*?[")

    @property
    def mark_value(self) -> str:
        return self.value or _DEFAULT_VALUES.get(self.mark, "NULL")


def _has_column_reference(node: Any) -> bool:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.ColumnRef):
            return True
        if isinstance(item, ast.Node):
            stack.extend(getattr(item, slot, None) for slot in item.__slots__)  # type: ignore[attr-defined]
        elif isinstance(item, tuple | list):
            stack.extend(item)
    return False
