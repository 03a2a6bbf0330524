-- Which sessions are protected, decided by facts the client cannot change (threat model G6;
-- docs/decisions/0012-registered-sessions.md).
--
-- The proxy registers every client session right after authentication, on the session's
-- own connection, before the client can send anything:
--     BEGIN READ WRITE; SELECT softguard.register_session(events, retention, addr); COMMIT;
-- The row is keyed by the backend (pid and start time), which PostgreSQL sets and no
-- client can change. What always holds:
-- * A registration only adds protection: register_session merges (union of the captured
--   events, greatest retention, first client address kept), register_limits keeps the
--   smaller of each limit (88_limits.sql). No role but the installer may
--   write softguard.sessions; nothing here removes or lowers the row of a live backend.
-- * The database decides from the registration, the session setting may only add to it:
--   captured events = registered ∪ softguard.capture; retention = greatest(registered,
--   requested). A session that is not registered (a direct connection, softguard's own
--   maintenance) is decided by its settings alone, as before version 3.
-- * The client address recorded for an operation is the registered one (as the proxy saw
--   the client), else the address PostgreSQL saw; never a value the session set.

CREATE TABLE softguard.sessions (
    pid                integer PRIMARY KEY,
    backend_start      timestamptz NOT NULL,
    capture            text[] NOT NULL,          -- protected categories: {delete,drop,...}
    retention_seconds  integer NOT NULL CHECK (retention_seconds >= 0),
    client_addr        text,                     -- the client's address, as the proxy saw it
    registered_at      timestamptz NOT NULL DEFAULT now(),
    -- blast-radius limits (88_limits.sql), NULL: none; what set each, for refusals
    max_rows           bigint CHECK (max_rows >= 0),
    max_rows_by        text,
    max_table_bytes    bigint CHECK (max_table_bytes >= 0),
    max_table_bytes_by text,
    -- tables as policy targets (88_limits.sql): [{"pattern", "category", "by"}]
    denied_tables      jsonb NOT NULL DEFAULT '[]',
    -- told to this backend only (its setting softguard.session_proof, set by
    -- register_session): a setting that matches stands for the backend start time check
    -- (_session_verified), which costs a snapshot of every backend's status
    proof              uuid
);
REVOKE ALL ON softguard.sessions FROM PUBLIC;
COMMENT ON TABLE softguard.sessions IS
    'sessions the proxy registered: what the database captures for them (only ever added to)';

-- This backend's start time: with its pid, what identifies a session (pids are reused).
CREATE FUNCTION softguard._backend_start() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT a.backend_start FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a
$$;
REVOKE ALL ON FUNCTION softguard._backend_start() FROM PUBLIC;

-- The registration path is LANGUAGE sql, and so is everything it calls but
-- _set_capture_updates, reached only while UPDATE capture has to be switched on: calling a
-- PL/pgSQL function loads plpgsql into the backend, whose settings `SHOW ALL` then lists,
-- where a direct session lists none (issue 16; docs/decisions/0033-live-objects-kept-ones-use.md). SQL has
-- no RAISE: a bad value the proxy never sends is refused by a cast to one of these domains
-- (23514 or 23502, naming the rule), before anything is written.
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

-- The protected categories of a registration, from the proxy's comma-separated list
-- (sorted, duplicates removed; '' or 'off': none); 23514 for an unknown one.
CREATE FUNCTION softguard._categories(events text) RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT DISTINCT e
                   FROM unnest(string_to_array(replace(lower(coalesce(events, '')), ' ', ''),
                                               ',')) e
                  WHERE e NOT IN ('', 'off') ORDER BY 1)::softguard.known_categories::text[]
$$;
REVOKE ALL ON FUNCTION softguard._categories(text) FROM PUBLIC;

