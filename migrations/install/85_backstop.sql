-- The backstop: what a protected session destroys through SQL the proxy does not read (a DO
-- block, a function, a procedure, a trigger, dynamic SQL) is refused in the database (issue
-- 11; threat model G11; decision 0012).
--
-- Which sessions: those registered (05_sessions.sql) with the category - the proxy
-- registers 'drop', 'truncate' and 'alter' when the session's policy protects or denies
-- them. Their reversible forms never reach these checks: drop_op moves objects instead of
-- dropping them, truncate_op marks its TRUNCATE (softguard.truncate_op, honoured only for
-- its own open operation), alter_op captures every column its statement drops before it
-- runs it. A TRUNCATE anywhere else is captured all the same (its own operation, below);
-- anything else that would destroy data is refused with 0A000, the whole statement rolled
-- back. Sessions that are not registered are not affected.

-- Refuse, naming what was about to be destroyed.
CREATE FUNCTION softguard._backstop_refuse(what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '0A000',
        MESSAGE = format('softguard: %s cannot be made reversible here', what),
        DETAIL = 'softguard keeps what a DROP, TRUNCATE or DROP COLUMN destroys only when the '
                 'statement comes through softguard on its own, not from a function, procedure, '
                 'trigger or DO block, nor as the cascade of a statement it does not rewrite.',
        HINT = 'Run the DROP, TRUNCATE or ALTER TABLE ... DROP COLUMN as its own statement.';
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_refuse(text) FROM PUBLIC;

-- sql_drop, outside the probe: objects a DROP by a protected session removed.
CREATE FUNCTION softguard._backstop_drop() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events text[] := (softguard._session(false)).capture;
    d record;
    stack text;
BEGIN
    IF events IS NULL OR NOT (events && ARRAY['drop', 'alter']) THEN
        RETURN;
    END IF;
    -- Members of a dropped extension go with it (no normal dependency): not data.
    FOR d IN SELECT * FROM pg_event_trigger_dropped_objects() o
              WHERE NOT o.is_temporary AND (o.original OR o.normal) LOOP
        IF d.object_type IN ('table', 'materialized view', 'schema', 'sequence', 'view',
                             'function', 'procedure', 'type', 'domain')
           AND 'drop' = ANY (events) THEN
            PERFORM softguard._backstop_refuse(format('DROP %s %s', upper(d.object_type),
                                                      d.object_identity));
        END IF;
        IF d.object_type = 'table column' AND 'alter' = ANY (events) THEN
            -- alter_op captured every column its statement drops before running it (it
            -- probes that very statement); a column dropped anywhere else is lost.
            GET DIAGNOSTICS stack = PG_CONTEXT;
            IF stack !~ '(^|\n)PL/pgSQL function softguard\.alter_op\(text,jsonb\) line [0-9]+ at EXECUTE' THEN
                PERFORM softguard._backstop_refuse(format('ALTER TABLE DROP COLUMN %s',
                                                          d.object_identity));
            END IF;
        END IF;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_drop() FROM PUBLIC;
-- The event trigger runs as the session's role; this only ever refuses.
GRANT EXECUTE ON FUNCTION softguard._backstop_drop() TO PUBLIC;

-- BEFORE TRUNCATE, outside truncate_op (a DO block, function, procedure, trigger): a
-- protected session's TRUNCATE is captured like a top-level one (issue 11 item 2). Returns
-- the operation the trigger copies into (NULL: the session is not registered for
-- 'truncate', nothing to keep). One operation per top-level client statement, as for
-- DELETE: the first table opens it (statement = the client's whole text) and raises its
-- NOTICE; the statement's other tables, and its later TRUNCATEs, join it
-- (softguard.nested_truncate = '<statement key>/<op>', honoured only for an active
-- TRUNCATE of this transaction). A foreign table fires no trigger: see decision 0013.
CREATE FUNCTION softguard._backstop_truncate(rel regclass) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text;
    cur text;
    op bigint;
    reg softguard.sessions;
    expires timestamptz;
BEGIN
    IF NOT coalesce('truncate' = ANY ((softguard._session(false)).capture), false) THEN
        RETURN NULL;
    END IF;
    k := (extract(epoch FROM statement_timestamp()) * 1000000)::bigint::text;
    cur := current_setting('softguard.nested_truncate', true);
    IF cur IS NOT NULL AND split_part(cur, '/', 1) = k AND split_part(cur, '/', 2) ~ '^[0-9]{1,18}$' THEN
        SELECT o.id INTO op FROM softguard.operations o
         WHERE o.id = split_part(cur, '/', 2)::bigint AND o.kind = 'TRUNCATE'
           AND o.txid = pg_current_xact_id() AND o.state = 'active';
        IF op IS NOT NULL THEN
            RETURN op;
        END IF;
    END IF;
    reg := softguard._session(true);
    expires := now() + softguard._retention(
        reg, nullif(current_setting('softguard.retention', true), '')::integer);
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, row_counts, restore)
    VALUES (expires, session_user, softguard._client_role(),
            current_setting('application_name', true), softguard._client_addr(reg),
            coalesce(softguard._client_text(current_query()), ''), 'TRUNCATE', '[]',
            jsonb_build_object('estimate', false, 'tables', '{}'::jsonb), '[]')
    RETURNING id INTO op;
    PERFORM set_config('softguard.nested_truncate', k || '/' || op, true);
    PERFORM softguard._notice(softguard._op_notice(
        'TRUNCATE TABLE', rel::text || ' (run inside a function or DO block)', op, expires));
    RETURN op;
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_truncate(regclass) FROM PUBLIC;

-- After _capture_truncate copied table `rel` (`ident`, `n` rows) for the operation
-- _backstop_truncate opened: what _truncate_finish does for truncate_op, one table at a
-- time (objects marked nested: the statement recorded is the client's whole text).
CREATE FUNCTION softguard._backstop_truncated(op bigint, rel oid, ident text, n bigint)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name text := (SELECT c.relname FROM pg_class c WHERE c.oid = rel);
BEGIN
    UPDATE softguard.operations o SET
        objects = o.objects || jsonb_build_array(jsonb_build_object(
            'type', 'table', 'identity', ident, 'schema', split_part(ident, '.', 1),
            'name', name, 'original', strpos(lower(o.statement), lower(name)) > 0,
            'normal', true, 'classid', 'pg_class'::regclass::oid, 'objid', rel,
            'objsubid', 0, 'event', 'truncate', 'rows', n, 'held_by', NULL, 'nested', true)),
        row_counts = jsonb_set(o.row_counts, ARRAY['tables', ident],
            to_jsonb(coalesce((o.row_counts->'tables'->>ident)::bigint, 0) + n))
     WHERE o.id = op;
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_truncated(bigint, oid, text, bigint) FROM PUBLIC;
