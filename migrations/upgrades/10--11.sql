-- Version 11 (section tie, decision 0033): the session registration (register_session,
-- register_limits, register_role, session_key and what they call) is LANGUAGE sql, so a
-- session that has run nothing of its own does not load plpgsql (SHOW ALL lists no
-- plpgsql.* settings, as directly); bad values are refused by casts to new domains.
--
-- Event triggers off meanwhile, as in 9--10.sql.
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

-- section: tie ------------------------------------------------------------------------
CREATE DOMAIN softguard.known_categories AS text[]
    CONSTRAINT categories_are_delete_update_drop_truncate_alter_schema_read_only
    CHECK (VALUE <@ ARRAY['delete', 'update', 'drop', 'truncate', 'alter', 'schema',
                          'read_only']);
COMMENT ON DOMAIN softguard.known_categories IS
    'the protected categories a registration may name';
CREATE DOMAIN softguard.retention_seconds AS integer NOT NULL
    CONSTRAINT retention_is_not_negative CHECK (VALUE >= 0);
COMMENT ON DOMAIN softguard.retention_seconds IS 'a registration''s retention, in seconds';
CREATE DOMAIN softguard.registered AS boolean
    CONSTRAINT this_session_is_not_registered_call_register_session_first CHECK (VALUE);
COMMENT ON DOMAIN softguard.registered IS
    'true: register_limits found this session''s registration';

CREATE FUNCTION softguard._keyed_session() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM softguard.sessions s
                    WHERE s.pid = pg_catalog.pg_backend_pid()
                      AND s.backend_start = softguard._backend_start())
           AND NOT EXISTS (SELECT FROM softguard.pooled_roles p WHERE p.role = session_user)
$$;
REVOKE ALL ON FUNCTION softguard._keyed_session() FROM PUBLIC;
CREATE FUNCTION softguard._want_capture_updates() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT softguard._set_capture_updates(true)
     WHERE NOT coalesce((SELECT s.capture_updates FROM softguard.settings s), false)
$$;
REVOKE ALL ON FUNCTION softguard._want_capture_updates() FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._categories(events text) RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT DISTINCT e
                   FROM unnest(string_to_array(replace(lower(coalesce(events, '')), ' ', ''),
                                               ',')) e
                  WHERE e NOT IN ('', 'off') ORDER BY 1)::softguard.known_categories::text[]
$$;

CREATE OR REPLACE FUNCTION softguard.register_session(events text, retention integer, addr text)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    -- Rows of sessions that have ended (or whose pid now belongs to another backend): the
    -- table stays as large as the live registered sessions.
    DELETE FROM softguard.sessions s
     WHERE NOT EXISTS (SELECT FROM pg_stat_get_activity(NULL) a
                        WHERE a.pid = s.pid AND a.backend_start = s.backend_start);
    -- backend_start is NOT NULL: a session that cannot be identified is refused (23502)
    INSERT INTO softguard.sessions AS s (pid, backend_start, capture, retention_seconds,
                                         client_addr, proof)
    VALUES (pg_backend_pid(), softguard._backend_start(), softguard._categories(events),
            retention::softguard.retention_seconds, nullif(addr, ''), gen_random_uuid())
    ON CONFLICT (pid) DO UPDATE SET
        capture = ARRAY(SELECT DISTINCT e FROM unnest(s.capture || excluded.capture) e
                         ORDER BY 1),
        retention_seconds = greatest(s.retention_seconds, excluded.retention_seconds),
        client_addr = coalesce(s.client_addr, excluded.client_addr),
        proof = coalesce(s.proof, excluded.proof);
    -- the session's own (not local: it outlives this transaction, and a rollback takes it
    -- back with the row)
    SELECT set_config('softguard.session_proof', s.proof::text, false)
      FROM softguard.sessions s WHERE s.pid = pg_backend_pid();
    -- UPDATE capture triggers exist only while some session needs them (decision 0023)
    SELECT softguard._want_capture_updates()
     WHERE 'update' = ANY (softguard._categories(events));
    -- Where a pooler dropped the proxy's startup setting (decision 0019); the proxy
    -- refuses statements that would set it back.
    SELECT set_config('default_transaction_read_only', 'on', false)
     WHERE 'read_only' = ANY (softguard._categories(events));
$$;

