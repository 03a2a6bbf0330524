-- Version 4: what the proxy cannot see (backstop, budget, definitions, large objects),
-- modes for agents, and the work of issues 11-18 (docs/decisions/0014-0019).
--
-- As in 2--3.sql: softguard's event triggers are off while the sections run, every
-- function a section (re)defines has its final definition, and the passes over existing
-- tables run once at the end, before every event trigger is enabled ALWAYS again.

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', e.evtname);
    END LOOP;
END $$;

-- section: modes -----------------------------------------------------------------------
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
    IF 'read_only' = ANY (wanted) THEN
        -- Where a pooler dropped the proxy's startup setting (decision 0019); the proxy
        -- refuses statements that would set it back.
        PERFORM set_config('default_transaction_read_only', 'on', false);
    END IF;
END $$;
CREATE FUNCTION softguard._mode_guard() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    reg softguard.sessions := softguard._session(false);
BEGIN
    IF reg.pid IS NULL OR NOT ('schema' = ANY (reg.capture)) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('softguard: %s is refused: this session may change data, not the '
                         'schema (its softguard mode)', tg_tag),
        HINT = 'INSERT, UPDATE, DELETE, MERGE and TRUNCATE are allowed (and reversible). '
               'Ask an operator to make schema changes, or to give this role mode "full".';
END $$;
REVOKE ALL ON FUNCTION softguard._mode_guard() FROM PUBLIC;

CREATE EVENT TRIGGER softguard_mode_guard ON ddl_command_start
    EXECUTE FUNCTION softguard._mode_guard();
ALTER EVENT TRIGGER softguard_mode_guard ENABLE ALWAYS;
-- end section: modes -------------------------------------------------------------------

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
END $$;
