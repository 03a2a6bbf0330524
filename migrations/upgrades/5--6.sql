-- Version 6: transaction-mode poolers (decision 0026); kept objects belong to softguard
-- while kept (decision 0027); the capture path (decision 0024);
-- managed PostgreSQL (decision 0025).
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
CREATE OR REPLACE FUNCTION softguard._valid_denied(tables jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(pg_catalog.jsonb_agg(DISTINCT e), '[]')
      FROM pg_catalog.jsonb_array_elements(coalesce(tables, '[]')) e
     WHERE pg_catalog.jsonb_typeof(e->'pattern') = 'string'
       AND e->>'category' IN ('delete', 'update', 'truncate', 'drop')
$$;
REVOKE ALL ON FUNCTION softguard._valid_denied(jsonb) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard.register_limits(max_rows bigint, max_rows_by text,
                                          max_table_bytes bigint, max_table_bytes_by text,
                                          denied_tables jsonb)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF max_rows < 0 OR max_table_bytes < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'softguard: limits cannot be negative';
    END IF;
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
     WHERE x.pid = s.pid AND s.pid = pg_backend_pid() AND s.backend_start = softguard._backend_start();
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = 'softguard: this session is not registered (register_session first)';
    END IF;
    IF EXISTS (SELECT FROM jsonb_array_elements(coalesce(register_limits.denied_tables, '[]')) e
                WHERE e->>'category' = 'update') THEN
        -- an UPDATE is refused by the table's UPDATE capture trigger, which exists only
        -- while UPDATEs are captured (decision 0023)
        PERFORM softguard._set_capture_updates(true);
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
    denied := softguard._valid_denied(register_role.denied_tables);
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
        denied_tables = softguard._valid_denied(p.denied_tables || excluded.denied_tables);
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
-- softguard._capture_rows: with its final definition in section capture
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

-- section: quarantine-owner ------------------------------------------------------------
DO $$
BEGIN
    IF to_regrole('softguard_keeper') IS NULL THEN
        CREATE ROLE softguard_keeper NOLOGIN NOINHERIT;
        COMMENT ON ROLE softguard_keeper IS 'owns what softguard keeps after a DROP, until undo or purge';
    END IF;
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'softguard_keeper', 'MEMBER') THEN
        EXECUTE format('GRANT softguard_keeper TO %I', current_user);
    END IF;
END $$;
GRANT CREATE ON SCHEMA softguard_quarantine TO softguard_keeper;
CREATE OR REPLACE FUNCTION softguard._acls(p_classid oid, p_objid oid)
RETURNS TABLE (col name, acl aclitem[], kind "char")
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT NULL::name, c.relacl, CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char"
      FROM pg_class c WHERE p_classid = 'pg_class'::regclass AND c.oid = p_objid
    UNION ALL
    SELECT t.attname, t.attacl, 'c' FROM pg_attribute t
     WHERE p_classid = 'pg_class'::regclass AND t.attrelid = p_objid AND t.attnum > 0
       AND NOT t.attisdropped AND t.attacl IS NOT NULL
    UNION ALL
    SELECT NULL, p.proacl, 'f' FROM pg_proc p WHERE p_classid = 'pg_proc'::regclass AND p.oid = p_objid
    UNION ALL
    SELECT NULL, t.typacl, 'T' FROM pg_type t WHERE p_classid = 'pg_type'::regclass AND t.oid = p_objid
    UNION ALL
    SELECT NULL, n.nspacl, 'n' FROM pg_namespace n
     WHERE p_classid = 'pg_namespace'::regclass AND n.oid = p_objid
$$;
REVOKE ALL ON FUNCTION softguard._acls(oid, oid) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._disown(p_classid oid, p_objid oid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    own oid := softguard._owner(p_classid, p_objid);
    keeper oid := to_regrole('softguard_keeper');
    keyword text;
    ident text;
    grant_kw text;
    acl jsonb;
    exact jsonb;            -- each ACL as it was ('' the object's, else a column's)
    grantees text;
    follows boolean;
    linked oid;
    steps jsonb := '[]';
BEGIN
    IF p_classid = 'pg_namespace'::regclass THEN
        SELECT 'SCHEMA', quote_ident(n.nspname) INTO keyword, ident
          FROM pg_namespace n WHERE n.oid = p_objid;
    ELSE
        SELECT k.keyword, k.ident INTO keyword, ident FROM softguard._kw(p_classid, p_objid) k;
    END IF;
    IF own IS NULL OR keeper IS NULL OR keyword IS NULL OR keyword = 'INDEX'
       OR NOT pg_has_role(current_user, own, 'MEMBER')
       -- an array type, a relation's row type, a multirange: privileges and owner follow
       -- the element type, the relation, the range
       OR (p_classid = 'pg_type'::regclass AND EXISTS (
               SELECT FROM pg_type t WHERE t.oid = p_objid
                  AND (t.typtype = 'm'
                       OR t.typelem <> 0 AND t.typsubscript = 'array_subscript_handler'::regproc
                       OR t.typrelid <> 0 AND (SELECT c.relkind FROM pg_class c
                                                WHERE c.oid = t.typrelid) <> 'c'))) THEN
        RETURN steps;
    END IF;
    -- a sequence linked to a table, a range's constructor: their owner follows
    follows := EXISTS (SELECT FROM pg_depend d WHERE d.classid = p_classid AND d.objid = p_objid
                          AND d.deptype IN ('a', 'i') AND d.refclassid <> 'pg_type'::regclass)
               OR (p_classid = 'pg_proc'::regclass AND EXISTS (
                       SELECT FROM pg_depend d WHERE d.classid = p_classid AND d.objid = p_objid
                          AND d.deptype = 'i'));
    grant_kw := CASE WHEN keyword IN ('TABLE', 'VIEW', 'MATERIALIZED VIEW', 'FOREIGN TABLE')
                     THEN 'TABLE'
                     WHEN keyword IN ('FUNCTION', 'PROCEDURE', 'AGGREGATE') THEN 'ROUTINE'
                     ELSE keyword END;
    -- every grant, PUBLIC's default ones included (a NULL ACL is the owner's and PUBLIC's
    -- defaults: EXECUTE on routines, USAGE on types)
    SELECT jsonb_object_agg(coalesce(g.col, ''), g.acl::text),
           coalesce(jsonb_agg(jsonb_build_object(
               'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
               'grantee_oid', a.grantee, 'privilege', a.privilege_type,
               'grantable', a.is_grantable, 'column', g.col)
               ORDER BY g.col NULLS FIRST, a.grantee, a.privilege_type)
               FILTER (WHERE a.grantee IS DISTINCT FROM own AND a.grantee IS NOT NULL), '[]')
      INTO exact, acl
      FROM softguard._acls(p_classid, p_objid) g
      LEFT JOIN LATERAL aclexplode(coalesce(g.acl, CASE WHEN g.col IS NULL
                                                THEN acldefault(g.kind, own) END)) a ON true;
    SELECT string_agg(DISTINCT CASE WHEN e->>'grantee' = 'PUBLIC' THEN 'PUBLIC'
                                    ELSE (e->>'grantee_oid')::oid::regrole::text END, ', ')
      INTO grantees FROM jsonb_array_elements(acl) e;
    IF grantees IS NOT NULL THEN  -- on a table also every column privilege of theirs
        EXECUTE format('REVOKE ALL ON %s %s FROM %s CASCADE', grant_kw, ident, grantees);
    END IF;
    IF NOT follows AND own <> keeper THEN
        EXECUTE format('ALTER %s %s OWNER TO softguard_keeper', keyword, ident);
    END IF;
    IF grantees IS NOT NULL OR (NOT follows AND own <> keeper) THEN
        steps := jsonb_build_array(jsonb_build_object(
            'step', 'owner', 'classid', p_classid, 'oid', p_objid, 'keyword', keyword,
            'grant_keyword', grant_kw, 'identity', ident, 'owner', own::regrole::text,
            'owner_oid', own, 'owner_changed', NOT follows AND own <> keeper, 'acl', acl,
            'exact', exact));
    END IF;
    IF p_classid = 'pg_class'::regclass THEN
        FOR linked IN SELECT d.objid FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
                       WHERE d.classid = 'pg_class'::regclass AND d.refobjid = p_objid
                         AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                         AND c.relkind = 'S' ORDER BY 1 LOOP
            steps := steps || softguard._disown('pg_class'::regclass, linked);
        END LOOP;
    END IF;
    RETURN steps;
