"""Loading libpg_query's JSON parse trees: fast (orjson, with the garbage collector paused)
and total (an iterative parser for trees deeper than orjson's nesting limit)."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

__all__ = ["collector_paused", "load_json"]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a tree is loaded and walked: the tree and
    the classification hold no cycles, and with millions of fresh containers each young
    collection rescans more of them (a 4 MB IN list took 4 s to load with it, 0.4 s
    without)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_JSON_TOKEN = re.compile(
    rb'[ \t\r\n]*(?:("(?:[^"\\]|\\.)*")|([-+0-9.eE]+)|(true|false|null)|([{}\[\]:,]))', re.S
)
_CONSTANTS: dict[bytes, Any] = {b"true": True, b"false": False, b"null": None}


def load_json(data: str | bytes) -> Any:
    """orjson.loads, falling back to an iterative parser for trees deeper than orjson's
    1024-level limit (``SELECT 1+1+...`` with a few hundred terms already gets there)."""
    try:
        result = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "recursion" not in str(exc) and "depth" not in str(exc):
            raise
        result = _loads_iterative(data.encode() if isinstance(data, str) else data)
    return result


class _Object:
    """An open JSON object while parsing: the dict and the key awaiting its value."""

    __slots__ = ("key", "obj")

    def __init__(self) -> None:
        self.obj: dict[str, Any] = {}
        self.key: str | None = None


def _loads_iterative(data: bytes) -> Any:
    stack: list[_Object | list[Any]] = []
    root: Any = None
    pos, end = 0, len(data)
    while pos < end:
        match = _JSON_TOKEN.match(data, pos)
        if match is None:
            if data[pos:].strip():
                raise ValueError(f"bad JSON at byte {pos}")
            break
        pos = match.end()
        string, number, constant, punct = match.groups()
        opened: _Object | list[Any] | None = None
        if punct is not None:
            if punct in (b",", b":"):
                continue
            if punct in (b"]", b"}"):
                stack.pop()
                continue
            opened = _Object() if punct == b"{" else []
            value: Any = opened.obj if isinstance(opened, _Object) else opened
        elif string is not None:
            value = orjson.loads(string) if b"\\" in string else string[1:-1].decode()
        elif number is not None:
            value = orjson.loads(number)
        else:
            value = _CONSTANTS[constant]
        if not stack:
            root = value
        else:
            top = stack[-1]
            if isinstance(top, list):
                top.append(value)
            elif top.key is None:
                top.key = value
            else:
                top.obj[top.key] = value
                top.key = None
        if opened is not None:
            stack.append(opened)
    return root