CREATE OR REPLACE FUNCTION softguard.register_role(events text, retention integer, max_rows bigint,
                                        max_rows_by text, max_table_bytes bigint,
                                        max_table_bytes_by text, denied_tables jsonb)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    -- a negative limit fails the table's CHECK (23514)
    INSERT INTO softguard.pooled_roles AS p (role, capture, retention_seconds, max_rows,
                                             max_rows_by, max_table_bytes, max_table_bytes_by,
                                             denied_tables)
    VALUES (session_user, softguard._categories(events),
            retention::softguard.retention_seconds, register_role.max_rows,
            register_role.max_rows_by, register_role.max_table_bytes,
            register_role.max_table_bytes_by, softguard._valid_denied(register_role.denied_tables))
    ON CONFLICT (role) DO UPDATE SET
        capture = ARRAY(SELECT DISTINCT e FROM unnest(p.capture || excluded.capture) e
                         ORDER BY 1),
        retention_seconds = greatest(p.retention_seconds, excluded.retention_seconds),
        max_rows = CASE WHEN excluded.max_rows < coalesce(p.max_rows, excluded.max_rows + 1)
                        THEN excluded.max_rows ELSE p.max_rows END,
        max_rows_by = CASE WHEN excluded.max_rows < coalesce(p.max_rows, excluded.max_rows + 1)
                           THEN excluded.max_rows_by ELSE p.max_rows_by END,
        max_table_bytes = CASE WHEN excluded.max_table_bytes
                                    < coalesce(p.max_table_bytes, excluded.max_table_bytes + 1)
                               THEN excluded.max_table_bytes ELSE p.max_table_bytes END,
        max_table_bytes_by = CASE WHEN excluded.max_table_bytes
                                       < coalesce(p.max_table_bytes, excluded.max_table_bytes + 1)
                                  THEN excluded.max_table_bytes_by ELSE p.max_table_bytes_by END,
        denied_tables = softguard._valid_denied(p.denied_tables || excluded.denied_tables);
    -- UPDATE capture triggers exist only while some session needs them (decision 0023)
    SELECT softguard._want_capture_updates()
     WHERE 'update' = ANY (softguard._categories(events))
        OR softguard._valid_denied(register_role.denied_tables) @> '[{"category": "update"}]';
    -- Not default_transaction_read_only, as register_session does for 'read_only': on a
    -- pooled backend that setting would outlive this transaction and reach other clients.
$$;

CREATE OR REPLACE FUNCTION softguard.session_key() RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    -- keys of backends that have ended (or whose pid now belongs to another backend)
    DELETE FROM softguard.session_keys k
     WHERE softguard._keyed_session()
       AND NOT EXISTS (SELECT FROM pg_stat_get_activity(NULL) a
                        WHERE a.pid = k.pid AND a.backend_start = k.backend_start);
    -- Created on the first call only (a key already there is never read back: a later
    -- call, the client's, gets none). gen_random_uuid() draws from pg_strong_random():
    -- 244 random bits in two.
    WITH made AS (
        INSERT INTO softguard.session_keys (pid, backend_start, key)
        SELECT pg_backend_pid(), softguard._backend_start(),
               decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex')
         WHERE softguard._keyed_session()
        ON CONFLICT (pid) DO NOTHING
        RETURNING key)
    SELECT CASE WHEN softguard._keyed_session() THEN
               format('%s.%s:%s', pg_backend_pid(),
                      (extract(epoch FROM softguard._backend_start()) * 1000000)::bigint,
                      encode((SELECT m.key FROM made m), 'hex')) END
$$;

CREATE OR REPLACE FUNCTION softguard.register_limits(max_rows bigint, max_rows_by text,
                                          max_table_bytes bigint, max_table_bytes_by text,
                                          denied_tables jsonb)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    -- SQL, as register_session (05_sessions.sql): a negative limit fails the table's CHECK
    -- (23514), a session not registered the cast to softguard.registered (23514).
    WITH lowered AS (
        UPDATE softguard.sessions s SET
            max_rows = CASE WHEN x.lower_rows THEN register_limits.max_rows ELSE s.max_rows END,
            max_rows_by = CASE WHEN x.lower_rows THEN register_limits.max_rows_by
                               ELSE s.max_rows_by END,
            max_table_bytes = CASE WHEN x.lower_bytes THEN register_limits.max_table_bytes
                                   ELSE s.max_table_bytes END,
            max_table_bytes_by = CASE WHEN x.lower_bytes THEN register_limits.max_table_bytes_by
                                      ELSE s.max_table_bytes_by END,
            denied_tables = softguard._valid_denied(s.denied_tables
                                                    || coalesce(register_limits.denied_tables, '[]'))
          FROM (SELECT r.pid,
                       register_limits.max_rows IS NOT NULL
                       AND (r.max_rows IS NULL OR register_limits.max_rows < r.max_rows) AS lower_rows,
                       register_limits.max_table_bytes IS NOT NULL
                       AND (r.max_table_bytes IS NULL
                            OR register_limits.max_table_bytes < r.max_table_bytes) AS lower_bytes
                  FROM softguard.sessions r) x
         WHERE x.pid = s.pid AND s.pid = pg_backend_pid()
           AND s.backend_start = softguard._backend_start()
        RETURNING 1)
    SELECT (EXISTS (SELECT FROM lowered))::softguard.registered;
    -- an UPDATE is refused by the table's UPDATE capture trigger, which exists only while
    -- UPDATEs are captured (decision 0023)
    SELECT softguard._want_capture_updates()
     WHERE EXISTS (SELECT FROM jsonb_array_elements(coalesce(register_limits.denied_tables,
                                                             '[]')) e
                    WHERE e->>'category' = 'update');
$$;

-- end section: tie --------------------------------------------------------------------

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