END $$;
REVOKE ALL ON FUNCTION softguard._disown(oid, oid) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._quarantine(list jsonb, stmt text, ctx jsonb, invoker text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    op_id bigint;
    n integer := 0;
    steps jsonb := '[]';
    r record;
    x record;
    own oid;
    going oid[];            -- listed relations leaving the live schema (moved or with a schema)
    dropped_schemas text[];
    moves jsonb := '[]';    -- the listed objects to move, in list order
    links jsonb := '[]';    -- links on live objects to record and drop
    kw text;
    qn text;
    acl jsonb;
    expires timestamptz;
    targets text;
    is_super boolean;
    held jsonb;             -- 'classid/objid/objsubid' -> the earlier operation holding it
    reg softguard.sessions := softguard._session(true);
BEGIN
    SELECT rolsuper INTO is_super FROM pg_roles WHERE rolname = session_user;
    IF NOT coalesce((SELECT pg_has_role(session_user, g.oid, 'MEMBER')
                       FROM pg_roles g WHERE g.rolname = invoker), false) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: role %s is not a role of this session', invoker);
    END IF;
    IF coalesce(ctx->>'action', 'DROP') !~ '^DROP( [A-Z]+)*$' THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: %s is not a DROP', ctx->>'action');
    END IF;

    -- 1. The list must be what a DROP by this session would remove.
    FOR r IN SELECT * FROM softguard._list(list) l WHERE l.original LOOP
        own := softguard._owner(r.classid, r.objid);
        IF own IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('softguard cannot keep %s %s', r.object_type, r.object_identity);
        END IF;
        IF NOT is_super AND NOT pg_has_role(session_user, own, 'MEMBER') THEN
            RAISE EXCEPTION USING ERRCODE = '42501',
                MESSAGE = format('must be owner of %s %s', r.object_type, r.object_identity);
        END IF;
    END LOOP;
    IF EXISTS (
        SELECT FROM softguard._list(list) l
         WHERE NOT l.original
           AND NOT EXISTS (
               SELECT FROM pg_depend d
                WHERE d.classid = l.classid AND d.objid = l.objid
                  AND (d.refclassid, d.refobjid) IN (
                      SELECT (e->>'classid')::oid, (e->>'objid')::oid
                        FROM jsonb_array_elements(list) e))
           AND NOT EXISTS (   -- e.g. a view: its listed _RETURN rule depends on the table
               SELECT FROM pg_depend d
                WHERE d.refclassid = l.classid AND d.refobjid = l.objid AND d.deptype = 'i'
                  AND (d.classid, d.objid) IN (
                      SELECT (e->>'classid')::oid, (e->>'objid')::oid
                        FROM jsonb_array_elements(list) e))) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'softguard: the object list does not match what the statement drops';
    END IF;

    expires := now() + softguard._retention(reg, (ctx->>'retention_seconds')::integer);
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, restore)
    VALUES (expires, session_user, invoker, current_setting('application_name', true),
            softguard._client_addr(reg), stmt,
            coalesce(ctx->>'action', 'DROP'), '[]', '[]')
    RETURNING id INTO op_id;

    SELECT coalesce(jsonb_object_agg(format('%s/%s/%s', l.classid, l.objid, l.objsubid),
                                     softguard._holder(l.classid, l.objid, l.objsubid)), '{}')
      INTO held
      FROM softguard._list(list) l
     WHERE coalesce(softguard._is_quarantine_schema(l.home), false);
    SELECT coalesce(array_agg(l.object_name), '{}') INTO dropped_schemas
      FROM softguard._list(list) l WHERE l.object_type = 'schema';
    SELECT coalesce(array_agg(l.objid), '{}') INTO going
      FROM softguard._list(list) l
     WHERE l.classid = 'pg_class'::regclass AND l.objsubid = 0
       AND NOT coalesce(softguard._is_quarantine_schema(l.home), false);

    -- 2. Classify: what moves, what is a link to record and drop, what cannot be kept.
    FOR r IN SELECT * FROM softguard._list(list) l ORDER BY l.ord LOOP
        CONTINUE WHEN coalesce(softguard._is_quarantine_schema(r.home), false);  -- held already
        CONTINUE WHEN r.object_type = 'schema';
        CONTINUE WHEN r.home = ANY (dropped_schemas);          -- stays in its renamed schema
        IF r.object_type = 'table column' THEN
            CONTINUE WHEN r.owned;
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('softguard cannot yet keep columns dropped by CASCADE (column %s)',
                                 r.object_identity),
                HINT = 'Drop the column with ALTER TABLE first, or run the statement without softguard.';
        END IF;
        IF r.classid = 'pg_class'::regclass THEN
            SELECT c.relkind INTO x FROM pg_class c WHERE c.oid = r.objid;
            IF x.relkind IN ('r', 'p', 'f', 'v', 'm') THEN
                moves := moves || jsonb_build_array(to_jsonb(r));  -- partitions move one by one
                CONTINUE;
            END IF;
        END IF;
        CONTINUE WHEN r.owned;                                   -- goes with its owner
        CASE
            WHEN r.object_type IN ('sequence', 'function', 'procedure', 'aggregate', 'type',
                                   'domain') THEN
                moves := moves || jsonb_build_array(to_jsonb(r));
            WHEN r.object_type IN ('index', 'table constraint', 'trigger', 'default value',
                                   'policy', 'rule') THEN
                links := links || jsonb_build_array(to_jsonb(r));
            ELSE
                RAISE EXCEPTION USING ERRCODE = '0A000',
                    MESSAGE = format('softguard cannot keep %s %s (dropped by this statement)',
                                     r.object_type, r.object_identity),
                    HINT = 'Run the statement without softguard if losing it is intended.';
        END CASE;
    END LOOP;

    -- 3. Links from live objects to dropped ones, as a real DROP removes them. Constraints
    --    first (a foreign key may need a listed unique index), indexes last.
    FOR r IN SELECT e.* FROM jsonb_to_recordset(links) AS e(classid oid, objid oid,
                  object_type text, object_identity text, original boolean, ord integer)
             ORDER BY CASE e.object_type WHEN 'table constraint' THEN 0 WHEN 'index' THEN 2
                      ELSE 1 END, e.ord LOOP
        steps := steps || softguard._drop_link(r.classid, r.objid, r.object_identity, r.original);
    END LOOP;

    -- 4. Links from leaving relations to live ones: partition bound, inheritance, FKs.
    FOR x IN SELECT c.oid AS child, i.inhparent AS parent, c.relispartition,
                    pg_get_expr(c.relpartbound, c.oid) AS bound
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhrelid = ANY (going) AND NOT (i.inhparent = ANY (going))
                AND c.relkind IN ('r', 'p', 'f')
              ORDER BY i.inhrelid, i.inhseqno LOOP
        IF x.relispartition THEN
            steps := steps || jsonb_build_array(jsonb_build_object(
                'step', 'detach_partition', 'parent', x.parent,
                'parent_name', x.parent::regclass::text, 'child', x.child,
                'child_name', x.child::regclass::text, 'bound', x.bound));
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', x.parent::regclass,
                           x.child::regclass);
        ELSE
            -- NO INHERIT turns inherited columns and constraints into local ones: record
            -- which were inherited only, to put that back.
            steps := steps || jsonb_build_array(jsonb_build_object(
                'step', 'no_inherit', 'parent', x.parent,
                'parent_name', x.parent::regclass::text, 'child', x.child,
                'child_name', x.child::regclass::text,
                'inherited_columns', (SELECT coalesce(jsonb_agg(a.attname), '[]')
                    FROM pg_attribute a WHERE a.attrelid = x.child AND a.attnum > 0
                     AND NOT a.attisdropped AND NOT a.attislocal AND a.attinhcount = 1),
                'inherited_constraints', (SELECT coalesce(jsonb_agg(c.conname), '[]')
                    FROM pg_constraint c WHERE c.conrelid = x.child AND NOT c.conislocal
                     AND c.coninhcount = 1)));
            EXECUTE format('ALTER TABLE %s NO INHERIT %s', x.child::regclass, x.parent::regclass);
        END IF;
    END LOOP;
    FOR x IN SELECT c.oid FROM pg_constraint c
              WHERE c.contype = 'f' AND c.conrelid = ANY (going)
                AND NOT (c.confrelid = ANY (going)) AND c.conparentid = 0
              ORDER BY c.conrelid, c.conname LOOP
        steps := steps || softguard._drop_link('pg_constraint'::regclass, x.oid,
            (pg_identify_object('pg_constraint'::regclass, x.oid, 0)).identity);
    END LOOP;

    -- 5. Dropped schemas: rename, lock out everybody but the owner (privileges recorded).
    FOR r IN SELECT * FROM softguard._list(list) l WHERE l.object_type = 'schema' ORDER BY l.ord LOOP
        n := n + 1;
        qn := softguard._qname(format('softguard_q%s_', op_id), r.object_name);
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
                   'privilege', a.privilege_type, 'grantable', a.is_grantable) ORDER BY a.o), '[]')
          INTO acl
          FROM pg_namespace s, LATERAL aclexplode(s.nspacl) WITH ORDINALITY AS a(grantor, grantee,
               privilege_type, is_grantable, o)
         WHERE s.oid = r.objid AND a.grantee <> s.nspowner;
        steps := steps || jsonb_build_array(jsonb_build_object(
            'step', 'rename_schema', 'oid', r.objid, 'name', r.object_name, 'qname', qn,
            'acl', acl, 'original', r.original));
        EXECUTE format('ALTER SCHEMA %I RENAME TO %I', r.object_name, qn);
        FOR x IN SELECT DISTINCT e->>'grantee' AS grantee FROM jsonb_array_elements(acl) e LOOP
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %s CASCADE', qn,
                           CASE WHEN x.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(x.grantee) END);
        END LOOP;
        -- the schema first (a non-superuser may give an object only to a role that may
        -- create in its schema), then what stays in it: the objects that own others (a
        -- table its indexes and sequences, a type its array) take those along
        steps := steps || softguard._disown('pg_namespace'::regclass, r.objid);
        FOR x IN SELECT 'pg_class'::regclass::oid AS cls, c.oid AS obj FROM pg_class c
                  WHERE c.relnamespace = r.objid AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                    AND NOT EXISTS (SELECT FROM pg_depend d  -- linked: with its table
                                     WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                       AND d.refclassid = 'pg_class'::regclass
                                       AND d.deptype IN ('a', 'i') AND c.relkind = 'S')
                 UNION ALL
                 SELECT 'pg_proc'::regclass::oid, p.oid FROM pg_proc p WHERE p.pronamespace = r.objid
                 UNION ALL
                 SELECT 'pg_type'::regclass::oid, t.oid FROM pg_type t
                  WHERE t.typnamespace = r.objid AND t.typtype IN ('b', 'c', 'd', 'e', 'r', 'm')
                 UNION ALL
                 SELECT 'pg_statistic_ext'::regclass::oid, st.oid FROM pg_statistic_ext st
                  WHERE st.stxnamespace = r.objid
                 ORDER BY 1, 2 LOOP
            steps := steps || softguard._disown(x.cls, x.obj);
        END LOOP;
    END LOOP;

    -- 6. Move into softguard_quarantine under op<id>_<n>_<name>.
    FOR r IN SELECT e.* FROM jsonb_to_recordset(moves) AS e(classid oid, objid oid,
                  object_type text, object_identity text, original boolean, ord integer)
             ORDER BY e.ord LOOP
        IF r.classid = 'pg_class'::regclass THEN
            SELECT c.relkind, c.relname, c.relnamespace INTO x FROM pg_class c WHERE c.oid = r.objid;
            kw := CASE x.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                      WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END;
            IF x.relkind = 'S' THEN
                -- a sequence owned by a live table's column (DROP SEQUENCE ... CASCADE)
                FOR own IN SELECT d.refobjid FROM pg_depend d
                            WHERE d.classid = 'pg_class'::regclass AND d.objid = r.objid
                              AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a' LOOP
                    steps := steps || jsonb_build_array(jsonb_build_object(
                        'step', 'seq_owned_by', 'seq', r.objid, 'table', own,
                        'column', (SELECT a.attname FROM pg_depend d JOIN pg_attribute a
                                     ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                                    WHERE d.classid = 'pg_class'::regclass AND d.objid = r.objid
                                      AND d.refobjid = own AND d.deptype = 'a')));
                    EXECUTE format('ALTER SEQUENCE %s OWNED BY NONE', r.objid::regclass);
                END LOOP;
            END IF;
            -- Indexes, owned sequences, statistics go along; rename them so that the names
            -- are free in the live schema and unique in quarantine.
            FOR own, qn IN
                SELECT i.indexrelid, ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 WHERE i.indrelid = r.objid
                UNION ALL
                SELECT d.objid, sc.relname FROM pg_depend d JOIN pg_class sc ON sc.oid = d.objid
                 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND d.refobjid = r.objid AND d.deptype IN ('a', 'i') AND sc.relkind = 'S'
                ORDER BY 1 LOOP
                n := n + 1;
                steps := steps || jsonb_build_array(jsonb_build_object(
                    'step', 'rename', 'class', 'relation', 'oid', own, 'name', qn,
                    'qname', softguard._qname(format('op%s_%s_', op_id, n), qn), 'parent', r.objid));
                EXECUTE format('ALTER INDEX %s RENAME TO %I', own::regclass,
                               softguard._qname(format('op%s_%s_', op_id, n), qn));
            END LOOP;
            FOR own, qn IN SELECT s.oid, s.stxname FROM pg_statistic_ext s
                            WHERE s.stxrelid = r.objid ORDER BY 1 LOOP
                n := n + 1;
                steps := steps || softguard._move(op_id, n, 'pg_statistic_ext'::regclass, own, false)
                               || softguard._disown('pg_statistic_ext'::regclass, own);
            END LOOP;
        END IF;
        IF r.classid = 'pg_type'::regclass THEN
            -- What PostgreSQL made with a range type does not follow it to another schema
            -- or name: its multirange and the constructor functions of both. Move them
            -- too, or re-creating the range in the live schema fails (42710, 42723).
            FOR x IN SELECT 'pg_type'::regclass::oid AS cls, rg.rngmultitypid AS obj
                       FROM pg_range rg WHERE rg.rngtypid = r.objid AND rg.rngmultitypid <> 0
                     UNION ALL
                     SELECT 'pg_proc'::regclass::oid, d.objid FROM pg_depend d
                      WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'i'
                        AND d.refclassid = 'pg_type'::regclass
                        AND d.refobjid IN (SELECT r.objid UNION ALL
                                           SELECT rg.rngmultitypid FROM pg_range rg
                                            WHERE rg.rngtypid = r.objid)
                     ORDER BY 1 DESC, 2 LOOP
                n := n + 1;
                steps := steps || softguard._move(op_id, n, x.cls, x.obj, false)
                               || softguard._disown(x.cls, x.obj);
            END LOOP;
        END IF;
        n := n + 1;
        steps := steps || softguard._move(op_id, n, r.classid, r.objid, r.original)
                       || softguard._disown(r.classid, r.objid);
    END LOOP;

    -- 7. The operation: objects (with where each went), estimates, the plan.
    -- in the statement's order (PostgreSQL lists them in its deletion order)
    SELECT string_agg(l.object_identity, ', '
                      ORDER BY nullif(strpos(lower(stmt), lower(l.object_name)), 0) NULLS LAST,
                               l.ord) INTO targets
      FROM softguard._list(list) l WHERE l.original;
    UPDATE softguard.operations o SET
        restore = steps,
        objects = (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'type', l.object_type, 'identity', l.object_identity,
                       'schema', l.schema_name, 'name', l.object_name,
                       'original', l.original, 'normal', l.normal,
                       'classid', l.classid, 'objid', l.objid, 'objsubid', l.objsubid,
                       'quarantined_as', CASE WHEN h.held_by IS NULL THEN
                           (pg_identify_object(l.classid, l.objid, l.objsubid)).identity END,
                       'held_by', h.held_by) ORDER BY l.ord), '[]')
              FROM softguard._list(list) l,
                   LATERAL (SELECT (held->>format('%s/%s/%s', l.classid, l.objid, l.objsubid))::bigint
                                   AS held_by) h),
        row_counts = jsonb_build_object('estimate', true, 'tables', (
            SELECT coalesce(jsonb_object_agg(l.object_identity,
                       CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END), '{}')
              FROM softguard._list(list) l JOIN pg_class c ON c.oid = l.objid
             WHERE l.classid = 'pg_class'::regclass AND l.objsubid = 0
               AND c.relkind IN ('r', 'm')
               AND NOT held ? format('%s/%s/%s', l.classid, l.objid, l.objsubid)))
     WHERE o.id = op_id;

    RETURN softguard._op_notice(coalesce(ctx->>'action', 'DROP'), targets, op_id, expires);
