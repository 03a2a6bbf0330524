-- Version 5: UPDATE capture only where a rule protects UPDATE (decision 0023).
--
-- As in 3--4.sql: softguard's event triggers are off while the sections run, every
-- function a section (re)defines has its final definition.

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', e.evtname);
    END LOOP;
END $$;

-- section: updates ---------------------------------------------------------------------
-- UPDATE capture triggers only while some rule protects UPDATE (decision 0023). Existing
-- installs keep capturing UPDATEs (the column's default) until softguard init says
-- otherwise.
ALTER TABLE softguard.settings ADD COLUMN capture_updates boolean NOT NULL DEFAULT true;
COMMENT ON TABLE softguard.settings IS
    'the capture budget and whether UPDATEs are captured, kept equal to softguard''s configuration (softguard init, serve)';
CREATE OR REPLACE FUNCTION softguard._updates_captured(rel oid) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT s.capture_updates FROM softguard.settings s), true)
        OR EXISTS (SELECT FROM pg_catalog.pg_constraint k
                    WHERE k.conrelid = rel AND k.contype = 'f' AND k.confdeltype IN ('n', 'd'))
$$;
REVOKE ALL ON FUNCTION softguard._updates_captured(oid) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._capture_state(rels oid[])
RETURNS TABLE (rel oid, name text, state text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    -- to_regprocedure: NULL, not an error, while a DROP FUNCTION is being refused
    rows_fn oid := pg_catalog.to_regprocedure('softguard._capture_rows()');
    truncate_fn oid := pg_catalog.to_regprocedure('softguard._capture_truncate()');
    statement_fn oid := pg_catalog.to_regprocedure('softguard._capture_statement()');
    one oid;
    updates boolean;
BEGIN
    -- one relation per query: its generic plan (kept per session) is index lookups
    FOREACH one IN ARRAY rels LOOP
        updates := softguard._updates_captured(one);
        RETURN QUERY
        SELECT c.oid, e.name::text,
               CASE WHEN t.oid IS NULL THEN 'missing'
                    WHEN t.tgfoid IS DISTINCT FROM e.fn OR t.tgtype <> e.type
                         OR pg_catalog.pg_get_expr(t.tgqual, t.tgrelid) IS DISTINCT FROM e.qual
                         OR t.tgnargs <> 0
                         OR pg_catalog.cardinality(t.tgattr::pg_catalog.int2[]) <> 0
                         OR t.tgoldtable::text IS DISTINCT FROM e.old
                         OR t.tgnewtable::text IS DISTINCT FROM e.new
                         THEN 'changed'
                    WHEN t.tgenabled = 'A' THEN 'ok'
                    WHEN t.tgenabled = 'D' THEN 'disabled'
                    WHEN t.tgenabled = 'R' THEN 'replica'
                    ELSE 'origin' END
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN (VALUES                -- tgtype: AFTER DELETE, AFTER UPDATE, BEFORE
                                           -- TRUNCATE, BEFORE DELETE [OR UPDATE]
                      ('zz_softguard_capture_delete'::name, rows_fn, 8, 'sg_old', NULL::text,
                       NULL::text, true),
                      ('zz_softguard_capture_update'::name, rows_fn, 16, 'sg_old', 'sg_new', NULL,
                       updates),
                      ('zz_softguard_capture_truncate'::name, truncate_fn, 34, NULL, NULL, NULL,
                       true),
                      ('zz_softguard_capture_statement'::name, statement_fn,
                       CASE WHEN updates THEN 26 ELSE 10 END, NULL, NULL,
                       '(pg_trigger_depth() = 0)', true))
               e(name, fn, type, old, new, qual, wanted)
          LEFT JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid AND t.tgname = e.name
         WHERE c.oid = one AND e.wanted AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
           AND ((n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                 AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
                 AND n.nspname NOT LIKE 'softguard%')
                OR n.nspname = 'softguard_quarantine' OR n.nspname ~ '^softguard_q[0-9]+_')
         ORDER BY e.name;
    END LOOP;
END $$;
CREATE OR REPLACE FUNCTION softguard._install_capture(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
    redo text[];
    updates boolean;
BEGIN
    SELECT count(*), array_agg(s.name) FILTER (WHERE s.state IN ('missing', 'changed')),
           bool_or(s.name = 'zz_softguard_capture_update')
      INTO n, redo, updates
      FROM softguard._capture_state(ARRAY[rel]) s;
    IF n = 0 THEN
        RETURN;                            -- a relation that need not carry them
    END IF;
    IF NOT updates AND EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = rel
                                  AND t.tgname = 'zz_softguard_capture_update') THEN
        -- UPDATEs are not captured here (decision 0023): no transition tables to fill
        EXECUTE format('DROP TRIGGER IF EXISTS zz_softguard_capture_update ON %s',
                       rel::regclass);
    END IF;
    IF 'zz_softguard_capture_delete' = ANY (redo) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER zz_softguard_capture_delete AFTER DELETE ON %s'
                       ' REFERENCING OLD TABLE AS sg_old FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION softguard._capture_rows()', rel::regclass);
    END IF;
    IF 'zz_softguard_capture_update' = ANY (redo) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER zz_softguard_capture_update AFTER UPDATE ON %s'
                       ' REFERENCING OLD TABLE AS sg_old NEW TABLE AS sg_new FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION softguard._capture_rows()', rel::regclass);
    END IF;
    IF 'zz_softguard_capture_truncate' = ANY (redo) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER zz_softguard_capture_truncate BEFORE TRUNCATE'
                       ' ON %s FOR EACH STATEMENT EXECUTE FUNCTION softguard._capture_truncate()',
                       rel::regclass);
    END IF;
    IF 'zz_softguard_capture_statement' = ANY (redo) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER zz_softguard_capture_statement BEFORE DELETE'
                       '%s ON %s FOR EACH STATEMENT'
                       ' WHEN (pg_catalog.pg_trigger_depth() = 0)'
                       ' EXECUTE FUNCTION softguard._capture_statement()',
                       CASE WHEN updates THEN ' OR UPDATE' ELSE '' END, rel::regclass);
    END IF;
    -- one statement: the tamper guard checks the table after each
    IF EXISTS (SELECT FROM softguard._capture_state(ARRAY[rel]) s WHERE s.state <> 'ok') THEN
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zz_softguard_capture_delete,'
                       '%s ENABLE ALWAYS TRIGGER zz_softguard_capture_truncate,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_statement', rel::regclass,
                       CASE WHEN updates
                            THEN ' ENABLE ALWAYS TRIGGER zz_softguard_capture_update,' END);
    END IF;
    PERFORM softguard._install_capture_inherited(rel);
