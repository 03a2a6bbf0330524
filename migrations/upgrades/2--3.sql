-- Version 3: the trust boundary (docs/threat-model.md, G6-G9).
--
-- Each section below is one change; a function changed by two sections appears once, in
-- the later section, with its final definition.

-- ---------------------------------------------------------------------------------------
-- section: protection decided by registered sessions (G6)
-- ---------------------------------------------------------------------------------------

CREATE TABLE softguard.sessions (
    pid                integer PRIMARY KEY,
    backend_start      timestamptz NOT NULL,
    capture            text[] NOT NULL,          -- protected categories: {delete,drop,...}
    retention_seconds  integer NOT NULL CHECK (retention_seconds >= 0),
    client_addr        text,                     -- the client's address, as the proxy saw it
    registered_at      timestamptz NOT NULL DEFAULT now()
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

-- Register (or add to) this session's protection. Callable by any role: it can only add.
--   events     the protected categories, comma-separated: 'delete' and 'update' are
--              captured; 'drop', 'truncate', 'alter' arm the backstop (85_backstop.sql)
--              against their forms the proxy cannot read; '' or 'off': none
--   retention  seconds operations of this session are kept at least
--   addr       the client's address as the proxy saw it
CREATE FUNCTION softguard.register_session(events text, retention integer, addr text)
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
    IF NOT wanted <@ ARRAY['delete', 'update', 'drop', 'truncate', 'alter'] THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('softguard: unknown protected categories %L', events),
            HINT = 'Categories are delete, update, drop, truncate and alter.';
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
END $$;
REVOKE ALL ON FUNCTION softguard.register_session(text, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.register_session(text, integer, text) TO PUBLIC;

-- This session's registration (all fields NULL when it is not registered). plpgsql: its
-- plans are kept for the session.
--   verify  also check the backend's start time (reading it costs a snapshot of every
--           backend's status): without it, a backend that reuses the pid of an ended
--           registered one, before the next registration removes that row, passes for
--           registered: more protection than asked, never less. Operations' retention
--           and address are read verified.
CREATE FUNCTION softguard._session(verify boolean) RETURNS softguard.sessions
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r softguard.sessions;
BEGIN
    SELECT * INTO r FROM softguard.sessions s WHERE s.pid = pg_backend_pid();
    IF FOUND AND verify AND r.backend_start IS DISTINCT FROM softguard._backend_start() THEN
        r := NULL;
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

CREATE OR REPLACE FUNCTION softguard._op_begin(stmt text, ctx jsonb, kind text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    op bigint;
    reg softguard.sessions := softguard._session(true);
BEGIN
    IF kind NOT IN ('TRUNCATE', 'ALTER TABLE') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'softguard: bad operation kind';
    END IF;
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, row_counts, restore)
    VALUES (now() + softguard._retention(reg, (ctx->>'retention_seconds')::integer),
            session_user, softguard._client_role(), current_setting('application_name', true),
            softguard._client_addr(reg), stmt, kind, '[]',
            jsonb_build_object('estimate', false, 'tables', '{}'::jsonb), '[]')
    RETURNING id INTO op;
    RETURN op;
END $$;

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
                steps := steps || softguard._move(op_id, n, 'pg_statistic_ext'::regclass, own, false);
            END LOOP;
        END IF;
        n := n + 1;
        steps := steps || softguard._move(op_id, n, r.classid, r.objid, r.original);
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

CREATE FUNCTION softguard._capture_statement() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('softguard.cur_op', '', true);
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_statement() FROM PUBLIC;

CREATE FUNCTION softguard._client_text(sent text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    close integer;
BEGIN
    IF left(sent, 17) <> '/*softguard:text=' THEN
        RETURN sent;
    END IF;
    close := strpos(sent, '*/');
    BEGIN
        RETURN convert_from(decode(substr(sent, 18, close - 18), 'hex'), 'UTF8');
    EXCEPTION WHEN OTHERS THEN
        RETURN sent;   -- not ours after all: keep what ran
    END;
END $$;
REVOKE ALL ON FUNCTION softguard._client_text(text) FROM PUBLIC;

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
    shape record;
    cols jsonb;
    info jsonb;
    stmt text;
    obj jsonb;
BEGIN
    -- What this session captures: its registration, plus what its setting adds (G6). The
    -- setting, written by the proxy at startup, is the fast path; a session whose setting
    -- does not name the event asks its registration, which the client cannot change.
    events := string_to_array(replace(lower(coalesce(cap, '')), ' ', ''), ',');
    IF NOT (ev = ANY (events)) THEN
        -- softguard._session(false), inlined: this runs for every uncaptured UPDATE
        events := events || coalesce((SELECT s.capture FROM softguard.sessions s
                                       WHERE s.pid = pg_backend_pid()), '{}');
        IF NOT (events && ARRAY['delete', 'update']) THEN
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
                RETURN NULL;
            END IF;
        END IF;
        cid := nextval('softguard.captures_id_seq'::regclass);
        INSERT INTO softguard.captured_rows (capture_id, "row") SELECT cid, o::text FROM sg_old o;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 THEN
            RETURN NULL;                   -- removed nothing: records nothing
        END IF;
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
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION softguard._install_capture(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT softguard._protected_table(rel) THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = rel
                    AND tgname = 'zz_softguard_capture_delete') THEN
        EXECUTE format('CREATE TRIGGER zz_softguard_capture_delete AFTER DELETE ON %s'
                       ' REFERENCING OLD TABLE AS sg_old FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION softguard._capture_rows()', rel::regclass);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = rel
                    AND tgname = 'zz_softguard_capture_update') THEN
        EXECUTE format('CREATE TRIGGER zz_softguard_capture_update AFTER UPDATE ON %s'
                       ' REFERENCING OLD TABLE AS sg_old FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION softguard._capture_rows()', rel::regclass);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = rel
                    AND tgname = 'zz_softguard_capture_truncate') THEN
        EXECUTE format('CREATE TRIGGER zz_softguard_capture_truncate BEFORE TRUNCATE ON %s'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION softguard._capture_truncate()',
                       rel::regclass);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = rel
                    AND tgname = 'zz_softguard_capture_statement') THEN
        EXECUTE format('CREATE TRIGGER zz_softguard_capture_statement BEFORE DELETE OR UPDATE'
                       ' ON %s FOR EACH STATEMENT WHEN (pg_catalog.pg_trigger_depth() = 0)'
                       ' EXECUTE FUNCTION softguard._capture_statement()', rel::regclass);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION softguard._capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    op bigint := nullif(current_setting('softguard.truncate_op', true), '')::bigint;
    cid bigint;
    n bigint;
    ident text;
    s record;
    st record;