END $$;
CREATE OR REPLACE FUNCTION softguard._exact_acl(cls oid, obj oid, col name, was aclitem[], now aclitem[],
                                     kind "char") RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    want aclitem[] := coalesce(was, acldefault(kind, softguard._owner(cls, obj)));
BEGIN
    IF NOT (now @> want AND want @> now) THEN
        RETURN;
    END IF;
    IF col IS NOT NULL THEN
        UPDATE pg_attribute SET attacl = was WHERE attrelid = obj AND attname = col;
    ELSIF cls = 'pg_class'::regclass THEN
        UPDATE pg_class SET relacl = was WHERE oid = obj;
    ELSIF cls = 'pg_proc'::regclass THEN
        UPDATE pg_proc SET proacl = was WHERE oid = obj;
    ELSIF cls = 'pg_type'::regclass THEN
        UPDATE pg_type SET typacl = was WHERE oid = obj;
    ELSIF cls = 'pg_namespace'::regclass THEN
        UPDATE pg_namespace SET nspacl = was WHERE oid = obj;
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._exact_acl(oid, oid, name, aclitem[], aclitem[], "char") FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._undo_owner(op bigint, s jsonb) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who name;
    ident text;
    grantee text;
    e jsonb;
    cls oid := (s->>'classid')::oid;
    obj oid := (s->>'oid')::oid;
    missing boolean := false;  -- a grantee no longer exists
    lines softguard.undo_step[] := '{}';