END $$;
CREATE OR REPLACE FUNCTION softguard._install_capture_maintained(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mine boolean := softguard._maintenance_begin();
BEGIN
    PERFORM softguard._install_capture(rel);
    PERFORM softguard._maintenance_end(mine);
END $$;
REVOKE ALL ON FUNCTION softguard._install_capture_maintained(oid) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._set_capture_updates(wanted boolean) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mine boolean;
    rel oid;
BEGIN
    IF (SELECT s.capture_updates FROM softguard.settings s) IS NOT DISTINCT FROM wanted THEN
        RETURN false;
    END IF;
    IF NOT wanted AND EXISTS (SELECT FROM softguard.sessions s
                               JOIN pg_stat_get_activity(NULL) a
                                 ON a.pid = s.pid AND a.backend_start = s.backend_start
                              WHERE 'update' = ANY (s.capture)) THEN
        -- a registration only ever adds protection: not while a session relies on it
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = 'softguard: UPDATE capture cannot be switched off while sessions '
                      'registered with UPDATE protection are connected',
            HINT = 'Run it again once those sessions have ended (softguard.sessions).';
    END IF;
    mine := softguard._maintenance_begin();
    UPDATE softguard.settings SET capture_updates = wanted, updated_at = now();
    FOR rel IN SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'p') ORDER BY c.oid LOOP
        PERFORM softguard._install_capture(rel);
    END LOOP;
    PERFORM softguard._maintenance_end(mine);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION softguard._set_capture_updates(boolean) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._capture_tamper() RETURNS event_trigger
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
    IF cardinality(rels) = 0 OR softguard._in_maintenance() THEN
        RETURN;                    -- softguard's own switch of UPDATE capture (40_capture.sql)
    END IF;
    IF TG_EVENT <> 'sql_drop' THEN
        -- A foreign key ON DELETE SET NULL / SET DEFAULT added to a table while UPDATEs are
        -- not captured: the table now needs the UPDATE capture trigger (decision 0023).
        -- Installed, not refused: this statement asked for nothing to be switched off.
        FOR r IN SELECT DISTINCT s.rel FROM softguard._capture_state(rels) s
                  WHERE s.name = 'zz_softguard_capture_update' AND s.state = 'missing' LOOP
            PERFORM softguard._install_capture_maintained(r.rel);
        END LOOP;
    END IF;
    PERFORM softguard._capture_refuse_tampering(rels);
