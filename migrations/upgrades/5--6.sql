-- Version 6: transaction-mode poolers (decision 0026).
--
-- As in 4--5.sql: softguard's event triggers are off while the sections run, every
-- function a section (re)defines has its final definition.

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', e.evtname);
    END LOOP;
END $$;

-- section: pooled-roles ----------------------------------------------------------------
CREATE TABLE softguard.pooled_roles (
    role               name PRIMARY KEY,         -- the login role (session_user)
    capture            text[] NOT NULL,
    retention_seconds  integer NOT NULL CHECK (retention_seconds >= 0),
    max_rows           bigint CHECK (max_rows >= 0),
    max_rows_by        text,
    max_table_bytes    bigint CHECK (max_table_bytes >= 0),
    max_table_bytes_by text,
    denied_tables      jsonb NOT NULL DEFAULT '[]',
    registered_at      timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON softguard.pooled_roles FROM PUBLIC;
COMMENT ON TABLE softguard.pooled_roles IS
    'login roles the proxy registered behind a transaction pooler: every session of the role '
    'is protected as if registered (only ever added to; the ledger owner removes rows)';

CREATE OR REPLACE FUNCTION softguard._categories(events text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wanted text[];
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
    RETURN wanted;
END $$;
REVOKE ALL ON FUNCTION softguard._categories(text) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard.register_session(events text, retention integer, addr text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wanted text[];
    started timestamptz := softguard._backend_start();
BEGIN
    wanted := softguard._categories(events);
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
CREATE OR REPLACE FUNCTION softguard.register_role(events text, retention integer, max_rows bigint,
                                        max_rows_by text, max_table_bytes bigint,
                                        max_table_bytes_by text, denied_tables jsonb)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wanted text[] := softguard._categories(events);
    denied jsonb;
BEGIN
    IF retention IS NULL OR retention < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('softguard: bad retention %s', coalesce(retention::text, 'NULL'));
    END IF;
    IF max_rows < 0 OR max_table_bytes < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'softguard: limits cannot be negative';
    END IF;
    denied := (SELECT coalesce(jsonb_agg(DISTINCT e), '[]')
                 FROM jsonb_array_elements(coalesce(register_role.denied_tables, '[]')) e
                WHERE jsonb_typeof(e->'pattern') = 'string'
                  AND e->>'category' IN ('delete', 'update', 'truncate', 'drop'));
    INSERT INTO softguard.pooled_roles AS p (role, capture, retention_seconds, max_rows,
                                             max_rows_by, max_table_bytes, max_table_bytes_by,
                                             denied_tables)
    VALUES (session_user, wanted, retention, register_role.max_rows, register_role.max_rows_by,
            register_role.max_table_bytes, register_role.max_table_bytes_by, denied)
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
        denied_tables = (SELECT coalesce(jsonb_agg(DISTINCT e), '[]')
                           FROM jsonb_array_elements(p.denied_tables || excluded.denied_tables) e);
    IF 'update' = ANY (wanted) OR denied @> '[{"category": "update"}]' THEN
        -- UPDATE capture triggers exist only while some session needs them (decision 0023)
        PERFORM softguard._set_capture_updates(true);
    END IF;
    -- Not default_transaction_read_only, as register_session does for 'read_only': on a
    -- pooled backend that setting would outlive this transaction and reach other clients.
END $$;
REVOKE ALL ON FUNCTION softguard.register_role(text, integer, bigint, text, bigint, text, jsonb)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.register_role(text, integer, bigint, text, bigint, text, jsonb)
    TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._pooled_session() RETURNS softguard.sessions
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r softguard.sessions;
BEGIN
    SELECT pg_backend_pid(), softguard._backend_start(), p.capture, p.retention_seconds,
           NULL, p.registered_at, p.max_rows, p.max_rows_by, p.max_table_bytes,
           p.max_table_bytes_by, p.denied_tables
      INTO r
      FROM softguard.pooled_roles p WHERE p.role = session_user;
    RETURN r;
END $$;
REVOKE ALL ON FUNCTION softguard._pooled_session() FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._session(verify boolean) RETURNS softguard.sessions
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r softguard.sessions;
BEGIN
    SELECT * INTO r FROM softguard.sessions s WHERE s.pid = pg_backend_pid();
    IF FOUND AND verify AND r.backend_start IS DISTINCT FROM softguard._backend_start() THEN
        r := NULL;
    END IF;
    IF r.pid IS NULL THEN
        r := softguard._pooled_session();
    END IF;
    RETURN r;
END $$;
CREATE OR REPLACE FUNCTION softguard._capture_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    cap text := current_setting('softguard.capture', true);
    ev text := lower(TG_OP);
    events text[];
    reg softguard.sessions;
    event text;                            -- what is recorded: ev, or 'soft_delete'
    k text;
    cur text;
    op bigint;
    op_kind text;
    cid bigint;
    n bigint;
    ident text;
    expires timestamptz;
    first_word text;
    sd text;
    sdi jsonb;
    inh jsonb;                             -- inheritance children's rows (_inherited_claim)
    shape record;
    cols jsonb;
    info jsonb;
    stmt text;
    obj jsonb;
    reg_capture text[];
    lim bigint;                            -- the registration's max_rows (88_limits.sql)
    lim_by text;
    denied jsonb;                          -- tables its rules deny (88_limits.sql)
BEGIN
    -- What this session captures: its registration, plus what its setting adds (G6). The
    -- setting, written by the proxy at startup, is the fast path; a session whose setting
    -- does not name the event asks its registration, which the client cannot change. The
    -- registration also carries the session's row limit, whatever its setting says.
    events := string_to_array(replace(lower(coalesce(cap, '')), ' ', ''), ',');
    -- softguard._session(false), inlined: this runs for every uncaptured UPDATE
    SELECT s.capture, s.max_rows, s.max_rows_by, s.denied_tables
      INTO reg_capture, lim, lim_by, denied
      FROM softguard.sessions s WHERE s.pid = pg_backend_pid();
    IF NOT FOUND THEN  -- behind a transaction pooler: the login role's (05_sessions.sql)
        SELECT p.capture, p.max_rows, p.max_rows_by, p.denied_tables
          INTO reg_capture, lim, lim_by, denied
          FROM softguard.pooled_roles p WHERE p.role = session_user;
    END IF;
    IF denied <> '[]' THEN
        PERFORM softguard._table_denied(denied, TG_TABLE_SCHEMA, TG_TABLE_NAME, ev, TG_OP);
    END IF;
    IF NOT (ev = ANY (events)) THEN
        events := events || coalesce(reg_capture, '{}');
        IF NOT (events && ARRAY['delete', 'update']) AND (lim IS NULL OR ev <> 'delete') THEN
            RETURN NULL;
        END IF;
    END IF;
    k := (extract(epoch FROM statement_timestamp()) * 1000000)::bigint::text;
    cur := current_setting('softguard.cur_op', true);
    IF cur IS NOT NULL AND split_part(cur, '/', 1) = k THEN
        -- only an operation this transaction opened (the setting is the session's to change)
        SELECT o.id, o.kind INTO op, op_kind FROM softguard.operations o
         WHERE split_part(cur, '/', 2) ~ '^[0-9]{1,18}$'
           AND o.id = split_part(cur, '/', 2)::bigint AND o.txid = pg_current_xact_id()
           AND o.state = 'active';
    END IF;
    ident := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);

    IF ev = 'update' AND pg_trigger_depth() = 1 THEN
        IF left(current_query(), 20) = '/*softguard:delete*/' THEN
            PERFORM softguard._notice('DELETE', 'SGTAG');
        END IF;
        sd := current_setting('softguard.sd_' || TG_RELID::text, true);
        IF sd IS NOT NULL AND sd <> '' THEN
            -- A soft delete softguard rewrote: capture what it marked, nothing else.
            PERFORM set_config('softguard.sd_' || TG_RELID::text, '', true);
            sdi := sd::jsonb;
            shape := softguard._sd_shape(TG_RELID, sdi);
            IF shape.key IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('softguard: cannot soft-delete from %s: it has no primary key'
                                     ' or unique NOT NULL key to find the rows by', ident);
            END IF;
            cid := nextval('softguard.captures_id_seq'::regclass);
            EXECUTE shape.capture USING cid;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = 0 THEN
                RETURN NULL;
            END IF;
            IF lim IS NOT NULL THEN        -- the rows this soft delete marked, 88_limits.sql
                PERFORM softguard._limit_rows(k, n, lim, lim_by, ident);
            END IF;
            event := 'soft_delete';
            cols := shape.columns;
            info := (sdi - 'statement') || jsonb_build_object('key', to_jsonb(shape.key));
            stmt := sdi->>'statement';
        END IF;
    END IF;

    IF event IS NULL THEN
        IF NOT (ev = ANY (events)) THEN
            -- Not captured by this session, except what a DELETE changes on other tables
            -- (ON DELETE SET NULL / SET DEFAULT): part of the DELETE's effect.
            IF ev <> 'update' OR op IS NULL OR op_kind NOT IN ('DELETE', 'MERGE') THEN
                IF lim IS NOT NULL AND ev = 'delete' THEN
                    -- a DELETE the session may run uncaptured still counts (88_limits.sql)
                    SELECT count(*) INTO n FROM sg_old;
                    PERFORM softguard._limit_rows(k, n, lim, lim_by, ident);
                END IF;
                RETURN NULL;
            END IF;
        END IF;
        IF lim IS NOT NULL THEN
            -- the row limit (88_limits.sql), exact, before anything is copied
            SELECT count(*) INTO n FROM sg_old;
            PERFORM softguard._limit_rows(k, n, lim, lim_by, ident);
        END IF;
        -- the capture budget (07_settings.sql), before anything is copied: a table that
        -- fits whole needs no measuring
        IF NOT softguard._budget_fits(k, TG_RELID) THEN
            SELECT coalesce(sum(pg_column_size(o)), 0) INTO n FROM sg_old o;
            PERFORM softguard._budget_take(k, n, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
                                                                ELSE 'UPDATE' END, ident);
        END IF;
        cid := nextval('softguard.captures_id_seq'::regclass);
        inh := softguard._inherited_claim(TG_RELID, ev);
        IF inh IS NULL THEN
        INSERT INTO softguard.captured_rows (capture_id, "row") SELECT cid, o::text FROM sg_old o;
        ELSE EXECUTE softguard._inherited_sql(TG_RELID, inh) USING cid; END IF;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 AND inh IS NULL THEN
            RETURN NULL;                   -- removed nothing: records nothing
        END IF;
        IF ev = 'update' THEN EXECUTE softguard._key_change_sql(TG_RELID, true) INTO info;
            IF info IS NOT NULL THEN EXECUTE softguard._key_change_sql(TG_RELID, false) INTO info; END IF; END IF;
        event := ev;
        cols := softguard._columns(TG_RELID);
    END IF;

    obj := jsonb_build_object(
        'type', 'table', 'identity', ident, 'schema', TG_TABLE_SCHEMA, 'name', TG_TABLE_NAME,
        'original', op IS NULL, 'normal', true,
        'classid', 'pg_class'::regclass::oid, 'objid', TG_RELID, 'objsubid', 0,
        'event', event, 'rows', n, 'held_by', NULL);
    IF op IS NULL THEN
        -- the operation's first table: its ledger row is written once, complete
        IF event = 'soft_delete' THEN
            op_kind := coalesce(sdi->>'verb', 'DELETE');       -- DELETE, or MERGE
        ELSE
            first_word := upper(substring(softguard._client_text(current_query())
                                          FROM '^\s*([A-Za-z]+)'));
            op_kind := CASE WHEN first_word = 'MERGE' THEN 'MERGE' ELSE TG_OP END;
        END IF;
        reg := softguard._session(true);
        expires := now() + softguard._retention(
            reg, nullif(current_setting('softguard.retention', true), '')::integer);
        INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                          client_addr, statement, kind, objects, row_counts,
                                          restore)
        VALUES (expires, session_user, softguard._client_role(),
                current_setting('application_name', true),
                softguard._client_addr(reg),
                coalesce(stmt, softguard._client_text(current_query()), ''), op_kind,
                jsonb_build_array(obj),
                jsonb_build_object('estimate', false, 'tables', jsonb_build_object(ident, n)),
                '[]')
        RETURNING id INTO op;
        PERFORM set_config('softguard.cur_op', format('%s/%s/%s', k, op, op_kind), true);
        -- no row count: later statements of the same query string may join it
        PERFORM softguard._notice(softguard._op_notice(
            CASE op_kind WHEN 'DELETE' THEN 'DELETE FROM' WHEN 'MERGE' THEN 'MERGE INTO'
                         ELSE 'UPDATE' END,
            ident || CASE WHEN event = 'soft_delete'
                          THEN format(' (soft delete: %s set)', quote_ident(sdi->>'column'))
                          ELSE '' END,
            op, expires));
    ELSE
        UPDATE softguard.operations o SET
            -- a soft delete of another statement of the same query string: named too (a
            -- statement's own tables fire one after the other: it is the last one named)
            statement = CASE WHEN stmt IS NULL OR o.statement = stmt
                               OR right(o.statement, length(stmt) + 2) = '; ' || stmt
                             THEN o.statement ELSE o.statement || '; ' || stmt END,
            objects = o.objects || jsonb_build_array(obj),
            row_counts = jsonb_set(o.row_counts, ARRAY['tables', ident],
                to_jsonb(coalesce((o.row_counts->'tables'->>ident)::bigint, 0) + n))
         WHERE o.id = op;
    END IF;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns,
                                    info)
    VALUES (cid, op, TG_RELID, ident, event, n, cols, info);
    PERFORM softguard._capture_more(op, cid, TG_RELID, info, inh);
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION softguard._capture_inherited() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    cap text := current_setting('softguard.capture', true);
BEGIN
    -- the same decision as _capture_rows' for a DELETE: the setting, else the registration
    IF NOT ('delete' = ANY (string_to_array(replace(lower(coalesce(cap, '')), ' ', ''), ',')))
       AND NOT ('delete' = ANY (coalesce((SELECT s.capture FROM softguard.sessions s
                                          WHERE s.pid = pg_backend_pid()),
                                         (SELECT p.capture FROM softguard.pooled_roles p
                                           WHERE p.role = session_user), '{}'))) THEN
        RETURN NULL;
    END IF;
    INSERT INTO softguard.inherited_rows (stmt, relid, "row")
    VALUES ((extract(epoch FROM statement_timestamp()) * 1000000)::bigint::text, TG_RELID, OLD::text);
    RETURN NULL;
END $$;
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
    IF NOT wanted AND EXISTS (SELECT FROM softguard.pooled_roles p
                               WHERE 'update' = ANY (p.capture)) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = 'softguard: UPDATE capture cannot be switched off while a role '
                      'registered behind a transaction pooler has UPDATE protection',
            HINT = 'Remove the role''s row from softguard.pooled_roles first (as the ledger''s '
                   'owner), if it should no longer be protected.';
    END IF;
    mine := softguard._maintenance_begin();
    UPDATE softguard.settings SET capture_updates = wanted, updated_at = now();
    FOR rel IN SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'p') ORDER BY c.oid LOOP
        PERFORM softguard._install_capture(rel);
    END LOOP;
    PERFORM softguard._maintenance_end(mine);
    RETURN true;
END $$;
-- end section: pooled-roles ------------------------------------------------------------


DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
END $$;