BEGIN
    -- by oid, else a role created again under its name (what the hint below asks for)
    SELECT r.rolname INTO who FROM pg_roles r WHERE r.oid = (s->>'owner_oid')::oid;
    IF who IS NULL THEN
        SELECT r.rolname INTO who FROM pg_roles r WHERE r.oid = to_regrole(s->>'owner');
    END IF;
    IF who IS NULL AND coalesce((s->>'owner_changed')::boolean, true) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: role %s, which owned %s %s, no longer '
                             'exists', op, s->>'owner', lower(s->>'keyword'), s->>'identity'),
            HINT = format('Create the role again (CREATE ROLE %I), then undo: softguard gives '
                          'each object back to the role that owned it.', s->>'owner');
    END IF;
    IF cls = 'pg_namespace'::regclass THEN
        SELECT quote_ident(n.nspname) INTO ident FROM pg_namespace n WHERE n.oid = obj;
    ELSE
        ident := (softguard._kw(cls, obj)).ident;
    END IF;
    IF ident IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: %s %s is no longer where it was kept',
                             op, lower(s->>'keyword'), s->>'identity');
    END IF;
    IF coalesce((s->>'owner_changed')::boolean, true) THEN
        EXECUTE format('ALTER %s %s OWNER TO %I', s->>'keyword', ident, who);
    END IF;
    FOR e IN SELECT x FROM jsonb_array_elements(s->'acl') x LOOP
        grantee := CASE WHEN e->>'grantee' = 'PUBLIC' THEN 'PUBLIC'
                        ELSE (SELECT quote_ident(r.rolname) FROM pg_roles r
                               WHERE r.oid = (e->>'grantee_oid')::oid) END;
        IF grantee IS NULL THEN
            missing := true;
            lines := lines || softguard._step(op, 'skipped', s->>'identity',
                format('%s on %s %s not given back to role %s: it no longer exists',
                       e->>'privilege', lower(s->>'keyword'), s->>'identity', e->>'grantee'));
            CONTINUE;
        END IF;
        EXECUTE format('GRANT %s%s ON %s %s TO %s%s', e->>'privilege',
                       CASE WHEN e->>'column' IS NULL THEN '' ELSE format(' (%I)', e->>'column') END,
                       s->>'grant_keyword', ident, grantee,
                       CASE WHEN (e->>'grantable')::boolean THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    -- The grants above gave back the same privileges; put back each ACL exactly as it was
    -- (the order of its items, NULL for PostgreSQL's defaults), where it holds the same
    -- set. A direct catalog write, so only where the ledger's owner is a superuser; not
    -- when a grantee is gone (the ACL as it was names it).
    IF s ? 'exact' AND NOT missing
       AND (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
        PERFORM softguard._exact_acl(cls, obj, g.col, (s->'exact'->>coalesce(g.col, ''))::aclitem[],
                                     coalesce(g.acl, acldefault(g.kind, softguard._owner(cls, obj))),
                                     g.kind)
           FROM softguard._acls(cls, obj) g WHERE s->'exact' ? coalesce(g.col, '');
    END IF;
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_owner(bigint, jsonb) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._undo_one(op bigint, rename_to text) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    s jsonb;
    e jsonb;
    d jsonb;
    k record;
    target text;
    nsp_name text;
    nsp oid;
    lines softguard.undo_step[] := '{}';
    n_orig integer;
    renamed jsonb := '{}';   -- parent oid -> [old name, new name] when --rename-to renamed it
    ddl text;
    cur text;
BEGIN
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('softguard: operation %s does not exist', op);
    END IF;
    IF o.kind = 'UNDO' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s is the record of an undo (of operation %s), not reversible',
                             op, o.undo_of);
    ELSIF o.state = 'undone' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s is already undone (at %s by %s)', op,
                             to_char(o.undone_at, 'YYYY-MM-DD HH24:MI:SS'), o.undone_by);
    ELSIF o.state = 'purged' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s was purged (at %s by %s): nothing is left to restore',
                             op, to_char(o.purged_at, 'YYYY-MM-DD HH24:MI:SS'), o.purged_by);
    END IF;
    IF rename_to IS NOT NULL THEN
        SELECT count(*) INTO n_orig FROM jsonb_array_elements(o.restore) x
         WHERE (x->>'original')::boolean
           AND x->>'step' IN ('move', 'rename_schema', 'drop_index');
        IF n_orig <> 1 THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('--rename-to needs an operation on a single object; operation %s has %s',
                                 op, n_orig);
        END IF;
    END IF;

    FOR s IN SELECT x FROM jsonb_array_elements(o.restore) WITH ORDINALITY AS t(x, i)
              ORDER BY t.i DESC LOOP
        CASE s->>'step'
        WHEN 'move' THEN
            k := softguard._kw((s->>'classid')::oid, (s->>'oid')::oid);
            IF k.keyword IS NULL OR k.name <> s->>'qname'
               OR k.nsp <> 'softguard_quarantine'::regnamespace THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s %s.%s is no longer where it was '
                                     'kept (softguard_quarantine.%s)', op, lower(s->>'keyword'),
                                     s->>'schema', s->>'name', s->>'qname');
            END IF;
            nsp := (s->>'schema_oid')::oid;
            SELECT n.nspname INTO nsp_name FROM pg_namespace n WHERE n.oid = nsp;
            IF nsp_name IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: schema %s no longer exists',
                                     op, s->>'schema'),
                    HINT = format('CREATE SCHEMA %I first.', s->>'schema');
            END IF;
            PERFORM softguard._need_live(op, 'pg_namespace'::regclass, nsp,
                format('%s %s.%s', lower(s->>'keyword'), s->>'schema', s->>'name'));
            target := CASE WHEN (s->>'original')::boolean AND rename_to IS NOT NULL
                           THEN rename_to ELSE s->>'name' END;
            IF softguard._name_taken(s->>'class', nsp, target, (s->>'oid')::oid) THEN
                RAISE EXCEPTION USING ERRCODE = CASE s->>'class' WHEN 'routine' THEN '42723'
                        WHEN 'relation' THEN '42P07' ELSE '42710' END,
                    MESSAGE = format('cannot undo operation %s: %s %s already exists (created after the DROP)',
                                     op, lower(s->>'keyword'), format('%I.%I', nsp_name, target)),
                    HINT = 'use --rename-to NEW_NAME';
            END IF;
            EXECUTE format('ALTER %s %s RENAME TO %I', s->>'keyword', k.ident, target);
            k := softguard._kw((s->>'classid')::oid, (s->>'oid')::oid);
            EXECUTE format('ALTER %s %s SET SCHEMA %I', s->>'keyword', k.ident, nsp_name);
            IF target <> s->>'name' THEN
                renamed := renamed || jsonb_build_object(s->>'oid',
                                                         jsonb_build_array(s->>'name', target));
            END IF;
            cur := (softguard._kw((s->>'classid')::oid, (s->>'oid')::oid)).ident;
            lines := lines || softguard._step(op, 'restored', cur,
                                              format('restored %s %s', lower(s->>'keyword'), cur));
        WHEN 'rename' THEN
            SELECT c.relname, c.relnamespace, c.oid::regclass::text AS ident INTO k
              FROM pg_class c WHERE c.oid = (s->>'oid')::oid;
            IF NOT FOUND OR k.relname <> s->>'qname' THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s is no longer named %s',
                                     op, s->>'name', s->>'qname');
            END IF;
            target := s->>'name';
            IF renamed ? (s->>'parent')
               AND starts_with(target, renamed->(s->>'parent')->>0) THEN
                target := (renamed->(s->>'parent')->>1)
                          || substr(target, length(renamed->(s->>'parent')->>0) + 1);
            END IF;
            IF softguard._name_taken('relation', k.relnamespace, target, 0) THEN
                RAISE EXCEPTION USING ERRCODE = '42P07',
                    MESSAGE = format('cannot undo operation %s: relation %s already exists (created after the DROP)',
                                     op, format('%I.%I', k.relnamespace::regnamespace, target)),
                    HINT = 'use --rename-to NEW_NAME';
            END IF;
            EXECUTE format('ALTER INDEX %s RENAME TO %I', k.ident, target);
        WHEN 'rename_schema' THEN
            SELECT n.nspname INTO nsp_name FROM pg_namespace n WHERE n.oid = (s->>'oid')::oid;
            IF nsp_name IS DISTINCT FROM s->>'qname' THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: schema %s is no longer kept as %s',
                                     op, s->>'name', s->>'qname');
            END IF;
            target := CASE WHEN (s->>'original')::boolean AND rename_to IS NOT NULL
                           THEN rename_to ELSE s->>'name' END;
            IF EXISTS (SELECT FROM pg_namespace n WHERE n.nspname = target) THEN
                RAISE EXCEPTION USING ERRCODE = '42P06',
                    MESSAGE = format('cannot undo operation %s: schema %I already exists (created after the DROP)',
                                     op, target),
                    HINT = 'use --rename-to NEW_NAME';
            END IF;
            EXECUTE format('ALTER SCHEMA %I RENAME TO %I', nsp_name, target);
            FOR e IN SELECT x FROM jsonb_array_elements(s->'acl') x LOOP
                IF e->>'grantee' <> 'PUBLIC'
                   AND to_regrole(e->>'grantee') IS NULL THEN
                    lines := lines || softguard._step(op, 'skipped', quote_ident(target),
                        format('%s on schema %I not given back to role %s: it no longer exists',
                               e->>'privilege', target, e->>'grantee'));
                    CONTINUE;
                END IF;
                EXECUTE format('GRANT %s ON SCHEMA %I TO %s%s', e->>'privilege', target,
                               CASE WHEN e->>'grantee' = 'PUBLIC' THEN 'PUBLIC'
                                    ELSE quote_ident(e->>'grantee') END,
                               CASE WHEN (e->>'grantable')::boolean THEN ' WITH GRANT OPTION' ELSE '' END);
            END LOOP;
            lines := lines || softguard._step(op, 'restored', quote_ident(target),
                                              format('restored schema %I', target));
        WHEN 'owner' THEN
            lines := lines || softguard._undo_owner(op, s);
        WHEN 'seq_owned_by' THEN
            EXECUTE format('ALTER SEQUENCE %s OWNED BY %s.%I', (s->>'seq')::oid::regclass,
                           (s->>'table')::oid::regclass, s->>'column');
        WHEN 'no_inherit' THEN
            PERFORM softguard._need_live(op, 'pg_class'::regclass, (s->>'parent')::oid,
                                         'table ' || (s->>'child_name'));
            EXECUTE format('ALTER TABLE %s INHERIT %s', (s->>'child')::oid::regclass,
                           (s->>'parent')::oid::regclass);
            UPDATE pg_attribute SET attislocal = false
             WHERE attrelid = (s->>'child')::oid
               AND attname IN (SELECT jsonb_array_elements_text(s->'inherited_columns'));
            UPDATE pg_constraint SET conislocal = false
             WHERE conrelid = (s->>'child')::oid
               AND conname IN (SELECT jsonb_array_elements_text(s->'inherited_constraints'));
            lines := lines || softguard._step(op, 're-established', (s->>'child')::oid::regclass::text,
                format('re-established inheritance of %s from %s',
                       (s->>'child')::oid::regclass, (s->>'parent')::oid::regclass));
        WHEN 'detach_partition' THEN
            PERFORM softguard._need_live(op, 'pg_class'::regclass, (s->>'parent')::oid,
                                         'partition ' || (s->>'child_name'));
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s %s', (s->>'parent')::oid::regclass,
                           (s->>'child')::oid::regclass, s->>'bound');
            lines := lines || softguard._step(op, 're-attached', (s->>'child')::oid::regclass::text,
                format('re-attached partition %s to %s',
                       (s->>'child')::oid::regclass, (s->>'parent')::oid::regclass));
        ELSE
            -- a recorded definition on a live table: its table and everything it uses must
            -- be live again
            PERFORM softguard._need_live(op, 'pg_class'::regclass, (s->>'table')::oid,
                                         s->>'identity', s->>'table_name');
            cur := (s->>'table')::oid::regclass::text;
            -- definitions that name their table (triggers, policies, rules, indexes)
            IF cur <> s->>'table_name' AND s->>'step' <> 'drop_constraint'
               AND s->>'step' <> 'drop_default' THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: table %s was renamed %s since',
                                     op, s->>'table_name', cur);
            END IF;
            FOR d IN SELECT x FROM jsonb_array_elements(s->'deps') x LOOP
                PERFORM softguard._need_live(op, (d->>'classid')::oid, (d->>'objid')::oid,
                                             s->>'identity', d->>'identity');
            END LOOP;
            CASE s->>'step'
            WHEN 'drop_constraint' THEN
                ddl := s->>'def';
                IF s->>'ref_table' IS NOT NULL
                   AND (s->>'ref_table')::oid::regclass::text <> s->>'ref_name' THEN
                    -- the referenced table came back under another name (--rename-to)
                    ddl := replace(ddl, ' REFERENCES ' || (s->>'ref_name') || '(',
                                   ' REFERENCES ' || (s->>'ref_table')::oid::regclass::text || '(');
                END IF;
                s := s || jsonb_build_object('def', ddl);
                IF (s->>'validated')::boolean AND s->>'contype' IN ('f', 'c')
                   AND NOT (s->>'partitioned')::boolean THEN
                    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID', cur,
                                   s->>'name', s->>'def');
                    EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', cur, s->>'name');
                ELSE
                    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', cur, s->>'name', s->>'def');
                END IF;
                IF s->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON CONSTRAINT %I ON %s IS %L', s->>'name', cur,
                                   s->>'comment');
                END IF;
                lines := lines || softguard._step(op, 're-added', format('%I on %s', s->>'name', cur),
                                                  format('re-added constraint %I on %s', s->>'name', cur));
            WHEN 'drop_trigger' THEN
                EXECUTE s->>'def';
                IF s->>'enabled' <> 'O' THEN
                    EXECUTE format('ALTER TABLE %s %s TRIGGER %I', cur,
                                   CASE s->>'enabled' WHEN 'D' THEN 'DISABLE'
                                        WHEN 'R' THEN 'ENABLE REPLICA' ELSE 'ENABLE ALWAYS' END,
                                   s->>'name');
                END IF;
                IF s->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON TRIGGER %I ON %s IS %L', s->>'name', cur,
                                   s->>'comment');
                END IF;
                lines := lines || softguard._step(op, 're-created', format('%I on %s', s->>'name', cur),
                                                  format('re-created trigger %I on %s', s->>'name', cur));
            WHEN 'drop_default' THEN
                EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', cur, s->>'name',
                               s->>'def');
                lines := lines || softguard._step(op, 're-set', format('%s.%I', cur, s->>'name'),
                                                  format('re-set default of %s.%I', cur, s->>'name'));
            WHEN 'drop_policy' THEN
                EXECUTE s->>'def';
                IF s->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON POLICY %I ON %s IS %L', s->>'name', cur,
                                   s->>'comment');
                END IF;
                lines := lines || softguard._step(op, 're-created', format('%I on %s', s->>'name', cur),
                                                  format('re-created policy %I on %s', s->>'name', cur));
            WHEN 'drop_rule' THEN
                EXECUTE s->>'def';
                IF s->>'enabled' <> 'O' THEN
                    EXECUTE format('ALTER TABLE %s %s RULE %I', cur,
                                   CASE s->>'enabled' WHEN 'D' THEN 'DISABLE'
                                        WHEN 'R' THEN 'ENABLE REPLICA' ELSE 'ENABLE ALWAYS' END,
                                   s->>'name');
                END IF;
                IF s->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON RULE %I ON %s IS %L', s->>'name', cur,
                                   s->>'comment');
                END IF;
                lines := lines || softguard._step(op, 're-created', format('%I on %s', s->>'name', cur),
                                                  format('re-created rule %I on %s', s->>'name', cur));
            WHEN 'drop_index' THEN
                target := CASE WHEN (s->>'original')::boolean AND rename_to IS NOT NULL
                               THEN rename_to ELSE s->>'name' END;
                SELECT c.relnamespace INTO nsp FROM pg_class c WHERE c.oid = (s->>'table')::oid;
                IF softguard._name_taken('relation', nsp, target, 0) THEN
                    RAISE EXCEPTION USING ERRCODE = '42P07',
                        MESSAGE = format('cannot undo operation %s: relation %s already exists (created after the DROP)',
                                         op, format('%I.%I', nsp::regnamespace, target)),
                        HINT = 'use --rename-to NEW_NAME';
                END IF;
                ddl := s->>'def';
                IF target <> s->>'name' THEN
                    -- pg_get_indexdef: 'CREATE [UNIQUE ]INDEX <name> ON ...'
                    ddl := overlay(ddl PLACING quote_ident(target)
                                   FROM position(' INDEX ' IN ddl) + 7
                                   FOR length(quote_ident(s->>'name')));
                END IF;
                EXECUTE ddl;
                cur := format('%I.%I', nsp::regnamespace, target);
                IF s->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON INDEX %s IS %L', cur, s->>'comment');
                END IF;
                IF (s->>'clustered')::boolean THEN
                    EXECUTE format('ALTER TABLE %s CLUSTER ON %I', (s->>'table')::oid::regclass, target);
                END IF;
                IF (s->>'replident')::boolean THEN
                    EXECUTE format('ALTER TABLE %s REPLICA IDENTITY USING INDEX %I',
                                   (s->>'table')::oid::regclass, target);
                END IF;
                lines := lines || softguard._step(op, 're-created', cur, format('re-created index %s', cur));
            ELSE
                RAISE EXCEPTION USING ERRCODE = 'XX000',
                    MESSAGE = format('softguard: unknown restore step %s in operation %s',
                                     s->>'step', op);
            END CASE;
        END CASE;
    END LOOP;

    -- Everything restored must find what it uses live: a later operation may hold it.
    FOR e IN SELECT x FROM jsonb_array_elements(o.objects) x
              WHERE x->>'held_by' IS NULL AND x->>'quarantined_as' IS NOT NULL LOOP
        FOR k IN SELECT dp.refclassid, dp.refobjid FROM pg_depend dp
                  WHERE dp.classid = (e->>'classid')::oid AND dp.objid = (e->>'objid')::oid
                    AND dp.objsubid = (e->>'objsubid')::integer
                    AND dp.deptype IN ('n', 'a') LOOP
            PERFORM softguard._need_live(op, k.refclassid, k.refobjid,
                                         (e->>'type') || ' ' || (e->>'identity'));
        END LOOP;
    END LOOP;

    -- The tables it gave back, and those it gave a foreign key back, carry the capture
    -- triggers their links now need (a foreign key ON DELETE SET NULL: the UPDATE one,
    -- decision 0023); undo's DDL runs as maintenance, which the tamper guard lets be.
    FOR k IN SELECT DISTINCT st.rel FROM softguard._capture_state(ARRAY(
                 SELECT (x->>'oid')::oid FROM jsonb_array_elements(o.restore) x
                  WHERE x->>'step' = 'move' AND x->>'class' = 'relation'
                 UNION
                 SELECT (x->>'table')::oid FROM jsonb_array_elements(o.restore) x
                  WHERE x->>'step' = 'drop_constraint' AND x->>'table' IS NOT NULL)) st
              WHERE st.state <> 'ok' LOOP
        PERFORM softguard._install_capture_maintained(k.rel);
    END LOOP;

    PERFORM softguard._record_undo(o, CASE WHEN rename_to IS NULL THEN ''
                                           ELSE ' --rename-to ' || rename_to END);
    RETURN lines;
END $$;
CREATE OR REPLACE FUNCTION softguard.purge_op(op bigint, archive text DEFAULT NULL,
                                   lock_timeout text DEFAULT '2s',
                                   inline_rows bigint DEFAULT 10000)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    r record;
    stmt text;
    list jsonb;
    bad record;
    held_by bigint;
    n_objects integer := 0;
    n_rows bigint;
    released text;
    mine boolean;
