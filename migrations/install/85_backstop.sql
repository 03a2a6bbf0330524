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

-- sql_drop, outside the probe: objects a DROP by a protected session removed. The
-- statement's own kind does not matter (docs/drop-kinds.md): what it takes with it does.
-- A column goes by the 'alter' category when the statement itself dropped a column or an
-- attribute (an ALTER), by 'drop' when a DROP of something else took it (a CASCADE).
CREATE FUNCTION softguard._backstop_drop() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events text[] := (softguard._session(false)).capture;
    d record;
    stack text;
    by_alter boolean;   -- the statement itself dropped a column or an attribute
    ext boolean;        -- it dropped an extension, whose members go with it
    by_type boolean;    -- it dropped an attribute of a composite type (ALTER TYPE)
    cause text;         -- what the statement named
    governs text;
    denied jsonb := (softguard._session(false)).denied_tables;
BEGIN
    IF denied <> '[]' THEN
        -- tables a rule denies dropping (88_limits.sql), whatever dropped them
        PERFORM softguard._table_denied(denied, o.schema_name, o.object_name, 'drop', 'DROP')
           FROM pg_event_trigger_dropped_objects() o
          WHERE o.object_type IN ('table', 'materialized view') AND NOT o.is_temporary;
    END IF;
    IF events IS NULL OR NOT (events && ARRAY['drop', 'alter']) THEN
        RETURN;
    END IF;
    SELECT coalesce(bool_or(o.objsubid <> 0), false),
           coalesce(bool_or(o.object_type = 'extension'), false),
           coalesce(bool_or(o.object_type = 'composite type column'), false),
           string_agg(CASE WHEN o.object_type = 'composite type column'
                           THEN 'attribute ' ELSE o.object_type || ' ' END
                      || o.object_identity, ', ')
      INTO by_alter, ext, by_type, cause
      FROM pg_event_trigger_dropped_objects() o WHERE o.original;
    FOR d IN SELECT * FROM pg_event_trigger_dropped_objects() o
              WHERE NOT o.is_temporary AND (o.original OR o.normal) LOOP
        IF d.object_type IN ('table column', 'composite type column') THEN
            governs := CASE WHEN by_alter THEN 'alter' ELSE 'drop' END;
        ELSIF d.object_type IN ('table', 'materialized view', 'sequence') THEN
            governs := 'drop';
        ELSIF d.object_type IN ('schema', 'view', 'function', 'procedure', 'aggregate', 'type',
                                'domain')
              AND NOT (ext AND NOT d.original) THEN
            -- an extension's members report as normal dependents: its own functions and
            -- types cannot be told from others defined over them, so they pass with it
            governs := 'drop';
        ELSE
            CONTINUE;
        END IF;
        CONTINUE WHEN NOT governs = ANY (events);
        IF d.object_type = 'composite type column' THEN
            -- its values live on in columns of the type (typed tables report their own
            -- 'table column'): lost only where such columns exist
            CONTINUE WHEN NOT EXISTS (
                SELECT FROM pg_class r
                  JOIN pg_type t ON t.oid = r.reltype
                  JOIN pg_type u ON u.oid IN (t.oid, t.typarray)
                                 OR (u.typtype = 'd' AND u.typbasetype IN (t.oid, t.typarray))
                  JOIN pg_attribute a ON a.atttypid = u.oid AND a.attnum > 0
                                     AND NOT a.attisdropped
                  JOIN pg_class c ON c.oid = a.attrelid AND c.relkind IN ('r', 'p', 'm')
                 WHERE r.oid = d.objid);
        ELSIF d.object_type = 'type' THEN
            -- drop_op removes shell types (nothing to keep) for real, through _drop_shell:
            -- the statement drops the one shell type marked (30_drop.sql) and nothing else
            CONTINUE WHEN NOT EXISTS (
                SELECT FROM pg_event_trigger_dropped_objects() o
                 WHERE NOT EXISTS (SELECT FROM softguard.shell_drops s
                                    WHERE s.pid = pg_backend_pid()
                                      AND s.xid = pg_current_xact_id()
                                      AND s.type = o.objid AND o.object_type = 'type'));
        ELSIF d.object_type = 'materialized view' THEN
            -- one that a DROP ... CASCADE of this transaction recorded to re-make at undo,
            -- before dropping it (30_drop.sql _quarantine, 3a; decision 0035): a row of
            -- softguard's own, which the client can neither write nor keep
            CONTINUE WHEN EXISTS (
                SELECT FROM softguard.operations o, jsonb_array_elements(o.restore) s
                 WHERE o.txid = pg_current_xact_id() AND o.state = 'active'
                   AND o.kind LIKE 'DROP %' AND s->>'step' = 'remake_matview'
                   AND (s->>'oid')::oid = d.objid);
        ELSIF d.object_type = 'table column' AND by_alter THEN
            -- alter_op captured every column its statement drops before running it (it
            -- probes that very statement); a column dropped anywhere else is lost, as is
            -- one that code of the client's drops while alter_op runs its statement (not
            -- kept by the operation of that call, decision 0028).
            GET DIAGNOSTICS stack = PG_CONTEXT;
            CONTINUE WHEN stack ~ '(^|\n)PL/pgSQL function softguard\.alter_op\(text,jsonb,text\) line [0-9]+ at EXECUTE'
                      AND (NOT softguard._protected_table(d.objid)  -- a foreign child's
                           OR EXISTS (SELECT FROM softguard.captures c
                                       WHERE c.op_id = softguard._alter_executing()
                                         AND c.relid = d.objid AND c.event = 'column'
                                         AND c.info->>'kind' IS NULL
                                         AND (c.info->>'attnum')::integer = d.objsubid));
            -- a column a DROP ... CASCADE took, kept by drop_op before it dropped it
            -- (_quarantine, decision 0029)
            CONTINUE WHEN stack ~ '(^|\n)PL/pgSQL function softguard\._drop_kept_column\(oid,integer\) line [0-9]+ at EXECUTE'
                      AND (NOT softguard._protected_table(d.objid)
                           OR EXISTS (SELECT FROM softguard.captures c
                                        JOIN softguard.operations o ON o.id = c.op_id
                                       WHERE o.txid = pg_current_xact_id() AND o.state = 'active'
                                         AND o.kind LIKE 'DROP %'
                                         AND c.relid = d.objid AND c.event = 'column'
                                         AND c.info->>'kind' IS NULL
                                         AND (c.info->>'attnum')::integer = d.objsubid));
        END IF;
        IF d.original AND NOT by_type THEN
            PERFORM softguard._backstop_refuse(format(
                CASE WHEN d.object_type = 'table column' THEN 'ALTER TABLE DROP COLUMN %2$s'
                     ELSE 'DROP %1$s %2$s' END, upper(d.object_type), d.object_identity));
        END IF;
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard: dropping %s would take %s with it, which cannot be '
                             'made reversible here', cause,
                             CASE WHEN d.object_type = 'composite type column'
                                  THEN 'its values in the columns of that type'
                                  ELSE d.object_type || ' ' || d.object_identity END),
            DETAIL = 'softguard keeps tables, columns and definitions only when they are '
                     'dropped by a statement of their own kind that comes through softguard.',
            HINT = CASE WHEN d.object_type IN ('table column', 'composite type column')
                        THEN 'Drop the dependent columns first (ALTER TABLE ... DROP COLUMN '
                             'through softguard keeps them), then run this statement again.'
                        ELSE format('Drop the dependent %s first (through softguard, which '
                                    'keeps it), then run this statement again.', d.object_type)
                   END;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_drop() FROM PUBLIC;