END $$;
CREATE OR REPLACE FUNCTION softguard.register_session(events text, retention integer, addr text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wanted text[];
    started timestamptz := softguard._backend_start();
BEGIN
    wanted := ARRAY(SELECT DISTINCT e
                      FROM unnest(string_to_array(replace(lower(coalesce(events, '')), ' ', ''),
                                                  ',')) e
                     WHERE e NOT IN ('', 'off') ORDER BY 1);
    IF NOT wanted <@ ARRAY['delete', 'update', 'drop', 'truncate', 'alter', 'schema',
                           'read_only'] THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('softguard: unknown protected categories %L', events),
            HINT = 'Categories are delete, update, drop, truncate, alter, schema and read_only.';
    END IF;
    IF retention IS NULL OR retention < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('softguard: bad retention %s', coalesce(retention::text, 'NULL'));
    END IF;
    IF started IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = 'softguard: cannot identify this session (no backend start time)';
    END IF;
    -- Rows of sessions that have ended (or whose pid now belongs to another backend): the
    -- table stays as large as the live registered sessions.
    DELETE FROM softguard.sessions s
     WHERE NOT EXISTS (SELECT FROM pg_stat_get_activity(NULL) a
                        WHERE a.pid = s.pid AND a.backend_start = s.backend_start);
    INSERT INTO softguard.sessions AS s (pid, backend_start, capture, retention_seconds,
                                         client_addr)
    VALUES (pg_backend_pid(), started, wanted, retention, nullif(addr, ''))
    ON CONFLICT (pid) DO UPDATE SET
        capture = ARRAY(SELECT DISTINCT e FROM unnest(s.capture || excluded.capture) e
                         ORDER BY 1),
        retention_seconds = greatest(s.retention_seconds, excluded.retention_seconds),
        client_addr = coalesce(s.client_addr, excluded.client_addr);
    IF 'update' = ANY (wanted) THEN
        -- UPDATE capture triggers exist only while some session needs them (decision 0023)
        PERFORM softguard._set_capture_updates(true);
    END IF;
    IF 'read_only' = ANY (wanted) THEN
        -- Where a pooler dropped the proxy's startup setting (decision 0019); the proxy
        -- refuses statements that would set it back.
        PERFORM set_config('default_transaction_read_only', 'on', false);
    END IF;
END $$;
CREATE OR REPLACE FUNCTION softguard.soft_delete_begin(target regclass, expected text, info jsonb,
                                            mark anyelement)
RETURNS anyelement
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    want regclass := to_regclass(expected);
BEGIN
    IF want IS DISTINCT FROM target THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('softguard: the DELETE names %s, which is not the soft-delete table %s',
                             target, expected),
            HINT = format('Qualify the table name (DELETE FROM %s ...), or change the '
                          'search_path: softguard rewrote the statement for %s.', expected, expected);
    END IF;
    -- the UPDATE that marks the rows is captured by the table's UPDATE trigger, which
    -- exists only while UPDATEs are captured (decision 0023): never mark uncaptured
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t
                    WHERE t.tgrelid = target AND t.tgname = 'zz_softguard_capture_update'
                      AND t.tgenabled = 'A') THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('softguard: cannot soft-delete from %s: UPDATE capture is off in'
                             ' this database', expected),
            HINT = 'An operator runs softguard init --config with the configuration that '
                   'names this table under [[soft_delete]]; softguard serve switches it on '
                   'at start when it can.';
    END IF;
    PERFORM set_config('softguard.sd_' || target::oid::text,
                       (info || jsonb_build_object(
                           'table', expected, 'mark', to_jsonb(mark),
                           'by', CASE info->>'by_value'
                                     WHEN 'application_name' THEN current_setting('application_name')
                                     ELSE current_user::text END))::text,
                       true);
    RETURN mark;
END $$;
CREATE OR REPLACE FUNCTION softguard._mode_guard() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    reg softguard.sessions := softguard._session(false);
BEGIN
    IF reg.pid IS NULL OR NOT ('schema' = ANY (reg.capture)) THEN
        RETURN;
    END IF;
    IF softguard._in_maintenance() THEN  -- softguard's own: e.g. switching UPDATE capture on
        RETURN;                          -- for this very registration (decision 0023)
    END IF;
    IF softguard._approved_here() THEN   -- a statement a person approved (86_approvals)
        RETURN;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('softguard: %s is refused: this session may change data, not the '
                         'schema (its softguard mode)', tg_tag),
        HINT = 'INSERT, UPDATE, DELETE, MERGE and TRUNCATE are allowed (and reversible). '
               'Ask an operator to make schema changes, or to give this role mode "full".';
END $$;
-- end section: updates -----------------------------------------------------------------


DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
END $$;