BEGIN
    PERFORM set_config('lock_timeout', coalesce(lock_timeout, '2s'), true);
    mine := softguard._maintenance_begin();
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('softguard: operation %s does not exist', op);
    END IF;
    IF o.state = 'purged' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s was already purged (at %s by %s)', op,
                             to_char(o.purged_at, 'YYYY-MM-DD HH24:MI:SS'), o.purged_by);
    END IF;

    IF o.state = 'active' AND o.kind <> 'UNDO' THEN
        -- 1. Lock what it holds (in oid order), waiting at most lock_timeout. Not views:
        --    LOCK TABLE on a view locks every table it reads, with the rights of the view's
        --    owner, softguard_keeper, which has none (decision 0027); nothing can use a
        --    kept view meanwhile anyway.
        FOR r IN SELECT h.relid FROM softguard.held_relations(op) h
                  WHERE h.relkind IN ('r', 'p', 'f') ORDER BY h.relid LOOP
            EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', r.relid::regclass);
        END LOOP;

        -- 2. Drop each object (schemas last); each DROP ... CASCADE is probed first: it
        --    must take nothing but what this operation holds.
        FOR r IN SELECT h.* FROM softguard._held_objects(op) h
                  ORDER BY (h.classid = 'pg_namespace'::regclass), h.classid, h.objid LOOP
            IF r.classid = 'pg_namespace'::regclass THEN
                CONTINUE WHEN NOT EXISTS (SELECT FROM pg_namespace n WHERE n.oid = r.objid);
            ELSE
                CONTINUE WHEN (pg_identify_object(r.classid, r.objid, 0)).identity IS NULL;
            END IF;
            stmt := format('DROP %s %s CASCADE', r.keyword, r.ident);
            list := softguard._probe(stmt);
            SELECT x->>'object_type' AS type, x->>'object_identity' AS identity,
                   softguard._holder((x->>'classid')::oid, (x->>'objid')::oid,
                                     (x->>'objsubid')::integer) AS holder
              INTO bad
              FROM jsonb_array_elements(list) x
             WHERE (x->>'normal')::boolean AND NOT (x->>'original')::boolean
               AND softguard._holder((x->>'classid')::oid, (x->>'objid')::oid,
                                     (x->>'objsubid')::integer) IS DISTINCT FROM op
             LIMIT 1;
            IF FOUND THEN
                held_by := bad.holder;
                IF held_by IS NOT NULL THEN
                    RAISE EXCEPTION USING ERRCODE = '55006',
                        MESSAGE = format('cannot purge operation %s: dropping %s %s would also '
                                         'remove %s %s, held by operation %s',
                                         op, lower(r.keyword), r.ident, bad.type, bad.identity,
                                         held_by),
                        HINT = format('Purge operation %s first (or undo it).', held_by);
                END IF;
                RAISE EXCEPTION USING ERRCODE = '55006',
                    MESSAGE = format('cannot purge operation %s: dropping %s %s would also '
                                     'remove %s %s, which is not in quarantine',
                                     op, lower(r.keyword), r.ident, bad.type, bad.identity),
                    HINT = 'Something was made to depend on a quarantined object: remove that '
                           'dependency first.';
            END IF;
            EXECUTE stmt;
            n_objects := n_objects + 1;
        END LOOP;
    END IF;

    -- 3. Captured rows: released; deleted now when few.
    UPDATE softguard.captures c SET released_at = now()
     WHERE c.op_id = op AND c.released_at IS NULL;
    SELECT coalesce(sum(c.n_rows), 0) INTO n_rows FROM softguard.captures c WHERE c.op_id = op;
    IF n_rows <= inline_rows THEN
        DELETE FROM softguard.captured_rows cr
         WHERE cr.capture_id = ANY (ARRAY(SELECT c.id FROM softguard.captures c
                                           WHERE c.op_id = op));
        DELETE FROM softguard.captures c WHERE c.op_id = op;
        released := format('%s captured rows deleted', n_rows);
    ELSE
        released := format('%s captured rows released (deleted in batches)', n_rows);
    END IF;

    IF o.state <> 'active' OR o.kind = 'UNDO' THEN
        PERFORM softguard._maintenance_end(mine);
        RETURN format('operation %s: %s, nothing in quarantine; %s', op,
                      CASE WHEN o.kind = 'UNDO' THEN 'the record of an undo'
                           ELSE format('undone at %s', to_char(o.undone_at, 'YYYY-MM-DD HH24:MI:SS'))
                      END, released);
    END IF;
    UPDATE softguard.operations
       SET state = 'purged', purged_at = now(), purged_by = session_user, purge_archive = archive
     WHERE id = op;
    PERFORM softguard._maintenance_end(mine);
    RETURN format('operation %s: purged (%s objects dropped, %s)', op, n_objects, released);
END $$;
-- end section: quarantine-owner --------------------------------------------------------

-- section: quiet-install ---------------------------------------------------------------
CREATE OR REPLACE FUNCTION softguard._capture_install_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF current_setting('softguard.probe', true) = 'on' THEN
        RETURN;
    END IF;
    FOR r IN SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() c
              WHERE c.classid = 'pg_class'::regclass AND c.objsubid = 0
                AND c.object_type IN ('table', 'partitioned table') LOOP
        PERFORM softguard._install_capture(r.objid);
    END LOOP;
