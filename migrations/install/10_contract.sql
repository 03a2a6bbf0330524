-- What the proxy and the database share (the Python side: softguard/contract.py; checked
-- against the installed code by tests/ledger/test_contract.py):
-- * private notice codes: SGBEG (first notice of a rewritten statement, message = the
--   proxy's offset), SGEND (last, message = the command tag), SGTAG (a soft delete sent
--   through the extended protocol: its UPDATE n is a DELETE n); the probe's error SGPRB
--   never leaves the database;
-- * the operation NOTICE 'softguard: <action> <targets> is reversible as operation <id>
--   until <YYYY-MM-DD>', formatted here only;
-- * the ctx the proxy passes to drop_op / truncate_op / alter_op: {"client_addr",
--   "retention_seconds", "offset", "action", ...};
-- * errors other code reacts to carry a SQLSTATE and a DETAIL of 'key=value' pairs: undo
--   blocked by a later operation is 55006 with DETAIL 'blocked_by=<op>';
-- * the undo result row, softguard.undo_step (70_undo.sql);
-- * settings: softguard.capture, softguard.retention, softguard.client_addr (session
--   defaults the proxy sets), softguard.cur_op, softguard.truncate_op, softguard.probe,
--   softguard.sd_<oid> (transaction-local, the database's own), softguard.session_proof
--   (the session's, written by register_session, 05_sessions.sql). softguard's own
--   maintenance is marked in the table softguard.maintenance, not by a setting.

-- Raise a NOTICE the client sees whatever its client_min_messages (changing the setting
-- only when it would hide it: two setting changes per captured statement otherwise).
CREATE FUNCTION softguard._notice(msg text, code text DEFAULT '00000') RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    saved text := pg_catalog.current_setting('client_min_messages');
BEGIN
    IF saved IN ('notice', 'log', 'debug1', 'debug2', 'debug3', 'debug4', 'debug5') THEN
        RAISE NOTICE USING ERRCODE = code, MESSAGE = msg;
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('client_min_messages', 'notice', true);
    RAISE NOTICE USING ERRCODE = code, MESSAGE = msg;
    PERFORM pg_catalog.set_config('client_min_messages', saved, true);
END $$;
GRANT EXECUTE ON FUNCTION softguard._notice(text, text) TO PUBLIC;

-- The operation NOTICE: the one place its wording is written (softguard/contract.py parses
-- it). No SET, all qualified: called from the capture trigger, it stays inlinable.
CREATE FUNCTION softguard._op_notice(action text, targets text, op bigint, expires timestamptz)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.format('softguard: %s %s is reversible as operation %s until %s',
                             action, targets, op, pg_catalog.to_char(expires, 'YYYY-MM-DD'))
$$;
REVOKE ALL ON FUNCTION softguard._op_notice(text, text, bigint, timestamptz) FROM PUBLIC;

-- The NOTICE of an operation this transaction opened (alter_op).
-- PUBLIC (alter_op runs as the client): it writes nothing and reads only an active
-- operation of the caller's own transaction; any other id gives NULL.
CREATE FUNCTION softguard._op_message(op bigint, action text, targets text) RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT softguard._op_notice(action, targets, op, expires_at)
      FROM softguard.operations
     WHERE id = op AND txid = pg_current_xact_id() AND state = 'active'
$$;
REVOKE ALL ON FUNCTION softguard._op_message(bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._op_message(bigint, text, text) TO PUBLIC;

-- The role the client acts as (inside SECURITY DEFINER functions current_user is the owner).
CREATE FUNCTION softguard._client_role() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN COALESCE(pg_catalog.current_setting('role', true), 'none') = 'none'
                THEN session_user::text ELSE pg_catalog.current_setting('role', true) END
$$;
REVOKE ALL ON FUNCTION softguard._client_role() FROM PUBLIC;

-- The ledger row of a TRUNCATE or ALTER TABLE operation, opened before the statement runs
-- (ctx: the proxy's, above).
-- PUBLIC (truncate_op and alter_op run as the client), so callable directly: what it opens
-- must be filled by the work itself, or the transaction does not commit (00_schema.sql's
-- verify_operation: a TRUNCATE that copied no table, an ALTER TABLE whose columns are not
-- gone or whose type change did not complete, an operation with no objects: 42501).
CREATE FUNCTION softguard._op_begin(stmt text, ctx jsonb, kind text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    op bigint;
    reg softguard.sessions := softguard._session(true);
BEGIN
    IF kind NOT IN ('TRUNCATE', 'ALTER TABLE') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'softguard: bad operation kind';
    END IF;
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, row_counts, restore)
    VALUES (now() + softguard._retention(reg, (ctx->>'retention_seconds')::integer),
            session_user, softguard._client_role(), current_setting('application_name', true),
            softguard._client_addr(reg), stmt, kind, '[]',
            jsonb_build_object('estimate', false, 'tables', '{}'::jsonb), '[]')
    RETURNING id INTO op;
    RETURN op;
END $$;
REVOKE ALL ON FUNCTION softguard._op_begin(text, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._op_begin(text, jsonb, text) TO PUBLIC;

-- DETAIL of a 55006 "undo blocked by a later operation" error, and reading it back.
CREATE FUNCTION softguard._blocked_detail(holder bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'blocked_by=' || holder
$$;
REVOKE ALL ON FUNCTION softguard._blocked_detail(bigint) FROM PUBLIC;

CREATE FUNCTION softguard._blocked_by(detail text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (pg_catalog.regexp_match(detail, '(?:^| )blocked_by=([0-9]+)(?: |$)'))[1]::bigint
$$;
REVOKE ALL ON FUNCTION softguard._blocked_by(text) FROM PUBLIC;
