-- Version 3: the trust boundary (docs/threat-model.md, G6-G9).
--
-- Each section below is one change; a function changed by two sections appears once, in
-- the later section, with its final definition.

-- ---------------------------------------------------------------------------------------
-- section: protection decided by registered sessions (G6)
-- ---------------------------------------------------------------------------------------



-- ---------------------------------------------------------------------------------------
-- section: SECURITY DEFINER functions and ledger tables (G8)
-- ---------------------------------------------------------------------------------------



-- ---------------------------------------------------------------------------------------
-- section: the machinery defends itself (G7)
-- ---------------------------------------------------------------------------------------

-- The capture triggers defend themselves (90_event_triggers.sql, threat model G7): they
-- are enabled ALWAYS, a guard refuses any statement that leaves a table without them as
-- installed, protected work refuses to run with an event trigger switched off, and tables
-- created by CREATE SCHEMA ... CREATE TABLE get them too.

-- The guard's helpers run at every ALTER TABLE: like the capture trigger's helpers
-- (20_catalog.sql, top) they are PL/pgSQL (plans kept per session) without a SET of their
-- own (their callers pin search_path; tables and functions are schema-qualified).

-- How each capture trigger stands on those of `rels` that must carry them: 'ok' (as
-- installed, enabled ALWAYS), 'missing', 'changed' (another function, timing, event,
-- condition, column list or transition table than installed), 'disabled', 'replica'
-- (fires only in replica mode) or 'origin' (session_replication_role = replica silences
-- it). No row for a relation that need not carry them. Which must, the installer
-- (_install_capture) and the guard decide here: the tables softguard._protected_table
-- protects (its conditions, inline: a SQL function is planned again at every call), and
-- the tables softguard holds in quarantine (undo brings them back as they are).
CREATE FUNCTION softguard._capture_state(rels oid[])
RETURNS TABLE (rel oid, name text, state text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    -- to_regprocedure: NULL, not an error, while a DROP FUNCTION is being refused
    rows_fn oid := pg_catalog.to_regprocedure('softguard._capture_rows()');
    truncate_fn oid := pg_catalog.to_regprocedure('softguard._capture_truncate()');
    one oid;
BEGIN
    -- one relation per query: its generic plan (kept per session) is index lookups
    FOREACH one IN ARRAY rels LOOP
        RETURN QUERY
        SELECT c.oid, e.name::text,
               CASE WHEN t.oid IS NULL THEN 'missing'
                    WHEN t.tgfoid IS DISTINCT FROM e.fn OR t.tgtype <> e.type
                         OR t.tgqual IS NOT NULL OR t.tgnargs <> 0
                         OR pg_catalog.cardinality(t.tgattr::pg_catalog.int2[]) <> 0
                         OR t.tgoldtable::text IS DISTINCT FROM e.old
                         THEN 'changed'
                    WHEN t.tgenabled = 'A' THEN 'ok'
                    WHEN t.tgenabled = 'D' THEN 'disabled'
                    WHEN t.tgenabled = 'R' THEN 'replica'
                    ELSE 'origin' END
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN (VALUES                -- tgtype: AFTER DELETE, AFTER UPDATE, BEFORE TRUNCATE
                      ('zz_softguard_capture_delete'::name, rows_fn, 8, 'sg_old'),
                      ('zz_softguard_capture_update'::name, rows_fn, 16, 'sg_old'),
                      ('zz_softguard_capture_truncate'::name, truncate_fn, 34, NULL))
               e(name, fn, type, old)
          LEFT JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid AND t.tgname = e.name
         WHERE c.oid = one AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
           AND ((n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                 AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
                 AND n.nspname NOT LIKE 'softguard%')
                OR n.nspname = 'softguard_quarantine' OR n.nspname ~ '^softguard_q[0-9]+_')
         ORDER BY e.name;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_state(oid[]) FROM PUBLIC;

-- Refuse (42501) if any of these relations must carry the capture triggers and does not.
CREATE FUNCTION softguard._capture_refuse_tampering(rels oid[]) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    bad record;
BEGIN
    SELECT s.rel, s.name, s.state INTO bad
      FROM softguard._capture_state(rels) s WHERE s.state <> 'ok' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = pg_catalog.format(
                'softguard: this statement would leave trigger %I on %s %s; softguard''s '
                'capture triggers cannot be dropped, disabled, renamed or replaced',
                bad.name, bad.rel::pg_catalog.regclass,
                CASE bad.state WHEN 'missing' THEN 'missing'
                     WHEN 'changed' THEN 'not as softguard installed it'
                     WHEN 'disabled' THEN 'disabled'
                     WHEN 'replica' THEN 'firing only in replica mode'
                     ELSE 'not enabled ALWAYS' END),
            HINT = 'They keep DELETE, UPDATE and TRUNCATE of the table reversible. To switch '
                   'the table''s own triggers, name them (ALTER TABLE ... DISABLE TRIGGER '
                   'name) instead of USER or ALL.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_refuse_tampering(oid[]) FROM PUBLIC;

-- The guard, for both events: only the tables the statement touched. ddl_command_end: its
-- commands' tables, a trigger's table, every table of a renamed schema (unrelated DDL
-- costs one scan of its own command list). sql_drop: the tables that lost a trigger and
-- are still there (a dropped table takes its triggers along: the DROP backstops decide
-- about the table).
CREATE FUNCTION softguard._capture_tamper() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rels oid[] := '{}';
    r record;
    t record;
BEGIN
    IF TG_EVENT = 'sql_drop' THEN
        SELECT coalesce(array_agg(DISTINCT c.oid), '{}') INTO rels
          FROM pg_event_trigger_dropped_objects() d
          JOIN pg_namespace n ON n.nspname = d.address_names[1]
          JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = d.address_names[2]
         WHERE d.object_type = 'trigger';
    ELSE
        -- a loop, not a join: a join with pg_class by namespace would scan pg_class for
        -- every ALTER TABLE
        FOR r IN SELECT c.classid, c.objid, c.command_tag FROM pg_event_trigger_ddl_commands() c
        LOOP
            IF r.classid = 'pg_class'::regclass THEN
                rels := rels || r.objid;
            ELSIF r.classid = 'pg_trigger'::regclass THEN
                SELECT g.tgrelid, g.tgname INTO t FROM pg_trigger g WHERE g.oid = r.objid;
                CONTINUE WHEN r.command_tag = 'CREATE TRIGGER'       -- the install, see above
                    AND (SELECT pg_catalog.bool_or(s.name = t.tgname AND s.state = 'origin')
                                AND NOT pg_catalog.bool_or(s.state = 'ok')
                           FROM softguard._capture_state(ARRAY[t.tgrelid]) s);
                rels := rels || t.tgrelid;
            ELSIF r.classid = 'pg_namespace'::regclass AND r.command_tag = 'ALTER SCHEMA' THEN
                rels := rels || ARRAY(SELECT k.oid FROM pg_class k
                                       WHERE k.relnamespace = r.objid AND k.relkind IN ('r', 'p'));
            END IF;
        END LOOP;
    END IF;
    IF cardinality(rels) > 0 THEN
        PERFORM softguard._capture_refuse_tampering(rels);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_tamper() FROM PUBLIC;

-- Protected work refuses to run (55000) unless every softguard event trigger is there and
-- enabled ALWAYS: ALTER / DROP EVENT TRIGGER fire no event trigger, so nothing else sees
-- them switched off. Called by _probe (drop_op, alter_op's DROP COLUMN), truncate_op and
-- alter_op.
CREATE FUNCTION softguard._machinery_check() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    off text;
BEGIN
    SELECT string_agg(x.name, ', ' ORDER BY x.name) INTO off
      FROM (SELECT w.name FROM unnest(ARRAY['softguard_capture_ddl_end',
                'softguard_capture_install', 'softguard_capture_sql_drop',
                'softguard_capture_tamper_ddl', 'softguard_capture_tamper_drop']) w(name)
             WHERE NOT EXISTS (SELECT FROM pg_event_trigger e
                                WHERE e.evtname = w.name AND e.evtenabled = 'A')
            UNION
            SELECT e.evtname FROM pg_event_trigger e
             WHERE e.evtname LIKE 'softguard\_%' AND e.evtenabled <> 'A') x;
    IF off IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('softguard: event trigger(s) %s missing or not enabled ALWAYS; '
                             'refusing the statement', off),
            HINT = 'A superuser restores them on a direct connection (ALTER EVENT TRIGGER '
                   '... ENABLE ALWAYS, or a fresh softguard init).';
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._machinery_check() FROM PUBLIC;
-- the protected statements run as the client: they call it as the client
GRANT EXECUTE ON FUNCTION softguard._machinery_check() TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard._install_capture(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
    redo text[];
BEGIN
    SELECT count(*), array_agg(s.name) FILTER (WHERE s.state IN ('missing', 'changed'))
      INTO n, redo
      FROM softguard._capture_state(ARRAY[rel]) s;
    IF n = 0 THEN
        RETURN;                            -- a relation that need not carry them
    END IF;
    IF 'zz_softguard_capture_delete' = ANY (redo) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER zz_softguard_capture_delete AFTER DELETE ON %s'
                       ' REFERENCING OLD TABLE AS sg_old FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION softguard._capture_rows()', rel::regclass);
    END IF;
    IF 'zz_softguard_capture_update' = ANY (redo) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER zz_softguard_capture_update AFTER UPDATE ON %s'
                       ' REFERENCING OLD TABLE AS sg_old FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION softguard._capture_rows()', rel::regclass);
    END IF;
    IF 'zz_softguard_capture_truncate' = ANY (redo) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER zz_softguard_capture_truncate BEFORE TRUNCATE'
                       ' ON %s FOR EACH STATEMENT EXECUTE FUNCTION softguard._capture_truncate()',
                       rel::regclass);
    END IF;
    -- one statement: the tamper guard checks the table after each
    IF EXISTS (SELECT FROM softguard._capture_state(ARRAY[rel]) s WHERE s.state <> 'ok') THEN
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zz_softguard_capture_delete,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_update,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_truncate', rel::regclass);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION softguard._probe(stmt text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    detail text;
BEGIN
    PERFORM pg_catalog.set_config('softguard.probe', 'on', true);
    BEGIN
        EXECUTE stmt;
    EXCEPTION
        WHEN SQLSTATE 'SGPRB' THEN
            GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
        WHEN OTHERS THEN
            PERFORM pg_catalog.set_config('softguard.probe', 'off', true);
            RAISE;
    END;
    PERFORM pg_catalog.set_config('softguard.probe', 'off', true);
    IF detail IS NULL THEN
        -- The statement ran for real without the capture triggers: abort everything.
        RAISE EXCEPTION USING ERRCODE = 'XX000',
            MESSAGE = 'softguard: capture trigger did not fire; refusing the DROP';
    END IF;
    PERFORM softguard._machinery_check();
    RETURN detail::jsonb;