BEGIN
    -- only the operation truncate_op opened in this transaction; any other TRUNCATE of a
    -- protected session is refused (85_backstop.sql)
    PERFORM FROM softguard.operations o
      WHERE o.id = op AND o.kind = 'TRUNCATE' AND o.txid = pg_current_xact_id();
    IF NOT FOUND THEN
        PERFORM softguard._backstop_truncate(TG_RELID::regclass);
        RETURN NULL;
    END IF;
    ident := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    cid := nextval(pg_get_serial_sequence('softguard.captures', 'id')::regclass);
    EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                   ' SELECT %s, t::text FROM ONLY %s t', cid, TG_RELID::regclass);
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns)
    VALUES (cid, op, TG_RELID, ident, 'truncate', n, softguard._columns(TG_RELID));
    FOR s IN SELECT DISTINCT d.objid AS seq FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
              WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                AND d.refobjid = TG_RELID AND d.deptype IN ('a', 'i') AND c.relkind = 'S' LOOP
        EXECUTE format('SELECT last_value, is_called FROM %s', s.seq::regclass) INTO st;
        INSERT INTO softguard.captures (op_id, relid, table_identity, event, info)
        VALUES (op, TG_RELID, ident, 'sequence', jsonb_build_object(
            'seq', s.seq, 'name', s.seq::regclass::text, 'last_value', st.last_value,
            'is_called', st.is_called));
    END LOOP;
    RETURN NULL;
END $$;

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

