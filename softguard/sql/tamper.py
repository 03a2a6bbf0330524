"""Does a SQL text reach into softguard's own schemas?

softguard keeps its ledger in schema ``softguard`` and quarantined objects in
``softguard_quarantine`` and ``softguard_q<op>_<name>`` schemas of the protected database.
No statement through the proxy may read, change, drop or grant on them, nor point
``search_path`` or a ``regclass`` literal at them, nor name softguard's capture triggers or
event triggers (PostgreSQL fires no event trigger for ALTER / DROP EVENT TRIGGER: this is
the one check that sees those). The check is deliberately conservative: any identifier
or string literal naming one of those counts.
Text that does not contain the letters ``softguard`` at all, nor an escape that could
spell them (``U&`` identifiers and strings, ``E'\\...'`` strings), is cleared in ~0.2 µs.
"""

from __future__ import annotations

import re
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from softguard.contract import TAG_MARKER
from softguard.sql.tree import load_json

# A value names softguard's schemas when "softguard" is followed by the end, a schema
# separator or quoting/list punctuation, or by "_quarantine" / "_q<digits>_"; it names its
# triggers and event triggers (zz_softguard_capture_*, softguard_capture_*,
# softguard_mode_guard) by "_capture_" and "_mode_".
_TAG_MARKER = TAG_MARKER.strip("/*").encode()
_NAMES_SOFTGUARD = re.compile(
    r"softguard(?:_quarantine|_q\d+_|_capture_|_mode_|\s*(?:[.,\"]|$))", re.IGNORECASE
)


def mentions_softguard(sql: bytes) -> bool:
    """True if *sql* names softguard's ledger or quarantine schemas anywhere."""
    lowered = sql.lower()
    if not may_name_softguard(lowered):
        return False
    if _TAG_MARKER in lowered or lowered.lstrip().startswith(b"/*softguard:"):
        return True  # only softguard may mark a statement's tag or its client text
    text = sql.decode("utf-8", "replace")
    try:
        tree = load_json(parse_sql_json(text))
    except (ParseError, ValueError, RecursionError):
        # Unparseable text that spells the name: the server cannot run it either, but
        # refusing is the safe answer.
        return _NAMES_SOFTGUARD.search(text) is not None
    return _any_value_matches(tree)


def may_name_softguard(lowered: bytes) -> bool:
    """Could the lower-cased text name softguard: spell it, or spell a name without its
    letters (U&"\\0073..." identifiers or strings, E'\\163...' strings, where only the
    parsed values tell)? False decides ``mentions_softguard`` without parsing, for every
    text that differs from this one only in its digits."""
    # find, not ``in``: ``bytes in bytes`` formats and discards a TypeError each time.
    return (
        lowered.find(b"softguard") >= 0
        or lowered.find(b"u&") >= 0
        or (lowered.find(b"\\") >= 0 and lowered.find(b"e'") >= 0)
    )


def _any_value_matches(tree: Any) -> bool:
    stack = [tree]
    search = _NAMES_SOFTGUARD.search
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and search(node) is not None:
            return True
    return False
