-- Version 10 (section attack): the backstop's exemptions for softguard's own DDL no longer
-- read the PL/pgSQL context stack, which a client can write text into (a comment in its own
-- dynamic SQL reads like any frame): _drop_shell marks the shell type it drops
-- (softguard.shell_drops), a table rewrite in probe mode is recorded
-- (softguard.probe_rewrites) and refused at ddl_command_end unless rolled back.
DO $$
DECLARE
    e record;
BEGIN
    -- The event triggers of an install a provider's helper made (decision 0025) belong to
    -- the helper's owner, and the owner role installing cannot switch them off: those stay
    -- on, and this transaction is softguard's own maintenance, which they stand aside for.
    FOR e IN SELECT evtname, pg_has_role(evtowner, 'USAGE') AS mine FROM pg_event_trigger
              WHERE evtname LIKE 'softguard\_%' LOOP
        IF e.mine THEN
            EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', e.evtname);
        ELSE
            PERFORM softguard._maintenance_begin();
        END IF;
    END LOOP;
END $$;

-- section: attack -----------------------------------------------------------
-- The backstop's exemptions checked by rows the client cannot write (threat model G11;
-- decision 0029, "Since then").
CREATE TABLE softguard.shell_drops (
    pid     integer NOT NULL,
    xid     xid8 NOT NULL,
    type    oid NOT NULL
);
REVOKE ALL ON softguard.shell_drops FROM PUBLIC;
COMMENT ON TABLE softguard.shell_drops IS
    'the shell type _drop_shell is dropping, which the sql_drop backstop lets pass';

CREATE OR REPLACE FUNCTION softguard._shell_drop_mark(p_oid oid, dropping boolean) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM softguard.shell_drops s WHERE s.pid = pg_backend_pid();
    IF dropping AND EXISTS (SELECT FROM pg_type t
                             WHERE t.oid = p_oid AND t.typtype = 'p' AND NOT t.typisdefined) THEN
        INSERT INTO softguard.shell_drops (pid, xid, type)
        VALUES (pg_backend_pid(), pg_current_xact_id(), p_oid);
        RETURN true;
    END IF;
    RETURN false;
END $$;
REVOKE ALL ON FUNCTION softguard._shell_drop_mark(oid, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._shell_drop_mark(oid, boolean) TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard._drop_shell(p_oid oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ident text;
BEGIN
    SELECT format('%I.%I', n.nspname, t.typname) INTO ident
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.oid = p_oid AND t.typtype = 'p' AND NOT t.typisdefined;
    IF ident IS NOT NULL AND softguard._shell_drop_mark(p_oid, true) THEN
        EXECUTE format('DROP TYPE %s', ident);
        PERFORM softguard._shell_drop_mark(p_oid, false);
    END IF;
END $$;
GRANT EXECUTE ON FUNCTION softguard._drop_shell(oid) TO PUBLIC;

CREATE TABLE softguard.probe_rewrites (
    pid     integer NOT NULL,
    xid     xid8 NOT NULL,
    rel     oid NOT NULL
);
REVOKE ALL ON softguard.probe_rewrites FROM PUBLIC;
COMMENT ON TABLE softguard.probe_rewrites IS
    'table rewrites let through in probe mode; refused at ddl_command_end if still there';

CREATE OR REPLACE FUNCTION softguard._probe_rewrite_check() RETURNS void
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

CREATE OR REPLACE FUNCTION softguard._backstop_drop() RETURNS void
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

CREATE OR REPLACE FUNCTION softguard._backstop_rewrite() RETURNS event_trigger
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

CREATE OR REPLACE FUNCTION softguard._capture_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- Reached in probe mode only when sql_drop did not fire: nothing was dropped.
    IF current_setting('softguard.probe', true) = 'on' THEN
        RAISE EXCEPTION USING ERRCODE = 'SGPRB', MESSAGE = 'softguard probe', DETAIL = '[]';
    END IF;
    PERFORM softguard._probe_rewrite_check();  -- probe mode left mid-statement (85_backstop.sql)
END $$;
REVOKE ALL ON FUNCTION softguard._capture_ddl_end() FROM PUBLIC;

-- end section: attack -------------------------------------------------------

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger
              WHERE evtname LIKE 'softguard\_%' AND pg_has_role(evtowner, 'USAGE') LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
    PERFORM softguard._maintenance_end(true);
END $$;