-- BEFORE TRUNCATE, outside truncate_op: a protected session's TRUNCATE would keep nothing.
CREATE FUNCTION softguard._backstop_truncate(rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF 'truncate' = ANY ((softguard._session(false)).capture) THEN
        PERFORM softguard._backstop_refuse(format('TRUNCATE %s', rel));
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_truncate(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._capture_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    detail text;
    victim text;
BEGIN
    IF current_setting('softguard.probe', true) IS DISTINCT FROM 'on' THEN
        -- Backstop: SQL softguard cannot see (a DO block, a function, a direct session)
        -- must not destroy the ledger or what is in quarantine. Only softguard's own
        -- maintenance (purge) sets softguard.internal.
        IF current_setting('softguard.internal', true) IS DISTINCT FROM 'on' THEN
            SELECT d.object_identity INTO victim
              FROM pg_event_trigger_dropped_objects() d
             WHERE NOT d.is_temporary
               AND (d.schema_name IN ('softguard', 'softguard_quarantine')
                    OR d.schema_name ~ '^softguard_q[0-9]+_'
                    OR (d.object_type = 'schema'
                        AND (d.object_name IN ('softguard', 'softguard_quarantine')
                             OR d.object_name ~ '^softguard_q[0-9]+_')))
             LIMIT 1;
            IF victim IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = '42501',
                    MESSAGE = format('softguard: %s belongs to softguard''s ledger or '
                                     'quarantine and cannot be dropped', victim),
                    HINT = 'Quarantined objects leave through softguard undo or softguard purge.';
            END IF;
        END IF;
        PERFORM softguard._backstop_drop();
        RETURN;
    END IF;
    SELECT coalesce(json_agg(json_build_object(
               'classid', d.classid, 'objid', d.objid, 'objsubid', d.objsubid,
               'original', d.original, 'normal', d.normal, 'is_temporary', d.is_temporary,
               'object_type', d.object_type, 'schema_name', d.schema_name,
               'object_name', d.object_name, 'object_identity', d.object_identity,
               'address_names', d.address_names, 'address_args', d.address_args)), '[]')::text
      INTO detail
      FROM pg_event_trigger_dropped_objects() d;
    RAISE EXCEPTION USING ERRCODE = 'SGPRB', MESSAGE = 'softguard probe', DETAIL = detail;
END $$;

-- Tables that have the capture triggers get the statement trigger too.
SELECT softguard._install_capture(c.oid) FROM pg_class c WHERE c.relkind IN ('r', 'p')
 ORDER BY c.oid;

-- ---------------------------------------------------------------------------------------
-- section: SECURITY DEFINER functions and ledger tables (G8)
-- ---------------------------------------------------------------------------------------



-- ---------------------------------------------------------------------------------------
-- section: the machinery defends itself (G7)
-- ---------------------------------------------------------------------------------------



-- ---------------------------------------------------------------------------------------
-- section: exact undo (G9)
-- ---------------------------------------------------------------------------------------

-- ---------------------------------------------------------------------------------------
-- section: remote writes (issue 18)
-- ---------------------------------------------------------------------------------------

-- Refuse a write to a foreign table (rel: the foreign table, what: the verb).
CREATE FUNCTION softguard._remote_refuse(what text, rel regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '0A000',
        MESSAGE = format('softguard: %s on foreign table %s cannot be made reversible', what, rel),
        DETAIL = 'Its rows live on another server: softguard cannot keep what the statement '
                 'would remove or change there, so nothing was changed.',
        HINT = 'Run the statement against the foreign server''s own database through '
               'softguard, or have the policy allow this category for your role.';
END $$;
REVOKE ALL ON FUNCTION softguard._remote_refuse(text, regclass) FROM PUBLIC;

-- BEFORE DELETE OR UPDATE FOR EACH STATEMENT on every foreign table and on every table a
-- foreign table is a partition or child of (a statement trigger fires only on the table
-- the statement names). Refuses for sessions that capture the event: their setting or
-- their registration (as _capture_rows decides). On a parent it refuses whether or not the
-- statement reaches the foreign rows (ONLY, partition pruning): it cannot tell.
CREATE FUNCTION softguard._remote_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events text[] := string_to_array(replace(lower(coalesce(
                         current_setting('softguard.capture', true), '')), ' ', ''), ',');
    far oid;
BEGIN
    IF NOT (lower(TG_OP) = ANY (events)) THEN
        events := coalesce((softguard._session(false)).capture, '{}');
        IF NOT (lower(TG_OP) = ANY (events)) THEN
            RETURN NULL;
        END IF;
    END IF;
    WITH RECURSIVE d(rel) AS (
        SELECT TG_RELID
        UNION SELECT i.inhrelid FROM pg_inherits i JOIN d ON i.inhparent = d.rel)
    SELECT d.rel INTO far FROM d JOIN pg_class c ON c.oid = d.rel
     WHERE c.relkind = 'f' ORDER BY d.rel LIMIT 1;
    IF far IS NOT NULL THEN                -- none: the foreign child was detached since
        PERFORM softguard._remote_refuse(TG_OP, far::regclass);
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._remote_guard() FROM PUBLIC;

-- Put the guard on a foreign table and on every table above it (idempotent).
CREATE FUNCTION softguard._install_remote_guard(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.oid = rel AND c.relkind = 'f' AND n.nspname NOT LIKE 'softguard%') THEN
        RETURN;
    END IF;
    FOR r IN WITH RECURSIVE a(rel) AS (
                 SELECT rel
                 UNION SELECT i.inhparent FROM pg_inherits i JOIN a ON i.inhrelid = a.rel)
             SELECT a.rel FROM a ORDER BY a.rel LOOP
        IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = r.rel
                        AND tgname = 'zz_softguard_remote_guard') THEN
            EXECUTE format('CREATE TRIGGER zz_softguard_remote_guard BEFORE DELETE OR UPDATE'
                           ' ON %s FOR EACH STATEMENT EXECUTE FUNCTION softguard._remote_guard()',
                           r.rel::regclass);
        END IF;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._install_remote_guard(oid) FROM PUBLIC;

-- The foreign tables this session holds ACCESS EXCLUSIVE locks on: TRUNCATE takes one on
-- every table it empties, foreign ones included, and fires no trigger on those.
CREATE FUNCTION softguard._remote_locked() RETURNS oid[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_class WHERE relkind = 'f') THEN
        RETURN '{}';
    END IF;
    RETURN (SELECT coalesce(array_agg(l.relation ORDER BY l.relation), '{}')
              FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
             WHERE l.locktype = 'relation' AND l.pid = pg_backend_pid() AND l.granted
               AND l.mode = 'AccessExclusiveLock' AND c.relkind = 'f'
               AND l.database = (SELECT oid FROM pg_database
                                  WHERE datname = current_database()));
END $$;
REVOKE ALL ON FUNCTION softguard._remote_locked() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._remote_locked() TO PUBLIC;

-- After truncate_op's TRUNCATE: refuse when it emptied a foreign table - one it locked
-- (not locked before it ran), or one locked before that the statement names.
CREATE FUNCTION softguard._remote_truncated(before oid[], stmt text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    far oid;
BEGIN
    SELECT f INTO far FROM unnest(softguard._remote_locked()) f JOIN pg_class c ON c.oid = f
     WHERE NOT (f = ANY (before)) OR strpos(lower(stmt), lower(c.relname)) > 0
     ORDER BY f LIMIT 1;
    IF far IS NOT NULL THEN
        PERFORM softguard._remote_refuse('TRUNCATE', far::regclass);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._remote_truncated(oid[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._remote_truncated(oid[], text) TO PUBLIC;

-- truncate_op refuses a TRUNCATE that emptied a foreign table.
CREATE OR REPLACE PROCEDURE softguard.truncate_op(stmt text, ctx jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    op bigint;
    far oid[];
BEGIN
    PERFORM softguard._notice(coalesce(ctx->>'offset', '0'), 'SGBEG');
    op := softguard._op_begin(stmt, ctx, 'TRUNCATE');
    PERFORM pg_catalog.set_config('softguard.truncate_op', op::text, true);
    far := softguard._remote_locked();
    EXECUTE stmt;
    -- a foreign table fires no TRUNCATE trigger: its rows were not captured (decision 0013)
    PERFORM softguard._remote_truncated(far, stmt);
    PERFORM pg_catalog.set_config('softguard.truncate_op', '', true);
    PERFORM softguard._notice(softguard._truncate_finish(op, coalesce(ctx->>'action', 'TRUNCATE TABLE')));
    PERFORM softguard._notice(coalesce(ctx->>'action', 'TRUNCATE TABLE'), 'SGEND');
END $$;
GRANT EXECUTE ON PROCEDURE softguard.truncate_op(text, jsonb) TO PUBLIC;

-- Foreign tables created later, and those that become a partition or child of another
-- table, get the remote guard (40_capture.sql) - on them and on the tables above them.
CREATE FUNCTION softguard._capture_remote_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF current_setting('softguard.probe', true) = 'on' THEN
        RETURN;
    END IF;
    FOR r IN WITH RECURSIVE d(rel) AS (
                 SELECT c.objid FROM pg_event_trigger_ddl_commands() c
                  WHERE c.classid = 'pg_class'::regclass AND c.objsubid = 0
                 UNION SELECT i.inhrelid FROM pg_inherits i JOIN d ON i.inhparent = d.rel)
             SELECT d.rel FROM d JOIN pg_class k ON k.oid = d.rel
              WHERE k.relkind = 'f' ORDER BY d.rel LOOP
        PERFORM softguard._install_remote_guard(r.rel);
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_remote_ddl() FROM PUBLIC;

CREATE EVENT TRIGGER softguard_capture_remote ON ddl_command_end
    WHEN TAG IN ('CREATE FOREIGN TABLE', 'IMPORT FOREIGN SCHEMA', 'ALTER TABLE',
                 'ALTER FOREIGN TABLE')
    EXECUTE FUNCTION softguard._capture_remote_ddl();
ALTER EVENT TRIGGER softguard_capture_remote ENABLE ALWAYS;

SELECT softguard._install_remote_guard(c.oid) FROM pg_class c WHERE c.relkind = 'f'
 ORDER BY c.oid;
