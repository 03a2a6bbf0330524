"""The result filter makes a rewritten statement's answers look like the original's."""

from __future__ import annotations

from softguard.sql import classify
from softguard.sql.rewrite import Replacement, apply
from softguard.wire.messages import error_response, message, notice_response, parse_fields
from softguard.wire.results import ResultFilter


def fields_of(raw: bytes) -> dict[str, str]:
    return parse_fields(raw[5:])


def notice(code: str, text: str, **extra: str) -> bytes:
    body = notice_response(text, sqlstate=code)[5:]
    fields = parse_fields(body)
    fields.update(extra)
    return b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"


def test_markers_are_swallowed_and_tag_replaced() -> None:
    f = ResultFilter()
    f.expect_ready(None)
    assert f.process(ord("N"), notice("SGBEG", "0")) == b""
    inner = notice("00000", "drop cascades to view v", W="PL/pgSQL function softguard.drop_op")
    out = f.process(ord("N"), inner)
    assert out is not None and "W" not in fields_of(out)
    assert fields_of(out)["M"] == "drop cascades to view v"
    assert f.process(ord("N"), notice("SGEND", "DROP TABLE")) == b""
    assert f.process(ord("C"), b"CALL\0") == message(b"C", b"DROP TABLE\0")
    assert f.process(ord("Z"), b"I") is None
    assert f.process(ord("C"), b"SELECT 1\0") is None  # later statements untouched


def test_error_inside_rewrite_gets_client_position() -> None:
    f = ResultFilter()
    f.expect_ready(None)
    f.process(ord("N"), notice("SGBEG", "10"))
    body = error_response("42P01", 'table "x" does not exist')[5:]
    fields = parse_fields(body)
    fields.update({"p": "12", "q": "DROP TABLE x", "W": "PL/pgSQL function ..."})
    raw = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
    out = f.process(ord("E"), raw)
    assert out is not None
    got = fields_of(out)
    assert got["P"] == "22" and not {"p", "q", "W"} & got.keys()
    # after the error the statement is over: a later CommandComplete is untouched
    assert f.process(ord("C"), b"CALL\0") is None


def test_positions_after_a_rewritten_statement_map_back() -> None:
    sql = b"DROP TABLE t; SELECT nosuch"
    stmt = classify(sql.decode()).statements[0]
    plan = apply(sql, [Replacement(stmt, "CALL softguard.drop_op('x' || 'much longer text')")])
    f = ResultFilter()
    f.expect_ready(plan)
    new_pos = plan.text.decode().index("nosuch") + 1
    body = error_response("42703", 'column "nosuch" does not exist')[5:]
    fields = parse_fields(body)
    fields["P"] = str(new_pos)
    raw = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
    out = f.process(ord("E"), raw)
    assert out is not None and fields_of(out)["P"] == str(sql.decode().index("nosuch") + 1)


def test_unrelated_messages_pass_untouched() -> None:
    f = ResultFilter()
    f.expect_ready(None)
    assert f.process(ord("N"), notice("00000", "hello")) is None
    assert f.process(ord("E"), error_response("22012", "division by zero")[5:]) is None
    assert f.process(ord("C"), b"SELECT 1\0") is None


def _cascade_notice(message_text: str, detail: str | None) -> bytes:
    extra = {"D": detail} if detail is not None else {}
    return notice("00000", message_text, **extra)


def test_objects_already_in_quarantine_vanish_from_cascade_notices() -> None:
    f = ResultFilter()
    f.expect_ready(None)
    f.process(ord("N"), notice("SGBEG", "0"))
    assert (
        f.process(
            ord("N"), _cascade_notice("drop cascades to view softguard_quarantine.op1_1_v", None)
        )
        == b""
    )
    out = f.process(
        ord("N"),
        _cascade_notice(
            "drop cascades to 2 other objects",
            "drop cascades to view softguard_quarantine.op1_1_v\ndrop cascades to view public.w",
        ),
    )
    assert out is not None
    got = fields_of(out)
    assert got["M"] == "drop cascades to view public.w" and "D" not in got
    out = f.process(
        ord("N"),
        _cascade_notice(
            "drop cascades to 3 other objects",
            "drop cascades to view a\n"
            "drop cascades to view softguard_q3_s.b\n"
            "drop cascades to view c",
        ),
    )
    assert out is not None
    got = fields_of(out)
    assert got["M"] == "drop cascades to 2 other objects"
    assert got["D"] == "drop cascades to view a\ndrop cascades to view c"


def test_quarantined_dependents_vanish_from_error_detail() -> None:
    f = ResultFilter()
    f.expect_ready(None)
    f.process(ord("N"), notice("SGBEG", "0"))
    body = error_response("2BP01", "cannot drop type t because other objects depend on it")[5:]
    fields = parse_fields(body)
    fields["D"] = (
        "column status of table reservations depends on type t\n"
        "view softguard_quarantine.op1_6_v depends on type t"
    )
    raw = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
    out = f.process(ord("E"), raw)
    assert out is not None
    assert fields_of(out)["D"] == "column status of table reservations depends on type t"


def test_softguard_notice_from_a_trigger_loses_its_context() -> None:
    from softguard.wire.results import without_context

    body = notice(
        "00000",
        "softguard: DELETE FROM public.t is reversible as operation 3 until 2026-12-04",
        W="PL/pgSQL function softguard._notice(text,text) line 6 at RAISE",
    )
    out = without_context(ord("N"), body)
    assert out is not None and "W" not in fields_of(out)
    assert without_context(ord("N"), notice("00000", "hello", W="x")) is None


def test_soft_delete_tags_of_a_query_by_position() -> None:
    f = ResultFilter()
    f.expect_ready(None, frozenset({0, 2}))  # DELETE (soft); SELECT; DELETE (soft); UPDATE
    f.expect_ready(None)  # a later Sync: nothing to retag
    assert f.process(ord("C"), b"UPDATE 3\0") == message(b"C", b"DELETE 3\0")
    assert f.process(ord("C"), b"SELECT 1\0") is None
    assert f.process(ord("C"), b"UPDATE 0\0") == message(b"C", b"DELETE 0\0")
    assert f.process(ord("C"), b"UPDATE 7\0") is None  # the client's own UPDATE
    assert f.process(ord("Z"), b"I") is None
    assert f.process(ord("C"), b"UPDATE 1\0") is None  # positions restart per Query


def test_soft_delete_tag_after_sgtag_notice() -> None:
    f = ResultFilter()
    f.expect_ready(None)
    assert f.process(ord("C"), b"UPDATE 2\0") is None
    assert f.process(ord("N"), notice("SGTAG", "DELETE")) == b""
    assert f.process(ord("D"), b"\0\0") is None  # RETURNING rows pass
    assert f.process(ord("C"), b"UPDATE 2\0") == message(b"C", b"DELETE 2\0")
    assert f.process(ord("C"), b"UPDATE 2\0") is None  # only the next one
    f.process(ord("N"), notice("SGTAG", "DELETE"))
    assert f.process(ord("C"), b"SELECT 1\0") is None  # never anything but UPDATE n
    assert f.process(ord("C"), b"UPDATE 1\0") is None
    f.process(ord("N"), notice("SGTAG", "DELETE"))
    f.process(ord("Z"), b"I")  # an error ended the statement: forgotten at ReadyForQuery
    assert f.process(ord("C"), b"UPDATE 1\0") is None