-- The event trigger runs as the session's role; this only ever refuses.
GRANT EXECUTE ON FUNCTION softguard._backstop_drop() TO PUBLIC;

-- table_rewrite: a column type change (reason bit 4, AT_REWRITE_COLUMN_REWRITE) by a
-- protected session converts the column's values in place, and no event trigger reports
-- which column changed. Outside alter_op (a DO block, a function, a procedure) it is
-- refused; inside alter_op's EXECUTE, every column of the rewritten table (or of the
-- parent the statement named) must have a capture of its own in the operation of that
-- alter_op call (_alter_executing: not another operation of the transaction), or a type
-- equal to the one such a capture recorded before the statement ran (a ctx naming too few
-- columns is refused). A rewrite that keeps a column's type but changes its values (`TYPE
-- int USING 0` on an int column) cannot be told from one that keeps them: only the
-- proxy's parse names such a column, and alter_op believes a ctx only with the proxy's
-- mark (decision 0028).
-- Table rewrites let through in probe mode, per backend (_backstop_rewrite). A probed
-- statement is always rolled back, and the row with it; one still here at
-- ddl_command_end (_probe_rewrite_check) ran outside probe mode's end: a forged or
-- switched-off softguard.probe. A row, not the PL/pgSQL context stack, which the client
-- can write text into (a comment of its own dynamic SQL reads like any frame).
CREATE TABLE softguard.probe_rewrites (
    pid     integer NOT NULL,
    xid     xid8 NOT NULL,
    rel     oid NOT NULL
);
REVOKE ALL ON softguard.probe_rewrites FROM PUBLIC;
COMMENT ON TABLE softguard.probe_rewrites IS
    'table rewrites let through in probe mode; refused at ddl_command_end if still there';

-- ddl_command_end, outside probe mode (90_event_triggers.sql): refuse a statement that
-- rewrote a table in probe mode and was not rolled back.
CREATE FUNCTION softguard._probe_rewrite_check() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid;
BEGIN
    SELECT p.rel INTO rel FROM softguard.probe_rewrites p WHERE p.pid = pg_backend_pid() LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard: changing the type of a column of %s cannot be made '
                             'reversible here', rel::regclass),
            DETAIL = 'The table was rewritten in softguard''s probe mode, which the statement '
                     'then left: only softguard''s probe may run it, and rolls it back.',
            HINT = 'Run the ALTER TABLE ... ALTER COLUMN ... TYPE as its own statement.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._probe_rewrite_check() FROM PUBLIC;
-- The event trigger runs as the session's role; this only ever refuses.
GRANT EXECUTE ON FUNCTION softguard._probe_rewrite_check() TO PUBLIC;

CREATE FUNCTION softguard._backstop_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid := pg_event_trigger_table_rewrite_oid();
    events text[];
    stack text;
    lost text;
BEGIN
    IF pg_event_trigger_table_rewrite_reason() & 4 = 0 THEN
        RETURN;                            -- persistence, a default, an access method
    END IF;
    events := (softguard._session(false)).capture;
    IF events IS NULL OR NOT ('alter' = ANY (events)) OR NOT softguard._protected_table(rel) THEN
        RETURN;
    END IF;
    IF current_setting('softguard.probe', true) = 'on' THEN
        -- the probe never keeps what it runs (20_catalog.sql): its statement ends in SGPRB
        -- at ddl_command_end. The setting is the session's to write, and code of its own
        -- (a USING expression) can switch it off while the rewrite runs: the row below,
        -- which only a rollback removes, makes ddl_command_end refuse such a statement.
        INSERT INTO softguard.probe_rewrites (pid, xid, rel)
        VALUES (pg_backend_pid(), pg_current_xact_id(), rel);
        RETURN;
    END IF;
    GET DIAGNOSTICS stack = PG_CONTEXT;
    IF stack ~ '(^|\n)PL/pgSQL function softguard\.alter_op\(text,jsonb,text\) line [0-9]+ at EXECUTE' THEN
        WITH RECURSIVE up(r) AS (
            SELECT rel
            UNION
            SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.r
        ), caps AS (
            SELECT c.info FROM softguard.captures c
              JOIN softguard.operations o ON o.id = c.op_id
             WHERE o.id = softguard._alter_executing()
               AND o.txid = pg_current_xact_id() AND o.state = 'active'
               AND o.kind = 'ALTER TABLE' AND c.event = 'column'
               AND c.info->>'kind' = 'type' AND c.relid IN (SELECT r FROM up)
        )
        SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum) INTO lost
          FROM pg_attribute a
         WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
           AND NOT EXISTS (SELECT FROM caps WHERE caps.info->>'name' = a.attname)
           AND NOT EXISTS (SELECT FROM caps
                            WHERE caps.info->'types'->>(rel::text || '.' || a.attname)
                                  = format_type(a.atttypid, a.atttypmod));
        IF lost IS NULL THEN
            RETURN;
        END IF;
    ELSE
        lost := NULL;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '0A000',
        MESSAGE = format('softguard: changing the type of %s%s cannot be made reversible here',
                         CASE WHEN lost IS NULL THEN 'a column of ' ELSE 'column(s) ' || lost || ' of ' END,
                         rel::regclass),
        DETAIL = 'softguard keeps a column''s values across a type change only when the ALTER '
                 'TABLE comes through softguard on its own, not from a function, procedure or '
                 'DO block.',
        HINT = 'Run the ALTER TABLE ... ALTER COLUMN ... TYPE as its own statement.';
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_rewrite() FROM PUBLIC;

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
