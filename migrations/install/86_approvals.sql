-- Approval of refused statements (docs/decisions/0020-approval.md): a statement softguard
-- refuses by policy gets an approval id in its error; a person runs `softguard approve ID`;
-- the client's byte-identical retry within the window runs once. Nothing waits: the
-- client asks again, the database decides in the retry's own transaction.
--
-- An id names (role, database, exact text): sha256 of them, its first 16 hex digits; the
-- full hash is kept and checked. The proxy computes the id (softguard.contract.approval_id)
-- and asks for a pending row through its own connection (request_approval); the retry is
-- sent as `<client text marker> SELECT softguard._approval_gate(...); <the statement>`.

CREATE TABLE softguard.approvals (
    id            text PRIMARY KEY,
    statement_sha text NOT NULL,           -- sha256 hex of role, database and the text
    role          text NOT NULL,
    statement     text NOT NULL,           -- the client's exact text
    reason        text NOT NULL,           -- why softguard refused it
    client_addr   text,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    requests      integer NOT NULL DEFAULT 1,
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'approved', 'denied', 'used')),
    decided_by    text,
    decided_at    timestamptz,
    used_at       timestamptz,
    used_pid      integer,
    used_xact     xid8
);
REVOKE ALL ON softguard.approvals FROM PUBLIC;
COMMENT ON TABLE softguard.approvals IS
    'refused statements a person may approve once (softguard approve / deny / pending)';

-- The hash an approval is bound to.
CREATE FUNCTION softguard._approval_sha(role text, db text, statement text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
        role || pg_catalog.chr(1) || db || pg_catalog.chr(1) || statement, 'UTF8')), 'hex')
$$;
REVOKE ALL ON FUNCTION softguard._approval_sha(text, text, text) FROM PUBLIC;

-- The proxy asks for approval of what it refused (its own connection; any role may call
-- it: a request only waits for a person). An approval not yet used stays approved; a used
-- one is asked again only after a minute (the proxy asks while sending the retry).
CREATE FUNCTION softguard.request_approval(p_role text, p_db text, p_statement text,
                                           p_reason text, p_addr text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sha text := softguard._approval_sha(p_role, p_db, p_statement);
    approval_id text := left(sha, 16);
BEGIN
    DELETE FROM softguard.approvals WHERE requested_at < now() - interval '30 days';
    INSERT INTO softguard.approvals AS a (id, statement_sha, role, statement, reason,
                                          client_addr)
    VALUES (approval_id, sha, p_role, p_statement, left(p_reason, 2000), p_addr)
    ON CONFLICT (id) DO UPDATE SET
        requests = a.requests + 1,
        requested_at = now(),
        state = CASE WHEN a.state = 'used' THEN 'pending' ELSE a.state END,
        decided_by = CASE WHEN a.state = 'used' THEN NULL ELSE a.decided_by END,
        decided_at = CASE WHEN a.state = 'used' THEN NULL ELSE a.decided_at END
    WHERE a.statement_sha = excluded.statement_sha
      AND NOT (a.state = 'used' AND a.used_at > now() - interval '1 minute');
    RETURN approval_id;
END $$;
REVOKE ALL ON FUNCTION softguard.request_approval(text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.request_approval(text, text, text, text, text) TO PUBLIC;

-- The retry's gate: runs the statement after it (same transaction) if a person approved
-- exactly this text for this role within the last hour, once; else raises the refusal.
-- Bound to the query the client sent: the proxy's marker carries the client's text
-- (softguard._client_text), and clients cannot send texts naming softguard.
CREATE FUNCTION softguard._approval_gate(p_id text, p_sqlstate text, p_message text,
                                         p_hint text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sent text := current_query();
    client text := softguard._client_text(current_query());
BEGIN
    IF client IS DISTINCT FROM sent THEN   -- the proxy's marker is there
        UPDATE softguard.approvals a
           SET state = 'used', used_at = statement_timestamp(), used_pid = pg_backend_pid(),
               used_xact = pg_current_xact_id()
         WHERE a.id = p_id AND a.state = 'approved'
           AND a.decided_at > now() - interval '1 hour'
           AND a.role = session_user
           AND a.statement_sha = softguard._approval_sha(session_user::text,
                                                         current_database()::text, client);
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message, HINT = p_hint;
END $$;
REVOKE ALL ON FUNCTION softguard._approval_gate(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._approval_gate(text, text, text, text) TO PUBLIC;

-- Whether the client statement running now is one a person approved (the modes' guard
-- lets its DDL through, the limits and outright denials stand aside): the retry's Query
-- message, not the later statements of its transaction (decision 0020, "Since then").
CREATE FUNCTION softguard._approved_here() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM softguard.approvals a
                    WHERE a.used_pid = pg_backend_pid()
                      AND a.used_xact = pg_current_xact_id_if_assigned()
                      -- the retry's own Query message (the gate and the approved text):
                      -- not the later statements of its transaction
                      AND a.used_at = statement_timestamp())
$$;
REVOKE ALL ON FUNCTION softguard._approved_here() FROM PUBLIC;

-- A person's decision (softguard approve / deny): the operator's role only.
CREATE FUNCTION softguard.decide_approval(p_id text, p_approve boolean, p_by text)
RETURNS softguard.approvals
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r softguard.approvals;
BEGIN
    UPDATE softguard.approvals a
       SET state = CASE WHEN p_approve THEN 'approved' ELSE 'denied' END,
           decided_by = coalesce(nullif(p_by, ''), session_user::text), decided_at = now()
     WHERE a.id = p_id AND a.state IN ('pending', 'approved', 'denied')
    RETURNING * INTO r;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002',
            MESSAGE = format('softguard: no approval request %s waiting', p_id),
            HINT = 'softguard pending lists the requests; a used approval needs a new request.';
    END IF;
    RETURN r;
END $$;
REVOKE ALL ON FUNCTION softguard.decide_approval(text, boolean, text) FROM PUBLIC;