END $$;

CREATE OR REPLACE PROCEDURE softguard.truncate_op(stmt text, ctx jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    op bigint;
BEGIN
    PERFORM softguard._notice(coalesce(ctx->>'offset', '0'), 'SGBEG');
    PERFORM softguard._machinery_check();
    op := softguard._op_begin(stmt, ctx, 'TRUNCATE');
    PERFORM pg_catalog.set_config('softguard.truncate_op', op::text, true);
    EXECUTE stmt;
    PERFORM pg_catalog.set_config('softguard.truncate_op', '', true);
    PERFORM softguard._notice(softguard._truncate_finish(op, coalesce(ctx->>'action', 'TRUNCATE TABLE')));
    PERFORM softguard._notice(coalesce(ctx->>'action', 'TRUNCATE TABLE'), 'SGEND');
END $$;

CREATE OR REPLACE PROCEDURE softguard.alter_op(stmt text, ctx jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    list jsonb := '[]';
    probed boolean := coalesce(ctx->>'drop_column', 'true') <> 'false';
    op bigint;
    r record;
    cid bigint;
    cids bigint[] := '{}';
    dropped text[] := '{}';
    retyped text[] := '{}';
    action text := coalesce(ctx->>'action', 'ALTER TABLE');
    msg text;
    saved text := pg_catalog.current_setting('client_min_messages');
BEGIN
    PERFORM softguard._notice(coalesce(ctx->>'offset', '0'), 'SGBEG');
    PERFORM softguard._machinery_check();
    IF probed THEN
        list := softguard._probe(stmt);
    END IF;
    FOR r IN SELECT (e->>'objid')::oid AS rel, (e->>'objsubid')::integer AS attnum
               FROM pg_catalog.jsonb_array_elements(list) e
              WHERE e->>'object_type' = 'table column'
                AND NOT coalesce((e->>'is_temporary')::boolean, false)
                AND softguard._protected_table((e->>'objid')::oid)
                AND NOT EXISTS (SELECT FROM pg_catalog.jsonb_array_elements(list) t
                                 WHERE (t->>'objid')::oid = (e->>'objid')::oid
                                   AND (t->>'objsubid')::integer = 0
                                   AND t->>'object_type' IN ('table', 'partitioned table')) LOOP
        IF op IS NULL THEN
            op := softguard._op_begin(stmt, ctx, 'ALTER TABLE');
        END IF;
        dropped := dropped || softguard._capture_column(op, r.rel, r.attnum);
    END LOOP;

    -- ALTER COLUMN ... TYPE: the columns the proxy names, as the caller's search_path
    -- resolves them; tables the caller does not own are left to the statement's own error.
    FOR r IN SELECT s.rel, pg_catalog.array_agg(s.attnum ORDER BY s.ord) AS attnums,
                    pg_catalog.array_agg(s.attname ORDER BY s.ord) AS names
               FROM (SELECT DISTINCT ON (x.rel, a.attnum) x.rel, a.attnum, a.attname::text, x.ord
                       FROM (SELECT CASE WHEN e->>'schema' IS NULL
                                         THEN pg_catalog.to_regclass(pg_catalog.quote_ident(e->>'table'))
                                         ELSE pg_catalog.to_regclass(pg_catalog.quote_ident(e->>'schema')
                                                  || '.' || pg_catalog.quote_ident(e->>'table'))
                                    END AS rel, e->>'column' AS col, o AS ord
                               FROM pg_catalog.jsonb_array_elements(
                                        CASE WHEN pg_catalog.jsonb_typeof(ctx->'columns') = 'array'
                                             THEN ctx->'columns' ELSE '[]' END)
                                    WITH ORDINALITY j(e, o)) x
                       JOIN pg_catalog.pg_attribute a
                         ON a.attrelid = x.rel AND a.attname = x.col AND a.attnum > 0
                        AND NOT a.attisdropped
                       JOIN pg_catalog.pg_class c ON c.oid = x.rel
                      WHERE softguard._protected_table(x.rel)
                        AND pg_catalog.pg_has_role(c.relowner, 'USAGE')
                      ORDER BY x.rel, a.attnum, x.ord) s
              GROUP BY s.rel ORDER BY pg_catalog.min(s.ord) LOOP
        -- rows written between the copy and the ALTER would be lost: lock as the ALTER does
        EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', r.rel::regclass);
        FOR i IN 1 .. pg_catalog.cardinality(r.attnums) LOOP
            IF op IS NULL THEN
                op := softguard._op_begin(stmt, ctx, 'ALTER TABLE');
            END IF;
            cid := softguard._capture_type(op, r.rel, r.attnums[i], r.names);
            IF cid IS NOT NULL THEN
                cids := cids || cid;
            END IF;
        END LOOP;
    END LOOP;

    -- The probe already sent PostgreSQL's notices (IF EXISTS ... skipping): not twice.
    IF probed AND saved NOT IN ('error', 'fatal', 'panic') THEN
        PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
    END IF;
    EXECUTE stmt;
    PERFORM pg_catalog.set_config('client_min_messages', saved, true);
    FOREACH cid IN ARRAY cids LOOP
        retyped := retyped || softguard._capture_type_after(op, cid);
    END LOOP;
    IF pg_catalog.cardinality(dropped) > 0 THEN
        msg := pg_catalog.array_to_string(dropped, ', ');
        IF pg_catalog.cardinality(retyped) > 0 THEN
            msg := msg || ', ALTER COLUMN TYPE ' || pg_catalog.array_to_string(retyped, ', ');
        END IF;
        PERFORM softguard._notice(softguard._op_message(op, action || ' DROP COLUMN', msg));
    ELSIF pg_catalog.cardinality(retyped) > 0 THEN
        PERFORM softguard._notice(softguard._op_message(op, action || ' ALTER COLUMN TYPE',
            pg_catalog.array_to_string(retyped, ', ')));
    END IF;
    PERFORM softguard._notice(action, 'SGEND');
END $$;

DROP EVENT TRIGGER softguard_capture_install;
-- CREATE SCHEMA: its embedded CREATE TABLE reports the tag of the CREATE SCHEMA.
CREATE EVENT TRIGGER softguard_capture_install ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'CREATE SCHEMA')
    EXECUTE FUNCTION softguard._capture_install_ddl();
ALTER EVENT TRIGGER softguard_capture_install ENABLE ALWAYS;

-- Existing tables, protected or held in quarantine: their capture triggers as installed
-- (re-created where an owner replaced one), enabled ALWAYS.
SELECT softguard._install_capture(c.oid) FROM pg_class c WHERE c.relkind IN ('r', 'p')
 ORDER BY c.oid;
CREATE EVENT TRIGGER softguard_capture_tamper_ddl ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER TRIGGER', 'CREATE TRIGGER', 'ALTER SCHEMA',
                 'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'CREATE SCHEMA')
    EXECUTE FUNCTION softguard._capture_tamper();
CREATE EVENT TRIGGER softguard_capture_tamper_drop ON sql_drop
    EXECUTE FUNCTION softguard._capture_tamper();
ALTER EVENT TRIGGER softguard_capture_tamper_ddl ENABLE ALWAYS;
ALTER EVENT TRIGGER softguard_capture_tamper_drop ENABLE ALWAYS;


-- ---------------------------------------------------------------------------------------
-- section: exact undo (G9)
-- ---------------------------------------------------------------------------------------


