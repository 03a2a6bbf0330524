"""Bytes-level prefilter: may this SQL text be destructive or opaque?

`may_be_destructive(sql)` answers False only when the text provably cannot classify as
anything but SAFE, so the hot path (pgbench's ``SELECT abalance ... WHERE aid = 123;``)
skips the parser. It is one precompiled regular expression over the raw wire bytes.

Rule: every construct that `classify.classify()` reports as non-SAFE needs at least one of
the words below in its text (keywords cannot be quoted or escaped in SQL; identifiers can
be written ``U&"..."``, so any ``U&`` forces a parse). Adding a non-SAFE rule to the
classifier means adding its keyword here; `tests/sql/test_prefilter.py` checks the pair.

Word boundaries follow PostgreSQL's lexer, not regex ``\\b``: a keyword token cannot be
preceded by a letter, ``_`` or a byte >= 0x80 (they would extend an identifier), and cannot
be followed by a letter, digit, ``_``, ``$`` or a byte >= 0x80. A preceding digit or ``$``
does not block a match (PostgreSQL < 15 lexes ``1delete`` as ``1`` ``delete``): erring that
way only costs a parse. Words inside strings, quoted identifiers and comments also match:
false positives cost a parse, false negatives are forbidden.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "DANGEROUS_FUNCTIONS",
    "LARGE_OBJECT_FUNCTIONS",
    "OPAQUE_FUNCTIONS",
    "REMOTE_FUNCTIONS",
    "may_be_destructive",
]

# Built-in/extension functions that destroy data or state when called (kind DESTRUCTIVE).
DANGEROUS_FUNCTIONS: frozenset[str] = frozenset(
    {
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_drop_replication_slot",
        "pg_replication_origin_drop",
        "pg_promote",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_get_binary_changes",
        "pg_replication_slot_advance",
        "lo_put",
        "lo_unlink",
        "lowrite",
        "lo_truncate",
        "lo_truncate64",
        "lo_open",
        "lo_close",
        "lo_export",
        "dblink_exec",
        "pg_file_unlink",
        "pg_file_write",
        "pg_file_rename",
    }
)
# Large-object functions softguard routes through its wrappers (the policy's "large_object"
# category; docs/decisions/0016-large-objects.md): those that destroy contents, and
# lo_open / lo_close, which decide which descriptors may be written.
LARGE_OBJECT_FUNCTIONS: frozenset[str] = frozenset(
    {"lo_put", "lo_unlink", "lowrite", "lo_truncate", "lo_truncate64", "lo_open", "lo_close"}
)
# Functions that open a connection to another server (kind DESTRUCTIVE; the policy's
# "remote" category, with dblink_exec and the dblink functions that run SQL text there:
# docs/decisions/0013-remote-writes.md).
REMOTE_FUNCTIONS: frozenset[str] = frozenset({"dblink_connect", "dblink_connect_u"})
# Functions that execute SQL text given as an argument (kind OPAQUE: softguard cannot see it).
OPAQUE_FUNCTIONS: frozenset[str] = frozenset(
    {
        "dblink",
        "dblink_send_query",
        "dblink_open",
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
    }
)

# Statement keywords whose presence is necessary for a non-SAFE classification.
_KEYWORDS = (
    "drop",  # DROP ..., ALTER TABLE DROP COLUMN/CONSTRAINT, ALTER TYPE DROP ATTRIBUTE
    "truncate",
    "delete",
    "update",  # UPDATE, MERGE ... UPDATE, INSERT ... ON CONFLICT DO UPDATE
    "merge",
    "alter",  # ALTER ... TYPE, ALTER SYSTEM
    "reassign",
    "copy",  # COPY ... PROGRAM / TO 'file'
    "do",
    "call",
    "execute",
    "prepare",
    "explain",
    "load",
    "create",  # CREATE RULE/TRIGGER/FUNCTION/VIEW/POLICY with destructive bodies, SERVER
    "import",  # IMPORT FOREIGN SCHEMA
)

# Function names, matched as prefixes (lo_truncate64, dblink_*, query_to_xml*, ...).
_FUNCTION_STEMS = (
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_drop_replication_slot",
    "pg_replication_origin_drop",
    "pg_promote",
    "pg_logical_slot_get_",
    "pg_replication_slot_advance",
    "pg_file_",
    "lo_unlink",
    "lo_truncate",
    "lo_export",
    "lo_put",
    "lo_open",
    "lo_close",
    "lowrite",
    "dblink",
    "query_to_xml",
    "ts_stat",
    "ts_rewrite",
)

_IDENT_BEFORE = rb"(?<![a-z_\x80-\xff])"
_IDENT_AFTER = rb"(?![a-z0-9_$\x80-\xff])"


def _trie(words: Iterable[str]) -> bytes:
    """One regex alternation factored by common prefixes: ``c(?:all|opy|reate)``.
    A plain alternation of 30 words costs ~3x more per byte scanned in `re`."""
    tree: dict[str, Any] = {}
    for word in words:
        node = tree
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(c) + emit(sub) for c, sub in sorted(node.items()) if c]
        if not branches:
            return ""
        if len(branches) == 1 and "" not in node:
            return branches[0]
        group = "(?:" + "|".join(branches) + ")"
        return group + "?" if "" in node else group

    return emit(tree).encode()


_FIRST = sorted({w[0] for w in (*_KEYWORDS, *_FUNCTION_STEMS, "u")})
_PATTERN = re.compile(
    # The leading lookahead lets `re` skip bytes that cannot start a word quickly.
    rb"(?=["
    + "".join(_FIRST).encode()
    + rb"])"
    + _IDENT_BEFORE
    + rb"(?:"
    + _trie(_KEYWORDS)
    + _IDENT_AFTER
    + rb"|"
    + _trie(_FUNCTION_STEMS)
    + rb"|u&)",
    re.IGNORECASE,
)

_search = _PATTERN.search


def may_be_destructive(sql: bytes) -> bool:
    """False only when *sql* provably cannot classify as DESTRUCTIVE or OPAQUE.

    Pure and cheap (one regex scan of the bytes). Unparseable text that contains none of
    the words is also reported False: nothing in it can destroy data, and the server will
    reject it with its own error.
    """
    return _search(sql) is not None