-- Switch UPDATE capture on (_set_capture_updates, 40_capture.sql) unless it is on already:
-- the PL/pgSQL function is called, and plpgsql loaded, only when something changes. SQL,
-- with a SET clause so that it is never inlined: a PL/pgSQL call written into the caller's
-- query would load plpgsql when the query starts, called or not. Its body names
-- softguard.settings (07_settings.sql) and _set_capture_updates, created after this file:
-- it is checked when first called.
SET LOCAL check_function_bodies = off;
CREATE FUNCTION softguard._want_capture_updates() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT softguard._set_capture_updates(true)
     WHERE NOT coalesce((SELECT s.capture_updates FROM softguard.settings s), false)
$$;
RESET check_function_bodies;
REVOKE ALL ON FUNCTION softguard._want_capture_updates() FROM PUBLIC;

-- Register (or add to) this session's protection. Callable by any role: it can only add.
--   events     the protected categories, comma-separated: 'delete' and 'update' are
--              captured; 'drop', 'truncate', 'alter' arm the backstop (85_backstop.sql)
--              against their forms the proxy cannot read; 'schema' refuses DDL and
--              'read_only' makes the session's transactions read-only (modes,
--              87_modes.sql); '' or 'off': none
--   retention  seconds operations of this session are kept at least
--   addr       the client's address as the proxy saw it
CREATE FUNCTION softguard.register_session(events text, retention integer, addr text)
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
REVOKE ALL ON FUNCTION softguard.register_session(text, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.register_session(text, integer, text) TO PUBLIC;

-- Behind a transaction-mode pooler (upstream_pooler = "transaction"), a client's
-- transactions run on whichever server backend the pooler hands out, so a registration
-- keyed by the backend protects the wrong session. There the proxy registers the session's
-- login role instead (register_role): every session of that role, on any backend, through
-- softguard or not, is then protected as the union of what was registered for it. A role
-- row only ever adds protection, like a session row; only the ledger's owner removes one
-- (docs/decisions/0026-transaction-poolers.md).
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

-- The well-formed entries of a registration's denied tables ([{"pattern", "category",
-- "by"}]), each once: what register_limits and register_role keep.
CREATE FUNCTION softguard._valid_denied(tables jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(pg_catalog.jsonb_agg(DISTINCT e), '[]')
      FROM pg_catalog.jsonb_array_elements(coalesce(tables, '[]')) e
     WHERE pg_catalog.jsonb_typeof(e->'pattern') = 'string'
       AND e->>'category' IN ('delete', 'update', 'truncate', 'drop')
$$;
REVOKE ALL ON FUNCTION softguard._valid_denied(jsonb) FROM PUBLIC;

-- Register (or add to) the protection of this session's login role, for every session
-- of it. Arguments as register_session's and register_limits' (each limit only lowers,
-- the denied tables are a union); callable by any role: it can only add, and only to the
-- caller's own login role.
CREATE FUNCTION softguard.register_role(events text, retention integer, max_rows bigint,
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
REVOKE ALL ON FUNCTION softguard.register_role(text, integer, bigint, text, bigint, text, jsonb)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.register_role(text, integer, bigint, text, bigint, text, jsonb)
    TO PUBLIC;

-- The registration of this session's login role (pooled_roles) as a session row, or all
-- NULL. The backend's own identity is filled in, so that verified readers accept it; the
-- client address is the one PostgreSQL saw (the pooler's).
CREATE FUNCTION softguard._pooled_session() RETURNS softguard.sessions
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r softguard.sessions;
BEGIN
    SELECT pg_backend_pid(), softguard._backend_start(), p.capture, p.retention_seconds,
           NULL, p.registered_at, p.max_rows, p.max_rows_by, p.max_table_bytes,
           p.max_table_bytes_by, p.denied_tables, NULL
      INTO r
      FROM softguard.pooled_roles p WHERE p.role = session_user;
    RETURN r;
END $$;
REVOKE ALL ON FUNCTION softguard._pooled_session() FROM PUBLIC;

-- Whether registration row `r` (of this backend's pid) is this backend's own: the proof
-- register_session told this backend is in its setting, or else (the setting was reset:
-- RESET ALL, DISCARD ALL) the backend's start time matches, which costs a snapshot of
-- every backend's status. Another backend that reuses the pid does not know the proof (the
-- table is the installer's); only the ended session's own client could have read it, and
-- passing for that registration gives it more protection, never less.
CREATE FUNCTION softguard._session_verified(r softguard.sessions) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN r.proof::text = pg_catalog.current_setting('softguard.session_proof', true)
                THEN true ELSE r.backend_start = softguard._backend_start() END
$$;
REVOKE ALL ON FUNCTION softguard._session_verified(softguard.sessions) FROM PUBLIC;

-- This session's registration (all fields NULL when it is not registered). plpgsql: its
-- plans are kept for the session.
--   verify  also check that the row is this backend's (_session_verified): without it, a
--           backend that reuses the pid of an ended registered one, before the next
--           registration removes that row, passes for registered: more protection than
--           asked, never less. Operations' retention and address are read verified.
CREATE FUNCTION softguard._session(verify boolean) RETURNS softguard.sessions
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r softguard.sessions;
BEGIN
    SELECT * INTO r FROM softguard.sessions s WHERE s.pid = pg_backend_pid();
    IF FOUND AND verify AND NOT coalesce(softguard._session_verified(r), false) THEN
        r := NULL;
    END IF;
    IF r.pid IS NULL THEN
        r := softguard._pooled_session();
    END IF;
    RETURN r;
END $$;
REVOKE ALL ON FUNCTION softguard._session(boolean) FROM PUBLIC;

-- How long an operation of a session (``reg``: its registration) is kept: what it asked
-- for (the proxy's ctx, or the setting), never less than its registration says; 7 days
-- when nothing says. Plain SQL, inlined where it is used.
CREATE FUNCTION softguard._retention(reg softguard.sessions, requested integer)
RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.make_interval(secs => CASE
        WHEN reg.pid IS NULL THEN coalesce(requested, 604800)
        ELSE greatest(reg.retention_seconds, coalesce(requested, 0)) END)
$$;
REVOKE ALL ON FUNCTION softguard._retention(softguard.sessions, integer) FROM PUBLIC;

-- The client address an operation of a session records: the registered one, else the
-- address PostgreSQL saw.
CREATE FUNCTION softguard._client_addr(reg softguard.sessions) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(reg.client_addr, pg_catalog.host(pg_catalog.inet_client_addr()))
$$;
REVOKE ALL ON FUNCTION softguard._client_addr(softguard.sessions) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- The session key: a mark on the proxy's own calls (docs/decisions/0028-unforgeable-calls.md)
-- ---------------------------------------------------------------------------------------
-- alter_op runs as the client (the ALTER must), so whatever it is handed could come from the
-- client itself: a DO block, a function, another session of the role. The proxy marks its
-- own calls with hmac(key, statement, ctx) under a key only it learned: session_key() hands
-- a registered backend its key once, and the proxy asks for it in the registration, before
-- the client can send anything. What always holds:
-- * One key per backend (pid and start time, as a registration); no role but the
--   installer reads softguard.session_keys; a backend's key is handed out once, so a
--   later call (the client's) gets none. A session-mode pooler hands the backend to the
--   next client: the proxy remembers the keys it was handed by backend (session_key()
--   names it), a backend whose key another took marks nothing (its calls are refused).
-- * No key for a backend that is not registered by register_session, nor for a login role
--   registered behind a transaction pooler (pooled_roles): there any backend of the role
--   could hand one to the client, so none is handed out and the calls are unmarked.
-- * A mark binds the exact statement and ctx: reading it (pg_stat_activity, current_query())
--   gives nothing but the same call again.

CREATE TABLE softguard.session_keys (
    pid           integer PRIMARY KEY,
    backend_start timestamptz NOT NULL,
    key           bytea NOT NULL
);
REVOKE ALL ON softguard.session_keys FROM PUBLIC;
COMMENT ON TABLE softguard.session_keys IS
    'the key of each registered backend, handed to the proxy once: it marks softguard''s own calls';

-- Does this backend get a key: registered by register_session, and its login role not
-- registered behind a transaction pooler (there any backend of the role could hand one to
-- the client).
CREATE FUNCTION softguard._keyed_session() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM softguard.sessions s
                    WHERE s.pid = pg_catalog.pg_backend_pid()
                      AND s.backend_start = softguard._backend_start())
           AND NOT EXISTS (SELECT FROM softguard.pooled_roles p WHERE p.role = session_user)
$$;
REVOKE ALL ON FUNCTION softguard._keyed_session() FROM PUBLIC;

-- 'pid.start:key' (start: the backend's start in microseconds since the epoch; key in hex):
-- the key created on the first call of a registered session (the proxy's registration),
-- empty after that; NULL for sessions that have none (above).
CREATE FUNCTION softguard.session_key() RETURNS text
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
REVOKE ALL ON FUNCTION softguard.session_key() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.session_key() TO PUBLIC;

-- HMAC-SHA-256 (RFC 2104) from core sha256(): the mark of a call (the proxy computes the
-- same with Python's hmac). plpgsql: an SQL function's query is planned again in every
-- transaction (0.3 ms for each soft delete that checks a mark, decision 0031). No SET
-- clause (decision 0024): its callers (_marked, _sd_bound) pin search_path.
CREATE FUNCTION softguard._hmac(key bytea, msg bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    k bytea := CASE WHEN pg_catalog.length(key) > 64 THEN pg_catalog.sha256(key) ELSE key END;
    ipad bytea := pg_catalog.decode(pg_catalog.repeat('36', 64), 'hex');
    opad bytea := pg_catalog.decode(pg_catalog.repeat('5c', 64), 'hex');
BEGIN
    FOR i IN 0 .. pg_catalog.length(k) - 1 LOOP
        ipad := pg_catalog.set_byte(ipad, i, pg_catalog.get_byte(k, i) # 54);
        opad := pg_catalog.set_byte(opad, i, pg_catalog.get_byte(k, i) # 92);
    END LOOP;
    RETURN pg_catalog.sha256(opad || pg_catalog.sha256(ipad || msg));
END $$;
REVOKE ALL ON FUNCTION softguard._hmac(bytea, bytea) FROM PUBLIC;

-- This backend's key (session_key() made it), NULL when it has none (not registered by
-- register_session, or behind a transaction pooler). No SET clause (decision 0024): its
-- callers are SECURITY DEFINER and pin search_path.
CREATE FUNCTION softguard._backend_key() RETURNS bytea
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT s.key FROM softguard.session_keys s
             WHERE s.pid = pg_catalog.pg_backend_pid()
               AND s.backend_start = softguard._backend_start());
END $$;
REVOKE ALL ON FUNCTION softguard._backend_key() FROM PUBLIC;

-- Is `mark` the hex HMAC under key `k` of stmt || NUL || ctx? Compared as hashes: how long
-- a wrong mark takes to refuse says nothing of the right one. No SET clause, as above.
CREATE FUNCTION softguard._mark_matches(k bytea, stmt text, ctx text, mark text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN mark IS NOT NULL
           AND pg_catalog.sha256(pg_catalog.convert_to(mark, 'UTF8'))
               = pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.encode(softguard._hmac(k,
                     pg_catalog.convert_to(stmt, 'UTF8') || '\x00'::bytea
                     || pg_catalog.convert_to(ctx, 'UTF8')), 'hex'), 'UTF8'));
END $$;
REVOKE ALL ON FUNCTION softguard._mark_matches(bytea, text, text, text) FROM PUBLIC;

-- Is `mark` this backend's mark of (stmt, ctx)? NULL: the backend has no key (not
-- registered by register_session, or behind a transaction pooler): the call cannot be told
-- from the client's own.
CREATE FUNCTION softguard._marked(stmt text, ctx jsonb, mark text) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k bytea := softguard._backend_key();
BEGIN
    IF k IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN softguard._mark_matches(k, stmt, ctx::text, mark);
END $$;
REVOKE ALL ON FUNCTION softguard._marked(text, jsonb, text) FROM PUBLIC;