END $$;
CREATE OR REPLACE FUNCTION softguard._install_capture_now(rel oid) RETURNS void
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
REVOKE ALL ON FUNCTION softguard._install_capture_now(oid) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._install_capture(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    saved text := current_setting('session_replication_role');
BEGIN
    -- In replica mode where softguard may set it (_replica): the user's own event triggers
    -- (enabled for origin, the default) do not see the CREATE TRIGGER and ALTER TABLE
    -- commands softguard runs in the client's session (issue 16 class 1); softguard's,
    -- enabled ALWAYS, still do.
    PERFORM softguard._replica('replica');
    PERFORM softguard._install_capture_now(rel);
    PERFORM softguard._replica(saved);
END $$;
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
    IF NOT (SELECT g.capture_updates FROM softguard.settings g) THEN
        -- While UPDATEs are not captured (decision 0023), a table needs the UPDATE capture
        -- trigger only while an ON DELETE SET NULL / SET DEFAULT key points from it; the
        -- statement changing that is repaired, not refused, since it asked for nothing to
        -- be switched off:
        -- * such a key added: the UPDATE capture trigger installed (ddl_command_end only;
        --   and only where none exists under any name: a renamed one is tampering, refused
        --   below);
        -- * the last such key gone (ALTER TABLE ... DROP CONSTRAINT, or a DROP through
        --   softguard taking it along; sql_drop reports the key's RI triggers): the extra
        --   capture (a statement trigger firing on UPDATE too) trimmed.
        FOR r IN SELECT DISTINCT s.rel FROM softguard._capture_state(rels) s
                   LEFT JOIN pg_trigger g ON g.tgrelid = s.rel AND g.tgname = s.name
                  WHERE (TG_EVENT <> 'sql_drop'
                         AND s.name = 'zz_softguard_capture_update' AND s.state = 'missing'
                         AND NOT EXISTS (SELECT FROM pg_trigger u
                                          WHERE u.tgrelid = s.rel AND (u.tgtype & 16) <> 0
                                            AND u.tgfoid = 'softguard._capture_rows()'::regprocedure))
                     OR (s.name = 'zz_softguard_capture_statement' AND s.state = 'changed'
                         AND g.tgtype = 26
                         AND g.tgfoid = 'softguard._capture_statement()'::regprocedure)
        LOOP
            PERFORM softguard._install_capture_maintained(r.rel);
        END LOOP;
    END IF;
    PERFORM softguard._capture_refuse_tampering(rels);
END $$;
-- end section: quiet-install -----------------------------------------------------------

-- section: capture ---------------------------------------------------------------------
-- The capture path (issue 13 item 5; docs/decisions/0024-capture-path.md): fewer
-- statements per captured DELETE, purge_rows without rescanning.
ALTER TABLE softguard.captures DROP CONSTRAINT IF EXISTS captures_op_id_fkey;

CREATE OR REPLACE FUNCTION softguard._budget_used(key text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_catalog.split_part(pg_catalog.current_setting('softguard.capture_bytes',
                                                                      true), '/', 1) = key
                 AND pg_catalog.split_part(pg_catalog.current_setting('softguard.capture_bytes',
                                                                      true), '/', 2)
                     ~ '^[0-9]{1,18}$'
                THEN pg_catalog.split_part(pg_catalog.current_setting('softguard.capture_bytes',
                                                                      true), '/', 2)::bigint
                ELSE 0 END
$$;
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
    need bigint;                           -- bytes a small capture keeps (the budget)
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
    msg text;                              -- the operation NOTICE
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
        -- the capture budget (07_settings.sql), before anything is copied: a few rows are
        -- measured (cheaper than the table's size, which stats its files: decision 0024);
        -- more, from a table that fits whole, need no measuring
        SELECT count(*), coalesce(sum(pg_column_size(s.o)), 0) INTO n, need
          FROM (SELECT o FROM sg_old o LIMIT 64) s;
        IF n < 64 THEN
            IF n > 0 THEN
                PERFORM softguard._budget_take(k, need, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
                                                                   ELSE 'UPDATE' END, ident);
            END IF;
        ELSIF NOT softguard._budget_fits(k, TG_RELID) THEN
            SELECT coalesce(sum(pg_column_size(o)), 0) INTO n FROM sg_old o;
            PERFORM softguard._budget_take(k, n, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
                                                                ELSE 'UPDATE' END, ident);
        END IF;
        cid := nextval('softguard.captures_id_seq'::regclass);
        IF ev = 'delete' AND EXISTS (SELECT FROM pg_inherits i
                                      WHERE i.inhparent = TG_RELID OR i.inhrelid = TG_RELID) THEN
            inh := softguard._inherited_claim(TG_RELID, ev);   -- no call for a plain table
        END IF;
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
            stmt := softguard._client_text(current_query());
            first_word := upper(substring(stmt FROM '^\s*([A-Za-z]+)'));
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
                coalesce(stmt, ''), op_kind,
                jsonb_build_array(obj),
                jsonb_build_object('estimate', false, 'tables', jsonb_build_object(ident, n)),
                '[]')
        RETURNING id INTO op;
        PERFORM set_config('softguard.cur_op', format('%s/%s/%s', k, op, op_kind), true);
        -- no row count: later statements of the same query string may join it
        msg := softguard._op_notice(
            CASE op_kind WHEN 'DELETE' THEN 'DELETE FROM' WHEN 'MERGE' THEN 'MERGE INTO'
                         ELSE 'UPDATE' END,
            ident || CASE WHEN event = 'soft_delete'
                          THEN format(' (soft delete: %s set)', quote_ident(sdi->>'column'))
                          ELSE '' END,
            op, expires);
        IF current_setting('client_min_messages') IN ('notice', 'log', 'debug1', 'debug2',
                                                      'debug3', 'debug4', 'debug5') THEN
            RAISE NOTICE USING MESSAGE = msg;       -- _notice's fast path, without its call
        ELSE
            PERFORM softguard._notice(msg);
        END IF;
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
    IF info ? 'appeared' OR inh IS NOT NULL THEN
        PERFORM softguard._capture_more(op, cid, TG_RELID, info, inh);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION softguard._capture_budget(OUT bytes bigint, OUT why text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s softguard.settings;
    own text := current_setting('softguard.max_capture_bytes', true);
    disk bigint;
BEGIN
    SELECT * INTO s FROM softguard.settings;
    bytes := coalesce(s.max_capture_bytes, 1073741824);
    why := 'max_capture_bytes';
    IF s.disk_total_bytes IS NOT NULL AND s.disk_free_bytes IS NOT NULL THEN
        disk := greatest(0, s.disk_free_bytes
                            - ceil(s.disk_total_bytes * s.min_free_disk_percent / 100)::bigint);
        IF disk < bytes THEN
            bytes := disk;
            why := format('min_free_disk_percent: %s%% of the disk must stay free, %s was free'
                          ' at %s', s.min_free_disk_percent, pg_size_pretty(s.disk_free_bytes),
                          to_char(s.disk_checked_at, 'YYYY-MM-DD HH24:MI:SS TZ'));
        END IF;
    END IF;
    IF own ~ '^\s*[0-9]{1,18}\s*$' AND own::bigint < bytes THEN
        bytes := own::bigint;
        why := 'this session''s softguard.max_capture_bytes';
    END IF;
END $$;
CREATE OR REPLACE FUNCTION softguard._budget_take(key text, need bigint, keep boolean, what text,
                                       target text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    used bigint := softguard._budget_used(key);
    b record;
BEGIN
    SELECT * INTO b FROM softguard._capture_budget();
    IF used + need > b.bytes THEN
        PERFORM softguard._budget_refuse(what, target, used + need, b.bytes, b.why);
    END IF;
    IF keep THEN
        PERFORM set_config('softguard.capture_bytes', key || '/' || (used + need), true);
    END IF;
END $$;
CREATE OR REPLACE FUNCTION softguard._budget_fits(key text, rel oid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    size bigint;
    used bigint;
    b record;
BEGIN
    SELECT CASE WHEN c.relhassubclass THEN NULL ELSE pg_catalog.pg_table_size(c.oid) END
      INTO size FROM pg_catalog.pg_class c WHERE c.oid = rel;
    IF size IS NULL THEN
        RETURN false;
    END IF;
    used := softguard._budget_used(key);
    SELECT * INTO b FROM softguard._capture_budget();
    IF used + size > b.bytes THEN
        RETURN false;
    END IF;
    PERFORM set_config('softguard.capture_bytes', key || '/' || (used + size), true);
    RETURN true;
END $$;
CREATE OR REPLACE FUNCTION softguard.purge_rows(batch integer DEFAULT 10000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    cid bigint;
    span jsonb;
    first_tid tid;
    last_tid tid;
    want integer;
    n bigint;
    done bigint := 0;
    mine boolean := softguard._maintenance_begin();
BEGIN
    LOOP
        want := greatest(batch - done, 0)::integer;
        EXIT WHEN want = 0;
        SELECT c.id, c.info->'purge_span' INTO cid, span FROM softguard.captures c
         WHERE c.released_at IS NOT NULL ORDER BY c.id LIMIT 1;
        EXIT WHEN cid IS NULL;
        IF span IS NULL THEN
            SELECT min(r.ctid), max(r.ctid) INTO first_tid, last_tid
              FROM softguard.captured_rows r WHERE r.capture_id = cid;
            IF first_tid IS NULL THEN      -- no rows (a sequence's, a column's capture)
                DELETE FROM softguard.captures c WHERE c.id = cid;
                done := done + 1;
                cid := NULL;
                CONTINUE;
            END IF;
            span := jsonb_build_array((first_tid::text::point)[0]::bigint,
                                      (last_tid::text::point)[0]::bigint);
        END IF;
        -- capture_id + 0: not the BRIN index (it would rescan the capture from its start)
        WITH d AS (
            DELETE FROM softguard.captured_rows cr
             WHERE cr.ctid = ANY (ARRAY(
                       SELECT x.ctid FROM softguard.captured_rows x
                        WHERE x.ctid >= format('(%s,0)', span->>0)::tid
                          AND x.ctid <= format('(%s,65535)', span->>1)::tid
                          AND x.capture_id + 0 = cid
                        LIMIT want))
            RETURNING cr.ctid)
        SELECT count(*), max(d.ctid) INTO n, last_tid FROM d;
        done := done + n;
        IF n < want THEN
            DELETE FROM softguard.captures c WHERE c.id = cid;
            done := done + 1;
        ELSE
            UPDATE softguard.captures c
               SET info = coalesce(c.info, '{}') || jsonb_build_object('purge_span',
                              jsonb_build_array((last_tid::text::point)[0]::bigint, span->1))
             WHERE c.id = cid;
        END IF;
        cid := NULL;
    END LOOP;
    PERFORM softguard._maintenance_end(mine);
    RETURN done;
END $$;
-- end section: capture -----------------------------------------------------------------

-- section: managed ---------------------------------------------------------------------
-- Managed PostgreSQL (docs/decisions/0025-managed-postgresql.md): an install records
-- whether it has its event triggers; an install made before had them (a superuser's).
ALTER TABLE softguard.settings ADD COLUMN event_triggers boolean NOT NULL DEFAULT true;

CREATE OR REPLACE FUNCTION softguard._create_event_trigger(name text, definition text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    helper text := nullif(current_setting('softguard.event_trigger_helper', true), '');
BEGIN
    IF helper IS NOT NULL THEN
        EXECUTE format('SELECT %s($1, $2)', helper::regproc) USING name, definition;
        RETURN true;
    END IF;
    IF (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
        EXECUTE format('CREATE EVENT TRIGGER %I %s', name, definition);
    ELSE
        BEGIN
            EXECUTE format('CREATE EVENT TRIGGER %I %s', name, definition);
        EXCEPTION WHEN insufficient_privilege THEN
            RETURN false;
        END;
    END IF;
    -- ALWAYS: session_replication_role = replica must not switch it off.
    EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', name);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION softguard._create_event_trigger(text, text) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._settings_event_triggers(present boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mine boolean := softguard._maintenance_begin();
BEGIN
    UPDATE softguard.settings SET event_triggers = present, updated_at = now();
    PERFORM softguard._maintenance_end(mine);
END $$;
REVOKE ALL ON FUNCTION softguard._settings_event_triggers(boolean) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._event_trigger_names() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['softguard_capture_ddl_end', 'softguard_capture_install',
                 'softguard_capture_sql_drop', 'softguard_capture_tamper_ddl',
                 'softguard_capture_tamper_drop', 'softguard_capture_inherit',
                 'softguard_capture_remote', 'softguard_capture_definitions',
                 'softguard_capture_definitions_drop', 'softguard_capture_sequences_start',
                 'softguard_capture_sequences_end', 'softguard_mode_guard']
$$;
GRANT EXECUTE ON FUNCTION softguard._event_trigger_names() TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._has_event_triggers() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT s.event_triggers FROM softguard.settings s), true)
$$;
REVOKE ALL ON FUNCTION softguard._has_event_triggers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._has_event_triggers() TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._machinery_check() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    off text;
    expected text[] := CASE WHEN softguard._has_event_triggers()
                            THEN softguard._event_trigger_names() ELSE '{}' END;
BEGIN
    SELECT string_agg(x.name, ', ' ORDER BY x.name) INTO off
      FROM (SELECT w.name FROM unnest(expected) w(name)
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
CREATE OR REPLACE FUNCTION softguard._require_event_triggers() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT softguard._has_event_triggers() THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = 'softguard: this statement cannot be made reversible here: softguard '
                      'was installed without event triggers (the installing role may not '
                      'create them); refusing it',
            HINT = 'Run softguard init as a role that may create event triggers (a superuser, '
                   'or through the provider''s helper: --event-trigger-helper); see the '
                   'runbook, "Managed PostgreSQL".';
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._require_event_triggers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._require_event_triggers() TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._probe(stmt text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    detail text;
BEGIN
    PERFORM softguard._require_event_triggers();  -- nothing fires the probe without them
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
CREATE OR REPLACE FUNCTION softguard.capture_sweep() RETURNS TABLE (rel regclass, done boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    one oid;
BEGIN
    FOR one IN SELECT DISTINCT s.rel FROM softguard._capture_state(ARRAY(
                   SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'p'))) s
                WHERE s.state <> 'ok' ORDER BY s.rel LOOP
        rel := one::regclass;
        BEGIN
            PERFORM softguard._install_capture_maintained(one);
            done := true;
        EXCEPTION WHEN insufficient_privilege THEN
            done := false;
        END;
        RETURN NEXT;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard.capture_sweep() FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._can_set_replica() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
        RETURN true;
    END IF;
    IF current_setting('server_version_num')::integer < 150000 THEN
        RETURN false;  -- SET privileges on parameters came with PostgreSQL 15
    END IF;
    RETURN has_parameter_privilege('session_replication_role', 'SET');
END $$;
REVOKE ALL ON FUNCTION softguard._can_set_replica() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._can_set_replica() TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._replica(value text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF softguard._can_set_replica() THEN
        PERFORM set_config('session_replication_role', value, true);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._replica(text) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._undo_triggers_off(op bigint) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    saved jsonb := '[]';
    -- without replica mode (_replica), the triggers and rules of origin mode are off too
    origin boolean := NOT softguard._can_set_replica();
BEGIN
    FOR t IN WITH RECURSIVE tree(rel, depth) AS (
                 SELECT DISTINCT c.relid, 0 FROM softguard.captures c WHERE c.op_id = op
                 UNION
                 SELECT i.inhrelid, tr.depth + 1 FROM pg_inherits i JOIN tree tr ON i.inhparent = tr.rel
                  WHERE tr.depth < 100)
             SELECT 'TRIGGER' AS kind, g.tgrelid AS rel, g.tgname::text AS name,
                    g.tgenabled::text AS state, min(tree.depth) AS depth
               FROM pg_trigger g JOIN tree ON tree.rel = g.tgrelid
              WHERE NOT g.tgisinternal AND (g.tgenabled IN ('A', 'R') OR (g.tgenabled = 'O' AND origin))
                AND g.tgfoid NOT IN (SELECT p.oid FROM pg_proc p
                                      WHERE p.pronamespace = 'softguard'::regnamespace)
              GROUP BY 1, 2, 3, 4
             UNION ALL
             SELECT 'RULE', w.ev_class, w.rulename::text, w.ev_enabled::text, min(tree.depth)
               FROM pg_rewrite w JOIN tree ON tree.rel = w.ev_class
              WHERE (w.ev_enabled IN ('A', 'R') OR (w.ev_enabled = 'O' AND origin))
                AND w.rulename <> '_RETURN'
              GROUP BY 1, 2, 3, 4
             ORDER BY 5, 2, 3 LOOP
        EXECUTE format('ALTER TABLE %s DISABLE %s %I', t.rel::regclass, t.kind, t.name);
        saved := saved || jsonb_build_array(jsonb_build_object(
            'kind', t.kind, 'rel', t.rel, 'name', t.name, 'state', t.state));
    END LOOP;
    RETURN saved;
END $$;
CREATE OR REPLACE FUNCTION softguard._undo_triggers_back(saved jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t jsonb;
BEGIN
    FOR t IN SELECT x FROM jsonb_array_elements(saved) WITH ORDINALITY AS s(x, i) ORDER BY s.i LOOP
        EXECUTE format('ALTER TABLE %s ENABLE %s %s %I', (t->>'rel')::oid::regclass,
                       CASE t->>'state' WHEN 'A' THEN 'ALWAYS' WHEN 'R' THEN 'REPLICA' ELSE '' END,
                       t->>'kind', t->>'name');
    END LOOP;
END $$;
CREATE OR REPLACE FUNCTION softguard._undo_rows(op bigint, on_conflict text) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines softguard.undo_step[] := '{}';
    rest softguard.undo_step[];
    c softguard.captures;
    saved_srr text := current_setting('session_replication_role');
    done bigint;
    quiet jsonb;
BEGIN
    PERFORM FROM softguard.operations WHERE id = op FOR UPDATE;
    quiet := softguard._undo_triggers_off(op);
    FOR c IN SELECT * FROM softguard.captures
              WHERE op_id = op AND event = 'soft_delete' AND n_rows > 0 ORDER BY id LOOP
        PERFORM softguard._need_table(op, c.relid, c.table_identity);
        IF c.info ? 'purging' THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('cannot undo operation %s: purge began hard-deleting its rows'
                                 ' of %s at %s', op, c.table_identity, c.info->>'purging'),
                HINT = 'Run softguard purge again to finish it.';
        END IF;
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE %s t SET %I = s.sg_old_mark%s FROM (%s) s WHERE %s',
                       c.relid::regclass, c.info->>'column',
                       CASE WHEN c.info->>'by_column' IS NULL THEN ''
                            ELSE format(', %I = s.sg_old_by', c.info->>'by_column') END,
                       softguard._sd_source(c), softguard._sd_match(c));
        GET DIAGNOSTICS done = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
        lines := lines || softguard._step(op, 'cleared', c.relid::regclass::text,
                             format('cleared the soft-delete mark (%I) of %s rows of %s%s',
                                 c.info->>'column', done, c.relid::regclass,
                                 CASE WHEN done < c.n_rows THEN format(
                                     ' (%s left alone: deleted, or marked again, since)',
                                     c.n_rows - done) ELSE '' END), done);
    END LOOP;
    rest := softguard._undo_captures(op, on_conflict);
    PERFORM softguard._undo_triggers_back(quiet);
    IF cardinality(lines) > 0 THEN
        rest := ARRAY(SELECT r FROM unnest(rest) r WHERE r.action <> 'nothing');
    END IF;
    RETURN lines || rest;
END $$;
CREATE OR REPLACE FUNCTION softguard._undo_captures(op bigint, on_conflict text) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    lines softguard.undo_step[] := '{}';
    saved_srr text := current_setting('session_replication_role');
    rel oid;
    g record;
    cap softguard.captures;
    sq record;
    cols text[];
    ids bigint[];
    rtype text;
    src text;
    key text[];
    total bigint;
    done bigint;
    bad text;
    nbad bigint;
    msg text;
    detail text;
    have_identity boolean;
BEGIN
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF on_conflict NOT IN ('fail', 'skip') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('--on-conflict must be fail or skip, not %s', on_conflict);
    END IF;
    -- every table must be live (a later DROP may hold it)
    FOR g IN SELECT DISTINCT cp.relid, cp.table_identity FROM softguard.captures cp
              WHERE cp.op_id = op ORDER BY cp.relid LOOP
        PERFORM softguard._need_table(op, g.relid, g.table_identity);
    END LOOP;

    -- ALTER TABLE: the column first (rows of other captures may need it)
    FOR cap IN SELECT * FROM softguard.captures WHERE op_id = op AND event = 'column' LOOP
        lines := lines || softguard._undo_column(op, cap);
    END LOOP;

    PERFORM softguard._replica('replica');

    -- 1. rows removed (DELETE, TRUNCATE), parents first
    FOREACH rel IN ARRAY softguard._parents_first(ARRAY(
            SELECT DISTINCT relid FROM softguard.captures
             WHERE op_id = op AND event IN ('delete', 'truncate') AND n_rows > 0)) LOOP
        FOR g IN SELECT c.columns, array_agg(c.id ORDER BY c.id) AS ids, sum(c.n_rows) AS n,
                        min(c.id) AS first_id
                   FROM softguard.captures c
                  WHERE c.op_id = op AND c.relid = rel AND c.event IN ('delete', 'truncate')
                    AND c.n_rows > 0
                  GROUP BY c.columns ORDER BY min(c.id) LOOP
            rtype := softguard._row_type(g.columns, g.first_id::text);
            -- columns to insert: captured ones still in the table, not generated
            cols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                           WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                             AND a.attgenerated = ''
                             AND a.attname IN (SELECT x->>0 FROM jsonb_array_elements(g.columns) x)
                           ORDER BY a.attnum);
            -- OFFSET 0: the row text is parsed once, not once per column
            src := format('SELECT (q.x).* FROM (SELECT r."row"::%s AS x FROM softguard.captured_rows r'
                          ' WHERE r.capture_id = ANY (%L::bigint[]) OFFSET 0) q', rtype, g.ids);
            have_identity := EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = rel
                                      AND a.attidentity = 'a' AND a.attname = ANY (cols));
            IF on_conflict = 'skip' THEN
                EXECUTE format('INSERT INTO %s (%s) %s SELECT %s FROM (%s) s ON CONFLICT DO NOTHING',
                               rel::regclass,
                               (SELECT string_agg(format('%I', x), ', ') FROM unnest(cols) x),
                               CASE WHEN have_identity THEN 'OVERRIDING SYSTEM VALUE' ELSE '' END,
                               (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(cols) x),
                               src);
                GET DIAGNOSTICS done = ROW_COUNT;
            ELSE
                BEGIN
                    EXECUTE format('INSERT INTO %s (%s) %s SELECT %s FROM (%s) s',
                                   rel::regclass,
                                   (SELECT string_agg(format('%I', x), ', ') FROM unnest(cols) x),
                                   CASE WHEN have_identity THEN 'OVERRIDING SYSTEM VALUE' ELSE '' END,
                                   (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(cols) x),
                                   src);
                    GET DIAGNOSTICS done = ROW_COUNT;
                EXCEPTION WHEN unique_violation THEN
                    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
                    key := softguard._row_key(rel);
                    bad := NULL;
                    IF key IS NOT NULL THEN
                        EXECUTE format('SELECT count(*), string_agg(k, '', '') FILTER (WHERE n <= 5)'
                                       ' FROM (SELECT format(%L, %s) AS k, row_number() OVER () AS n'
                                       ' FROM (%s) s WHERE EXISTS (SELECT FROM %s t WHERE %s)) x',
                                       '(' || array_to_string(key, ', ') || ')=(' ||
                                           array_to_string(array_fill('%s'::text, ARRAY[cardinality(key)]), ', ') || ')',
                                       (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(key) x),
                                       src, rel::regclass,
                                       (SELECT string_agg(format('t.%I = s.%I', x, x), ' AND ')
                                          FROM unnest(key) x))
                          INTO nbad, bad;
                    END IF;
                    IF bad IS NULL OR nbad = 0 THEN
                        bad := coalesce(detail, 'a unique key');
                        nbad := NULL;
                    END IF;
                    RAISE EXCEPTION USING ERRCODE = '23505',
                        MESSAGE = format('cannot undo operation %s: %s of %s re-used since: %s%s',
                                         op, CASE WHEN nbad IS NULL THEN 'a key'
                                                  WHEN nbad = 1 THEN '1 key'
                                                  ELSE nbad || ' keys' END,
                                         rel::regclass, bad,
                                         CASE WHEN nbad > 5 THEN ', ...' ELSE '' END),
                        HINT = 'use --on-conflict skip';
                END;
            END IF;
            IF done < g.n AND on_conflict = 'fail' THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: only %s of its %s rows of %s'
                                     ' could be put back', op, done, g.n, rel::regclass);
            END IF;
            PERFORM softguard._check_fks(op, rel, src);
            lines := lines || softguard._step(op, 'restored', rel::regclass::text,
                                 format('restored %s rows into %s%s', done,
                                     rel::regclass,
                                     CASE WHEN done < g.n THEN format(' (%s skipped: key re-used since)',
                                                                      g.n - done) ELSE '' END), done);
        END LOOP;
    END LOOP;

    -- 2. rows changed (UPDATE, MERGE, SET NULL / SET DEFAULT of a DELETE): old values back,
    --    found by key; the first image of a row in the operation is its value before it.
    --    Tables where the operation changed keys, or without a key: _undo_changed.
    FOR rel IN SELECT c.relid FROM softguard.captures c
                WHERE c.op_id = op AND c.event = 'update' AND c.n_rows > 0 AND c.info ? 'key'
                GROUP BY c.relid ORDER BY min(c.id) LOOP
        lines := lines || softguard._undo_changed(op, rel, on_conflict);
    END LOOP;
    FOR g IN SELECT c.relid, c.columns, array_agg(c.id ORDER BY c.id) AS ids, min(c.id) AS first_id
               FROM softguard.captures c
              WHERE c.op_id = op AND c.event = 'update' AND c.n_rows > 0
                AND c.relid NOT IN (SELECT x.relid FROM softguard.captures x
                                     WHERE x.op_id = op AND x.event = 'update' AND x.info ? 'key')
              GROUP BY c.relid, c.columns ORDER BY min(c.id) LOOP
        key := softguard._row_key(g.relid);
        IF key IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('cannot undo operation %s: %s has no primary key to find the changed rows by',
                                 op, g.relid::regclass);
        END IF;
        rtype := softguard._row_type(g.columns, g.first_id::text);
        cols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = g.relid AND a.attnum > 0 AND NOT a.attisdropped
                         AND a.attgenerated = '' AND a.attidentity <> 'a'
                         AND a.attname IN (SELECT x->>0 FROM jsonb_array_elements(g.columns) x)
                       ORDER BY a.attnum);
        src := format('SELECT DISTINCT ON (%s) * FROM (SELECT (p.x).*, p.sg_cid FROM'
                      ' (SELECT r."row"::%s AS x, r.capture_id AS sg_cid FROM softguard.captured_rows r'
                      ' WHERE r.capture_id = ANY (%L::bigint[]) OFFSET 0) p) q ORDER BY %s, q.sg_cid',
                      (SELECT string_agg(format('q.%I', x), ', ') FROM unnest(key) x), rtype, g.ids,
                      (SELECT string_agg(format('q.%I', x), ', ') FROM unnest(key) x));
        EXECUTE format('SELECT count(*) FROM (%s) s', src) INTO total;
        EXECUTE format('UPDATE %s t SET (%s) = ROW(%s) FROM (%s) s WHERE %s',
                       g.relid::regclass,
                       (SELECT string_agg(format('%I', x), ', ') FROM unnest(cols) x),
                       (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(cols) x),
                       src,
                       (SELECT string_agg(format('t.%I = s.%I', x, x), ' AND ') FROM unnest(key) x));
        GET DIAGNOSTICS done = ROW_COUNT;
        PERFORM softguard._check_fks(op, g.relid, src);
        lines := lines || softguard._step(op, 'restored', g.relid::regclass::text,
                             format('restored old values of %s rows of %s%s', done,
                                 g.relid::regclass,
                                 CASE WHEN done < total THEN format(' (%s no longer exist)', total - done)
                                      ELSE '' END), done);
    END LOOP;

    -- 3. sequences restarted by TRUNCATE ... RESTART IDENTITY (never moved backwards)
    FOR cap IN SELECT * FROM softguard.captures WHERE op_id = op AND event = 'sequence' ORDER BY id LOOP
        CONTINUE WHEN NOT EXISTS (SELECT FROM pg_class WHERE oid = (cap.info->>'seq')::oid);
        EXECUTE format('SELECT last_value, is_called FROM %s', (cap.info->>'seq')::oid::regclass) INTO sq;
        IF sq.last_value < (cap.info->>'last_value')::bigint
           OR (sq.last_value = (cap.info->>'last_value')::bigint AND NOT sq.is_called
               AND (cap.info->>'is_called')::boolean) THEN
            PERFORM setval((cap.info->>'seq')::oid::regclass, (cap.info->>'last_value')::bigint,
                           (cap.info->>'is_called')::boolean);
            lines := lines || softguard._step(op, 'restored', (cap.info->>'seq')::oid::regclass::text,
                format('restored sequence %s to %s',
                       (cap.info->>'seq')::oid::regclass, cap.info->>'last_value'));
        END IF;
    END LOOP;

    PERFORM softguard._replica(saved_srr);

    PERFORM softguard._record_undo(o, CASE WHEN on_conflict = 'skip'
                                           THEN ' --on-conflict skip' ELSE '' END);
    IF cardinality(lines) = 0 THEN
        lines := ARRAY[softguard._step(op, 'nothing', '', 'nothing to restore')];
    END IF;
    RETURN lines;
END $$;
CREATE OR REPLACE FUNCTION softguard._undo_drop_column(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i jsonb := c.info;
    rel regclass := c.relid::regclass;
    rtype text;
    key text[] := ARRAY(SELECT jsonb_array_elements_text(c.info->'key'));
    x jsonb;
    n bigint;
    saved_srr text := current_setting('session_replication_role');
BEGIN
    IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = c.relid AND attname = i->>'name'
                AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION USING ERRCODE = '42701',
            MESSAGE = format('cannot undo operation %s: column %I of %s exists again (added after the DROP)',
                             op, i->>'name', rel);
    END IF;
    IF i->>'generated' IS NOT NULL THEN
        -- its values follow from the other columns (50_alter.sql kept none)
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s%s GENERATED ALWAYS AS (%s) %s', rel,
                       i->>'name', i->>'type',
                       CASE WHEN i->>'collation' IS NOT NULL THEN ' COLLATE ' || (i->>'collation') ELSE '' END,
                       i->>'default', i->>'generated');
    ELSE
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s%s', rel, i->>'name', i->>'type',
                       CASE WHEN i->>'collation' IS NOT NULL THEN ' COLLATE ' || (i->>'collation') ELSE '' END);
    END IF;
    n := 0;
    IF i->>'generated' IS NULL THEN
        rtype := softguard._row_type(c.columns, c.id::text);
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE %s t SET %I = s.sg_value FROM (SELECT (p.x).* FROM (SELECT r."row"::%s AS x'
                       ' FROM softguard.captured_rows r WHERE r.capture_id = %s OFFSET 0) p) s WHERE %s',
                       rel, i->>'name', rtype, c.id,
                       (SELECT string_agg(format('t.%I = s.%I', k, k), ' AND ') FROM unnest(key) k));
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
    END IF;
    IF i->>'default' IS NOT NULL AND i->>'generated' IS NULL THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', rel, i->>'name', i->>'default');
    END IF;
    IF (i->>'not_null')::boolean THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', rel, i->>'name');
    END IF;
    FOR x IN SELECT e FROM jsonb_array_elements(i->'constraints') e LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', rel, x->>'name', x->>'def');
        IF x->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON CONSTRAINT %I ON %s IS %L', x->>'name', rel, x->>'comment');
        END IF;
    END LOOP;
    FOR x IN SELECT e FROM jsonb_array_elements(i->'indexes') e LOOP
        EXECUTE x->>'def';
        IF x->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON INDEX %s IS %L',
                           format('%I.%I', (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = c.relid),
                                  x->>'name'), x->>'comment');
        END IF;
    END LOOP;
    IF i->>'comment' IS NOT NULL THEN
        EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', rel, i->>'name', i->>'comment');
    END IF;
    RETURN ARRAY[softguard._step(op, 're-added', format('%s.%I', rel, i->>'name'),
                                 format('re-added column %s.%I with %s values', rel, i->>'name', n), n)];
END $$;
CREATE OR REPLACE FUNCTION softguard._undo_type(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i jsonb := c.info;
    rel regclass := c.relid::regclass;
    col text := c.info->>'name';
    old_type text := c.info->>'type';
    key text[] := ARRAY(SELECT jsonb_array_elements_text(c.info->'key'));
    cn softguard.captures;
    a record;
    later bigint;
    later_stmt text;
    later_kind text;
    other text;
    rt_old text;
    rt_new text;
    tmp_name text := 'sg_type_undo_' || c.id;
    tmp text := format('pg_temp.%I', 'sg_type_undo_' || c.id);
    fn text := format('pg_temp.%I', 'sg_type_back_' || c.id);
    nbad bigint;
    bad text;
    n bigint;
    total bigint;
    unset_not_null boolean;
    x jsonb;
    saved_srr text := current_setting('session_replication_role');
BEGIN
    -- a later operation still active that dropped the column or changed its type again
    SELECT cp.op_id, o.statement, coalesce(cp.info->>'kind', 'drop')
      INTO later, later_stmt, later_kind
      FROM softguard.captures cp JOIN softguard.operations o ON o.id = cp.op_id
     WHERE cp.relid = c.relid AND cp.event = 'column' AND cp.info->>'name' = col
       AND coalesce(cp.info->>'kind', 'drop') IN ('drop', 'type') AND cp.op_id > op
       AND o.state = 'active'
     ORDER BY cp.op_id DESC LIMIT 1;
    IF later IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = format('cannot undo operation %s: column %s.%I was %s since, held by operation %s (%s)',
                             op, rel, col,
                             CASE later_kind WHEN 'drop' THEN 'dropped' ELSE 'changed again' END,
                             later, later_stmt),
            DETAIL = softguard._blocked_detail(later),
            HINT = format('Undo operation %s first, or use --cascade.', later);
    END IF;
    SELECT at.attnum, at.attnotnull, format_type(at.atttypid, at.atttypmod) AS typ,
           pg_get_expr(d.adbin, d.adrelid) AS def
      INTO a
      FROM pg_attribute at
      LEFT JOIN pg_attrdef d ON d.adrelid = at.attrelid AND d.adnum = at.attnum
     WHERE at.attrelid = c.relid AND at.attname = col AND at.attnum > 0 AND NOT at.attisdropped;
    IF NOT FOUND THEN
        SELECT at.attname INTO other FROM pg_attribute at
         WHERE at.attrelid = c.relid AND at.attnum = (i->>'attnum')::integer AND NOT at.attisdropped;
        IF other IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('cannot undo operation %s: column %s.%I was renamed to %I since',
                                 op, rel, col, other),
                HINT = format('Rename it back first (ALTER TABLE %s RENAME COLUMN %I TO %I).',
                              rel, other, col);
        END IF;
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: column %s.%I was dropped since', op, rel, col);
    END IF;
    IF a.typ IS DISTINCT FROM i->>'new_type' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: column %s.%I is of type %s now, not %s as the operation left it',
                             op, rel, col, a.typ, i->>'new_type');
    END IF;
    SELECT * INTO cn FROM softguard.captures WHERE id = (i->>'new_capture')::bigint;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: the values of %s.%I after the change were not kept',
                             op, rel, col);
    END IF;

    -- 1. the rows to restore: captured, and still holding the value the ALTER gave them
    --    (compared as text of the current type, read back in this session)
    rt_old := softguard._row_type(c.columns, c.id::text);
    rt_new := softguard._row_type(cn.columns, cn.id::text);
    EXECUTE format('DROP TABLE IF EXISTS %s', tmp);
    EXECUTE format('CREATE TEMP TABLE %I AS SELECT %s, o.sg_value'
                   ' FROM (SELECT (p.x).* FROM (SELECT r."row"::%s AS x FROM softguard.captured_rows r'
                   ' WHERE r.capture_id = %s OFFSET 0) p) o'
                   ' JOIN (SELECT (p.x).* FROM (SELECT r."row"::%s AS x FROM softguard.captured_rows r'
                   ' WHERE r.capture_id = %s OFFSET 0) p) w ON %s'
                   ' JOIN %s t ON %s'
                   ' WHERE t.%I::text IS NOT DISTINCT FROM w.sg_new::text',
                   tmp_name,
                   (SELECT string_agg(format('o.%I', k), ', ') FROM unnest(key) k),
                   rt_old, c.id, rt_new, cn.id,
                   (SELECT string_agg(format('w.%I = o.%I', k, k), ' AND ') FROM unnest(key) k),
                   rel,
                   (SELECT string_agg(format('t.%I = o.%I', k, k), ' AND ') FROM unnest(key) k),
                   col);

    -- 2. a per-row conversion back: explicit cast, else through text, else NULL
    EXECUTE format('DROP FUNCTION IF EXISTS %s(%s)', fn, a.typ);
    EXECUTE format('CREATE FUNCTION %s(v %s) RETURNS %s LANGUAGE plpgsql AS %L', fn, a.typ, old_type,
                   format('BEGIN RETURN v::%s; EXCEPTION WHEN OTHERS THEN BEGIN RETURN v::text::%s;'
                          ' EXCEPTION WHEN OTHERS THEN RETURN NULL; END; END', old_type, old_type));

    -- 3. rows added or changed since must convert back: a write made since is never lost
    EXECUTE format('SELECT count(*), string_agg(k, '', '') FILTER (WHERE n <= 5)'
                   ' FROM (SELECT format(%L, %s) AS k, row_number() OVER () AS n FROM %s t'
                   ' WHERE t.%I IS NOT NULL AND %s(t.%I) IS NULL'
                   ' AND NOT EXISTS (SELECT FROM %s s WHERE %s)) x',
                   '(' || array_to_string(key, ', ') || ')=(' ||
                       array_to_string(array_fill('%s'::text, ARRAY[cardinality(key)]), ', ') || ')',
                   (SELECT string_agg(format('t.%I', k), ', ') FROM unnest(key) k),
                   rel, col, fn, col, tmp,
                   (SELECT string_agg(format('s.%I = t.%I', k, k), ' AND ') FROM unnest(key) k))
      INTO nbad, bad;
    IF nbad > 0 THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: %s of %s added or changed since %s a value of %I'
                             ' that does not convert back to %s: %s%s',
                             op, CASE WHEN nbad = 1 THEN '1 row' ELSE nbad || ' rows' END, rel,
                             CASE WHEN nbad = 1 THEN 'holds' ELSE 'hold' END, col, old_type, bad,
                             CASE WHEN nbad > 5 THEN ', ...' ELSE '' END),
            HINT = 'Change or delete those rows, then undo again.';
    END IF;

    -- 4. the type back. Rows to restore may not convert (their captured value comes next):
    --    NOT NULL is lifted meanwhile (unless the column is in the primary key), the
    --    default dropped (it may not cast back).
    unset_not_null := a.attnotnull AND NOT EXISTS (
        SELECT FROM pg_index x WHERE x.indrelid = c.relid AND x.indisprimary AND a.attnum = ANY (x.indkey));
    IF unset_not_null THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL', rel, col);
    END IF;
    IF a.def IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', rel, col);
    END IF;
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s%s USING %s(%I)', rel, col, old_type,
                   CASE WHEN i->>'collation' IS NOT NULL THEN ' COLLATE ' || (i->>'collation') ELSE '' END,
                   fn, col);

    -- 5. the captured values back, by key (user triggers off, as for the other undos)
    PERFORM softguard._replica('replica');
    EXECUTE format('UPDATE %s t SET %I = s.sg_value FROM %s s WHERE %s', rel, col, tmp,
                   (SELECT string_agg(format('t.%I = s.%I', k, k), ' AND ') FROM unnest(key) k));
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM softguard._replica(saved_srr);
    IF unset_not_null THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', rel, col);
    END IF;
    IF i->>'default' IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', rel, col, i->>'default');
    END IF;
    -- 6. CHECK constraints on the column as they were written (the two conversions added casts)
    FOR x IN SELECT e FROM jsonb_array_elements(coalesce(i->'checks', '[]')) e LOOP
        CONTINUE WHEN NOT EXISTS (SELECT FROM pg_constraint co
                                   WHERE co.conrelid = c.relid AND co.conname = x->>'name'
                                     AND co.contype = 'c'
                                     AND pg_get_constraintdef(co.oid) IS DISTINCT FROM x->>'def');
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', rel, x->>'name');
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', rel, x->>'name', x->>'def');
        IF x->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON CONSTRAINT %I ON %s IS %L', x->>'name', rel, x->>'comment');
        END IF;
    END LOOP;
    EXECUTE format('SELECT count(*) FROM %s', rel) INTO total;
    EXECUTE format('DROP TABLE %s', tmp);
    EXECUTE format('DROP FUNCTION %s(%s)', fn, a.typ);
    RETURN ARRAY[softguard._step(op, 'restored', format('%s.%I', rel, col),
                 format('column %s.%I back to %s, %s values restored%s', rel, col,
                        old_type, n,
                        CASE WHEN total > n
                             THEN format(' (%s added or changed since: converted back)',
                                         CASE WHEN total - n = 1 THEN '1 row'
                                              ELSE (total - n) || ' rows' END)
                             ELSE '' END), n)];
END $$;
-- end section: managed -----------------------------------------------------------------



DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
END $$;
