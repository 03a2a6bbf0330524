-- Version 3: the trust boundary (docs/threat-model.md, G6-G9).
--
-- Each section below is one change. Every function a section (re)defines is written with
-- its final definition (a function two sections change appears in both, the same). So
-- that no event trigger runs a final definition before the objects it needs exist,
-- softguard's event triggers are off while the sections run; the passes over existing
-- tables run once, at the end, before every event trigger is enabled ALWAYS again.

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', e.evtname);
    END LOOP;
END $$;

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
CREATE OR REPLACE FUNCTION softguard._backend_start() RETURNS timestamptz
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
CREATE OR REPLACE FUNCTION softguard._session(verify boolean) RETURNS softguard.sessions
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
CREATE OR REPLACE FUNCTION softguard._retention(reg softguard.sessions, requested integer)
RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.make_interval(secs => CASE
        WHEN reg.pid IS NULL THEN coalesce(requested, 604800)
        ELSE greatest(reg.retention_seconds, coalesce(requested, 0)) END)
$$;
REVOKE ALL ON FUNCTION softguard._retention(softguard.sessions, integer) FROM PUBLIC;

-- The client address an operation of a session records: the registered one, else the
-- address PostgreSQL saw.
CREATE OR REPLACE FUNCTION softguard._client_addr(reg softguard.sessions) RETURNS text
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

CREATE OR REPLACE FUNCTION softguard._capture_statement() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('softguard.cur_op', '', true);
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_statement() FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._client_text(sent text) RETURNS text
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
    inh jsonb;                             -- inheritance children's rows (_inherited_claim)
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
                       ' OR UPDATE ON %s FOR EACH STATEMENT'
                       ' WHEN (pg_catalog.pg_trigger_depth() = 0)'
                       ' EXECUTE FUNCTION softguard._capture_statement()', rel::regclass);
    END IF;
    -- one statement: the tamper guard checks the table after each
    IF EXISTS (SELECT FROM softguard._capture_state(ARRAY[rel]) s WHERE s.state <> 'ok') THEN
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zz_softguard_capture_delete,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_update,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_truncate,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_statement', rel::regclass);
    END IF;
    PERFORM softguard._install_capture_inherited(rel);
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
CREATE OR REPLACE FUNCTION softguard._backstop_refuse(what text) RETURNS void
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
CREATE OR REPLACE FUNCTION softguard._backstop_drop() RETURNS void
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
CREATE OR REPLACE FUNCTION softguard._backstop_truncate(rel regclass) RETURNS void
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
        -- maintenance (purge) marks its transaction (softguard.maintenance).
        IF NOT softguard._in_maintenance() THEN
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

-- Tables get the statement trigger from the G7 section's pass over every table.

-- ---------------------------------------------------------------------------------------
-- section: SECURITY DEFINER functions and ledger tables (G8)
-- ---------------------------------------------------------------------------------------

-- softguard's own maintenance (undo, purge) is marked in a table only softguard's functions
-- write, instead of the setting softguard.internal any session could set; every ledger
-- table is guarded (captures and captured_rows as operations; operations' state and facts
-- fixed outside undo and purge); an operation that records no work does not commit
-- (verify_operation); the PUBLIC entry points check every input. docs/threat-model.md, G8.

CREATE TABLE softguard.maintenance (
    txid  xid8 PRIMARY KEY
);
REVOKE ALL ON softguard.maintenance FROM PUBLIC;
COMMENT ON TABLE softguard.maintenance IS
    'transactions running softguard''s own undo or purge (rows live only while they run)';

CREATE OR REPLACE FUNCTION softguard._maintenance_begin() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO softguard.maintenance (txid) VALUES (pg_current_xact_id()) ON CONFLICT DO NOTHING;
    RETURN FOUND;
END $$;
REVOKE ALL ON FUNCTION softguard._maintenance_begin() FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._maintenance_end(mine boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF mine THEN
        DELETE FROM softguard.maintenance WHERE txid = pg_current_xact_id();
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._maintenance_end(boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._in_maintenance() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM softguard.maintenance
                    WHERE txid = pg_current_xact_id_if_assigned())
$$;
REVOKE ALL ON FUNCTION softguard._in_maintenance() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._in_maintenance() TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard._guard_ledger() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT softguard._in_maintenance() THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: rows of %I.%I cannot be %s', TG_TABLE_SCHEMA,
                             TG_TABLE_NAME, CASE TG_OP WHEN 'UPDATE' THEN 'changed'
                                                       ELSE 'removed' END),
            HINT = 'The ledger is kept by softguard; softguard purge removes expired entries.';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION softguard._guard_operation() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF softguard._in_maintenance() THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('softguard: operation %s cannot be changed', OLD.id),
        HINT = 'Its state changes through softguard undo and softguard purge only.';
END $$;
REVOKE ALL ON FUNCTION softguard._guard_operation() FROM PUBLIC;
CREATE TRIGGER guard_operation BEFORE UPDATE ON softguard.operations
    FOR EACH ROW
    WHEN (OLD.txid IS DISTINCT FROM pg_current_xact_id()
          OR (NEW.id, NEW.created_at, NEW.expires_at, NEW.db_role, NEW."current_role",
              NEW.application_name, NEW.client_addr, NEW.kind, NEW.state, NEW.undone_at,
              NEW.undone_by, NEW.purged_at, NEW.purged_by, NEW.undo_of, NEW.txid,
              NEW.purge_archive)
             IS DISTINCT FROM
             (OLD.id, OLD.created_at, OLD.expires_at, OLD.db_role, OLD."current_role",
              OLD.application_name, OLD.client_addr, OLD.kind, OLD.state, OLD.undone_at,
              OLD.undone_by, OLD.purged_at, OLD.purged_by, OLD.undo_of, OLD.txid,
              OLD.purge_archive))
    EXECUTE FUNCTION softguard._guard_operation();
ALTER TABLE softguard.operations ENABLE ALWAYS TRIGGER guard_operation;

CREATE OR REPLACE FUNCTION softguard._verify_operation() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    bad text;
BEGIN
    SELECT * INTO o FROM softguard.operations WHERE id = NEW.id;
    IF NOT FOUND THEN
        RETURN NULL;                       -- removed by its own transaction (_truncate_finish)
    END IF;
    IF jsonb_typeof(o.objects) <> 'array' OR jsonb_array_length(o.objects) = 0 THEN
        bad := 'it names no object';
    ELSIF o.kind = 'TRUNCATE' THEN
        IF NOT EXISTS (SELECT FROM softguard.captures c
                        WHERE c.op_id = o.id AND c.event = 'truncate') THEN
            bad := 'no table was truncated';
        END IF;
    ELSIF o.kind = 'ALTER TABLE' THEN
        SELECT format('column %s is still there', c.table_identity || '.' || (c.info->>'name'))
          INTO bad
          FROM softguard.captures c
         WHERE c.op_id = o.id AND c.event = 'column' AND c.info->>'kind' IS NULL
           AND EXISTS (SELECT FROM pg_attribute a
                        WHERE a.attrelid = c.relid AND a.attnum = (c.info->>'attnum')::integer
                          AND NOT a.attisdropped)
         LIMIT 1;
        IF bad IS NULL THEN
            SELECT format('the type change of %s was not completed',
                          c.table_identity || '.' || (c.info->>'name'))
              INTO bad
              FROM softguard.captures c
             WHERE c.op_id = o.id AND c.event = 'column' AND c.info->>'kind' = 'type'
               AND NOT c.info ? 'new_capture'
             LIMIT 1;
        END IF;
        IF bad IS NULL AND NOT EXISTS (SELECT FROM softguard.captures c WHERE c.op_id = o.id) THEN
            bad := 'nothing was captured';
        END IF;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: operation %s recorded work that was not done (%s)',
                             o.id, bad),
            HINT = 'Operations are recorded by the statements softguard rewrites, not by '
                   'calling its functions.';
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._verify_operation() FROM PUBLIC;
CREATE CONSTRAINT TRIGGER verify_operation AFTER INSERT ON softguard.operations
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.kind NOT IN ('DELETE', 'UPDATE', 'MERGE', 'UNDO'))
    EXECUTE FUNCTION softguard._verify_operation();
ALTER TABLE softguard.operations ENABLE ALWAYS TRIGGER verify_operation;

CREATE OR REPLACE FUNCTION softguard._guard_capture() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF softguard._in_maintenance()
       OR (NEW.id, NEW.op_id) IS NOT DISTINCT FROM (OLD.id, OLD.op_id)
          AND EXISTS (SELECT FROM softguard.operations o
                       WHERE o.id = OLD.op_id AND o.txid = pg_current_xact_id()
                         AND o.state = 'active') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('softguard: capture %s cannot be changed', OLD.id),
        HINT = 'The ledger is kept by softguard; softguard purge removes expired entries.';
END $$;
REVOKE ALL ON FUNCTION softguard._guard_capture() FROM PUBLIC;
CREATE TRIGGER guard_ledger BEFORE DELETE OR TRUNCATE ON softguard.captures
    FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_ledger();
ALTER TABLE softguard.captures ENABLE ALWAYS TRIGGER guard_ledger;
CREATE TRIGGER guard_capture BEFORE UPDATE ON softguard.captures
    FOR EACH ROW EXECUTE FUNCTION softguard._guard_capture();
ALTER TABLE softguard.captures ENABLE ALWAYS TRIGGER guard_capture;
CREATE TRIGGER guard_ledger BEFORE DELETE OR UPDATE OR TRUNCATE ON softguard.captured_rows
    FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_ledger();
ALTER TABLE softguard.captured_rows ENABLE ALWAYS TRIGGER guard_ledger;

CREATE OR REPLACE FUNCTION softguard._truncate_finish(op bigint, action text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    targets text;
    mine boolean;
BEGIN
    SELECT * INTO o FROM softguard.operations
     WHERE id = op AND kind = 'TRUNCATE' AND txid = pg_current_xact_id() AND state = 'active';
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'softguard: not an open TRUNCATE operation';
    END IF;
    IF NOT EXISTS (SELECT FROM softguard.captures c WHERE c.op_id = op) THEN
        mine := softguard._maintenance_begin();
        DELETE FROM softguard.operations WHERE id = op;
        PERFORM softguard._maintenance_end(mine);
        RETURN format('softguard: %s kept nothing: it emptied no table softguard protects',
                      coalesce(action, 'TRUNCATE TABLE'));
    END IF;
    UPDATE softguard.operations SET
        objects = (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'type', 'table', 'identity', c.table_identity,
                       'schema', split_part(c.table_identity, '.', 1),
                       'name', (SELECT relname FROM pg_class WHERE oid = c.relid),
                       'original', strpos(lower(o.statement),
                                          lower((SELECT relname FROM pg_class WHERE oid = c.relid))) > 0,
                       'normal', true, 'classid', 'pg_class'::regclass::oid, 'objid', c.relid,
                       'objsubid', 0, 'event', 'truncate', 'rows', c.n_rows, 'held_by', NULL)
                       ORDER BY c.id), '[]')
                     FROM softguard.captures c WHERE c.op_id = op AND c.event = 'truncate'),
        row_counts = jsonb_build_object('estimate', false, 'tables', (
            SELECT coalesce(jsonb_object_agg(c.table_identity, c.n_rows), '{}')
              FROM softguard.captures c WHERE c.op_id = op AND c.event = 'truncate'))
     WHERE id = op;
    SELECT string_agg(c.table_identity, ', '
                      ORDER BY nullif(strpos(lower(o.statement), lower(r.relname)), 0) NULLS LAST, c.id)
      INTO targets
      FROM softguard.captures c JOIN pg_class r ON r.oid = c.relid
     WHERE c.op_id = op AND c.event = 'truncate' AND strpos(lower(o.statement), lower(r.relname)) > 0;
    IF targets IS NULL THEN
        SELECT string_agg(c.table_identity, ', ' ORDER BY c.id) INTO targets
          FROM softguard.captures c WHERE c.op_id = op AND c.event = 'truncate';
    END IF;
    RETURN softguard._op_notice(coalesce(action, 'TRUNCATE TABLE'), targets, op, o.expires_at);
END $$;

CREATE OR REPLACE FUNCTION softguard._op_message(op bigint, action text, targets text) RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT softguard._op_notice(action, targets, op, expires_at)
      FROM softguard.operations
     WHERE id = op AND txid = pg_current_xact_id() AND state = 'active'
$$;

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

CREATE OR REPLACE FUNCTION softguard._capture_column(op bigint, rel oid, attnum integer) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    o softguard.operations;
    a record;
    key text[];
    cid bigint;
    n bigint;
    info jsonb;
    ident text;
BEGIN
    SELECT * INTO o FROM softguard.operations
     WHERE id = op AND kind = 'ALTER TABLE' AND txid = pg_current_xact_id() AND state = 'active';
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'softguard: not an open ALTER TABLE operation';
    END IF;
    IF NOT softguard._protected_table(rel)
       OR NOT pg_has_role(softguard._client_role(), (SELECT relowner FROM pg_class WHERE oid = rel), 'USAGE')
       OR NOT EXISTS (SELECT FROM pg_attribute at WHERE at.attrelid = rel
                         AND at.attnum = _capture_column.attnum AND at.attnum > 0
                         AND NOT at.attisdropped)
       OR EXISTS (SELECT FROM softguard.captures c WHERE c.op_id = op AND c.relid = rel
                     AND c.event = 'column' AND c.info->>'kind' IS NULL
                     AND (c.info->>'attnum')::integer = _capture_column.attnum) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: not a column this session can drop (%s, %s)', rel, attnum);
    END IF;
    SELECT at.*, format_type(at.atttypid, at.atttypmod) AS typ,
           pg_get_expr(d.adbin, d.adrelid) AS def,
           CASE WHEN at.attcollation <> t.typcollation THEN
               (SELECT format('%I.%I', cn.nspname, co.collname) FROM pg_collation co
                  JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = at.attcollation)
           END AS coll,
           col_description(at.attrelid, at.attnum) AS cmt
      INTO a
      FROM pg_attribute at JOIN pg_type t ON t.oid = at.atttypid
      LEFT JOIN pg_attrdef d ON d.adrelid = at.attrelid AND d.adnum = at.attnum
     WHERE at.attrelid = rel AND at.attnum = _capture_column.attnum;
    ident := format('%I.%I', (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = rel),
                    (SELECT relname FROM pg_class WHERE oid = rel));
    key := softguard._row_key(rel);
    IF key IS NULL OR a.attname::text = ANY (key) THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard cannot keep column %s.%I: the table has no primary key or unique NOT NULL key%s',
                             ident, a.attname, CASE WHEN key IS NOT NULL THEN ' without it' ELSE '' END),
            HINT = 'Add a primary key first, or run the statement without softguard.';
    END IF;
    IF a.attidentity <> '' OR a.attgenerated <> '' THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard cannot yet keep identity or generated column %s.%I', ident, a.attname);
    END IF;
    info := jsonb_build_object(
        'name', a.attname, 'type', a.typ, 'not_null', a.attnotnull, 'default', a.def,
        'collation', a.coll, 'comment', a.cmt, 'key', to_jsonb(key), 'attnum', a.attnum,
        -- constraints and indexes that the DROP removes with the column
        'constraints', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                            'name', c.conname, 'def', pg_get_constraintdef(c.oid),
                            'comment', obj_description(c.oid, 'pg_constraint')) ORDER BY c.oid), '[]')
                          FROM pg_constraint c
                         WHERE c.conrelid = rel AND c.conislocal AND a.attnum = ANY (c.conkey)
                           AND c.contype <> 'n'),
        'indexes', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                        'name', ic.relname, 'def', pg_get_indexdef(i.indexrelid),
                        'comment', obj_description(i.indexrelid, 'pg_class')) ORDER BY i.indexrelid), '[]')
                      FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                     WHERE i.indrelid = rel
                       AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid
                                        AND c.conrelid = rel)
                       AND (a.attnum = ANY (i.indkey)
                            OR EXISTS (SELECT FROM pg_depend d
                                        WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                                          AND d.refobjid = rel AND d.refobjsubid = a.attnum))));
    cid := nextval(pg_get_serial_sequence('softguard.captures', 'id')::regclass);
    EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                   ' SELECT %s, ROW(%s, t.%I)::text FROM ONLY %s t',
                   cid, (SELECT string_agg(format('t.%I', k), ', ') FROM unnest(key) k),
                   a.attname, rel::regclass);
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns, info)
    VALUES (cid, op, rel, ident, 'column', n,
            (SELECT jsonb_agg(jsonb_build_array(k, format_type(at.atttypid, at.atttypmod)) ORDER BY x.ord)
               FROM unnest(key) WITH ORDINALITY x(k, ord)
               JOIN pg_attribute at ON at.attrelid = rel AND at.attname = x.k)
            || jsonb_build_array(jsonb_build_array('sg_value', a.typ)),
            info);
    UPDATE softguard.operations SET
        objects = objects || jsonb_build_array(jsonb_build_object(
            'type', 'table column', 'identity', format('%s.%I', ident, a.attname),
            'original', true, 'normal', true, 'classid', 'pg_class'::regclass::oid,
            'objid', rel, 'objsubid', a.attnum, 'rows', n, 'held_by', NULL)),
        row_counts = jsonb_set(row_counts, ARRAY['tables', ident], to_jsonb(n))
     WHERE id = op;
    RETURN format('%s.%I', ident, a.attname);
END $$;

CREATE OR REPLACE FUNCTION softguard._capture_type(op bigint, rel oid, attnum integer, changed text[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    a record;
    key text[];
    cid bigint;
    n bigint;
    ident text;
BEGIN
    PERFORM FROM softguard.operations
     WHERE id = op AND kind = 'ALTER TABLE' AND txid = pg_current_xact_id() AND state = 'active';
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'softguard: not an open ALTER TABLE operation';
    END IF;
    IF NOT softguard._protected_table(rel)
       OR NOT pg_has_role(softguard._client_role(), (SELECT relowner FROM pg_class WHERE oid = rel), 'USAGE') THEN
        RETURN NULL;
    END IF;
    SELECT at.attname, at.attnum, at.attnotnull, at.attidentity, at.attgenerated,
           format_type(at.atttypid, at.atttypmod) AS typ,
           pg_get_expr(d.adbin, d.adrelid) AS def,
           CASE WHEN at.attcollation <> t.typcollation THEN
               (SELECT format('%I.%I', cn.nspname, co.collname) FROM pg_collation co
                  JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = at.attcollation)
           END AS coll
      INTO a
      FROM pg_attribute at JOIN pg_type t ON t.oid = at.atttypid
      LEFT JOIN pg_attrdef d ON d.adrelid = at.attrelid AND d.adnum = at.attnum
     WHERE at.attrelid = rel AND at.attnum = _capture_type.attnum AND NOT at.attisdropped;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    ident := format('%I.%I', (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = rel),
                    (SELECT relname FROM pg_class WHERE oid = rel));
    key := softguard._row_key(rel, changed);
    IF key IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard cannot keep the values of %s.%I across its type change: %s',
                             ident, a.attname,
                             CASE WHEN softguard._row_key(rel) IS NULL
                                  THEN 'the table has no primary key or unique NOT NULL key'
                                  ELSE 'every primary key or unique NOT NULL key of the table has '
                                       'a column whose type this statement changes' END),
            HINT = 'Add a primary key first, or give the role running it alter = "allow" in '
                   'softguard''s policy (the change is then not reversible).';
    END IF;
    IF a.attidentity <> '' OR a.attgenerated <> '' THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard cannot yet keep identity or generated column %s.%I', ident, a.attname);
    END IF;
    cid := nextval(pg_get_serial_sequence('softguard.captures', 'id')::regclass);
    EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                   ' SELECT %s, ROW(%s, t.%I)::text FROM %s t',
                   cid, (SELECT string_agg(format('t.%I', k), ', ') FROM unnest(key) k),
                   a.attname, rel::regclass);
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns, info)
    VALUES (cid, op, rel, ident, 'column', n,
            (SELECT jsonb_agg(jsonb_build_array(k, format_type(at.atttypid, at.atttypmod)) ORDER BY x.ord)
               FROM unnest(key) WITH ORDINALITY x(k, ord)
               JOIN pg_attribute at ON at.attrelid = rel AND at.attname = x.k)
            || jsonb_build_array(jsonb_build_array('sg_value', a.typ)),
            jsonb_build_object('kind', 'type', 'name', a.attname, 'attnum', a.attnum,
                               'type', a.typ, 'not_null', a.attnotnull, 'default', a.def,
                               'collation', a.coll, 'key', to_jsonb(key),
                               -- PostgreSQL re-parses these for the new type (casts added):
                               -- undo puts back their exact definitions
                               'checks', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                   'name', co.conname, 'def', pg_get_constraintdef(co.oid),
                                   'comment', obj_description(co.oid, 'pg_constraint'))
                                   ORDER BY co.conname), '[]')
                                 FROM pg_constraint co
                                WHERE co.conrelid = rel AND co.contype = 'c' AND co.conislocal
                                  AND a.attnum = ANY (co.conkey))));
    RETURN cid;
END $$;

CREATE OR REPLACE FUNCTION softguard._capture_type_after(op bigint, cid bigint) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    c softguard.captures;
    a record;
    key text[];
    cn bigint;
    n bigint;
BEGIN
    SELECT cp.* INTO c FROM softguard.captures cp JOIN softguard.operations o ON o.id = cp.op_id
     WHERE cp.id = cid AND cp.op_id = op AND cp.info->>'kind' = 'type'
       AND NOT cp.info ? 'new_capture' AND o.txid = pg_current_xact_id() AND o.state = 'active';
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'softguard: not an open ALTER TABLE operation';
    END IF;
    key := ARRAY(SELECT jsonb_array_elements_text(c.info->'key'));
    -- ALTER COLUMN ... TYPE keeps the attribute number
    SELECT at.attname, format_type(at.atttypid, at.atttypmod) AS typ,
           pg_get_expr(d.adbin, d.adrelid) AS def
      INTO a
      FROM pg_attribute at
      LEFT JOIN pg_attrdef d ON d.adrelid = at.attrelid AND d.adnum = at.attnum
     WHERE at.attrelid = c.relid AND at.attnum = (c.info->>'attnum')::integer AND NOT at.attisdropped;
    cn := nextval(pg_get_serial_sequence('softguard.captures', 'id')::regclass);
    EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                   ' SELECT %s, ROW(%s, t.%I)::text FROM %s t',
                   cn, (SELECT string_agg(format('t.%I', k), ', ') FROM unnest(key) k),
                   a.attname, c.relid::regclass);
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns, info)
    VALUES (cn, op, c.relid, c.table_identity, 'column', n,
            (c.columns - (jsonb_array_length(c.columns) - 1))
                || jsonb_build_array(jsonb_build_array('sg_new', a.typ)),
            jsonb_build_object('kind', 'type_new', 'of', cid, 'name', a.attname));
    UPDATE softguard.captures
       SET info = info || jsonb_build_object('new_type', a.typ, 'new_default', a.def,
                                             'new_capture', cn)
     WHERE id = cid;
    UPDATE softguard.operations SET
        objects = objects || jsonb_build_array(jsonb_build_object(
            'type', 'table column', 'identity', format('%s.%I', c.table_identity, a.attname),
            'original', true, 'normal', true, 'classid', 'pg_class'::regclass::oid,
            'objid', c.relid, 'objsubid', (c.info->>'attnum')::integer, 'rows', c.n_rows,
            'held_by', NULL, 'event', 'alter type', 'old_type', c.info->>'type',
            'new_type', a.typ)),
        row_counts = jsonb_set(row_counts, ARRAY['tables', c.table_identity], to_jsonb(c.n_rows))
     WHERE id = op;
    RETURN format('%s.%I', c.table_identity, a.attname);
END $$;

CREATE OR REPLACE FUNCTION softguard._undo(op bigint, rename_to text, "cascade" boolean,
                                on_conflict text)
RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines softguard.undo_step[] := '{}';
    done softguard.undo_step[];
    detail text;
    holder bigint;
    o softguard.operations;
    finished boolean := false;
    mine boolean := softguard._maintenance_begin();   -- the ledger's guards let undo write
BEGIN
    PERFORM softguard._refuse_purged(op);
    FOR attempt IN 1..1000 LOOP
        BEGIN
            SELECT * INTO o FROM softguard.operations WHERE id = op;
            IF FOUND AND o.kind IN ('DELETE', 'UPDATE', 'MERGE', 'TRUNCATE', 'ALTER TABLE')
               AND o.state = 'active' THEN
                IF rename_to IS NOT NULL THEN
                    RAISE EXCEPTION USING ERRCODE = '22023',
                        MESSAGE = format('--rename-to applies to DROP operations; operation %s is a %s',
                                         op, o.kind);
                END IF;
                done := softguard._undo_rows(op, coalesce(on_conflict, 'fail'));
            ELSE
                done := softguard._undo_one(op, rename_to);
            END IF;
            lines := lines || done;
            finished := true;
            EXIT;
        EXCEPTION WHEN SQLSTATE '55006' THEN
            IF NOT "cascade" THEN
                RAISE;
            END IF;
            GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
            holder := softguard._blocked_by(detail);
            IF holder IS NULL OR holder = op THEN
                RAISE;
            END IF;
            lines := lines || softguard._undo(holder, NULL, true, on_conflict);
        END;
    END LOOP;
    IF NOT finished THEN
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = format('cannot undo operation %s: later operations keep blocking it', op);
    END IF;
    PERFORM softguard._maintenance_end(mine);
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
        -- 1. Lock what it holds (in oid order), waiting at most lock_timeout.
        FOR r IN SELECT h.relid FROM softguard.held_relations(op) h
                  WHERE h.relkind IN ('r', 'p', 'v', 'f') ORDER BY h.relid LOOP
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

CREATE OR REPLACE FUNCTION softguard.purge_rows(batch integer DEFAULT 10000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    cid bigint;
    want integer;
    n bigint;
    done bigint := 0;
    mine boolean := softguard._maintenance_begin();
BEGIN
    LOOP
        want := greatest(batch - done, 0)::integer;
        EXIT WHEN want = 0;
        SELECT c.id INTO cid FROM softguard.captures c
         WHERE c.released_at IS NOT NULL ORDER BY c.id LIMIT 1;
        EXIT WHEN cid IS NULL;
        DELETE FROM softguard.captured_rows cr
         WHERE cr.ctid = ANY (ARRAY(SELECT x.ctid FROM softguard.captured_rows x
                                    WHERE x.capture_id = cid LIMIT want));
        GET DIAGNOSTICS n = ROW_COUNT;
        done := done + n;
        IF n < want THEN
            DELETE FROM softguard.captures c WHERE c.id = cid;
            done := done + 1;
        END IF;
        cid := NULL;
    END LOOP;
    PERFORM softguard._maintenance_end(mine);
    RETURN done;
END $$;

CREATE OR REPLACE FUNCTION softguard.purge_soft_rows(op bigint, batch integer DEFAULT 10000,
                                          lock_timeout text DEFAULT '2s')
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    o softguard.operations;
    c softguard.captures;
    taken bigint;
    deleted bigint;
    total bigint := 0;
    mine boolean;
BEGIN
    PERFORM set_config('lock_timeout', coalesce(lock_timeout, '2s'), true);
    PERFORM set_config('softguard.capture', '', true);  -- purge's DELETE is not an operation
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF NOT FOUND OR o.state <> 'active' THEN
        RETURN 0;
    END IF;
    mine := softguard._maintenance_begin();
    FOR c IN SELECT * FROM softguard.captures
              WHERE op_id = op AND event = 'soft_delete' AND released_at IS NULL ORDER BY id LOOP
        EXIT WHEN total >= batch;
        CONTINUE WHEN NOT EXISTS (SELECT FROM pg_class WHERE oid = c.relid);
        IF NOT c.info ? 'purging' THEN
            UPDATE softguard.captures SET info = info || jsonb_build_object('purging', now())
             WHERE id = c.id;
        END IF;
        EXECUTE format('WITH b AS (DELETE FROM softguard.captured_rows r WHERE r.ctid = ANY (ARRAY('
                       'SELECT x.ctid FROM softguard.captured_rows x WHERE x.capture_id = %s LIMIT %s))'
                       ' RETURNING r."row"), d AS (DELETE FROM %s t USING (%s) s WHERE %s RETURNING 1)'
                       ' SELECT (SELECT count(*) FROM b), (SELECT count(*) FROM d)',
                       c.id, batch - total, c.relid::regclass,
                       softguard._sd_source(c, 'b'),
                       softguard._sd_match(c))
            INTO taken, deleted;
        UPDATE softguard.captures
           SET info = jsonb_set(info, '{purged_rows}',
                                to_jsonb(coalesce((info->>'purged_rows')::bigint, 0) + deleted))
         WHERE id = c.id;
        total := total + taken;
    END LOOP;
    PERFORM softguard._maintenance_end(mine);
    RETURN total;
END $$;

CREATE OR REPLACE FUNCTION softguard._capture_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    detail text;
    victim text;
BEGIN
    IF current_setting('softguard.probe', true) IS DISTINCT FROM 'on' THEN
        -- Backstop: SQL softguard cannot see (a DO block, a function, a direct session)
        -- must not destroy the ledger or what is in quarantine. Only softguard's own
        -- maintenance (purge) marks its transaction (softguard.maintenance).
        IF NOT softguard._in_maintenance() THEN
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
CREATE OR REPLACE FUNCTION softguard._capture_state(rels oid[])
RETURNS TABLE (rel oid, name text, state text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    -- to_regprocedure: NULL, not an error, while a DROP FUNCTION is being refused
    rows_fn oid := pg_catalog.to_regprocedure('softguard._capture_rows()');
    truncate_fn oid := pg_catalog.to_regprocedure('softguard._capture_truncate()');
    statement_fn oid := pg_catalog.to_regprocedure('softguard._capture_statement()');
    one oid;
BEGIN
    -- one relation per query: its generic plan (kept per session) is index lookups
    FOREACH one IN ARRAY rels LOOP
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
                                           -- TRUNCATE, BEFORE DELETE OR UPDATE
                      ('zz_softguard_capture_delete'::name, rows_fn, 8, 'sg_old', NULL::text,
                       NULL::text),
                      ('zz_softguard_capture_update'::name, rows_fn, 16, 'sg_old', 'sg_new', NULL),
                      ('zz_softguard_capture_truncate'::name, truncate_fn, 34, NULL, NULL, NULL),
                      ('zz_softguard_capture_statement'::name, statement_fn, 26, NULL, NULL,
                       '(pg_trigger_depth() = 0)'))
               e(name, fn, type, old, new, qual)
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
CREATE OR REPLACE FUNCTION softguard._capture_refuse_tampering(rels oid[]) RETURNS void
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
    IF cardinality(rels) > 0 THEN
        PERFORM softguard._capture_refuse_tampering(rels);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_tamper() FROM PUBLIC;

-- Protected work refuses to run (55000) unless every softguard event trigger is there and
-- enabled ALWAYS: ALTER / DROP EVENT TRIGGER fire no event trigger, so nothing else sees
-- them switched off. Called by _probe (drop_op, alter_op's DROP COLUMN), truncate_op and
-- alter_op.
CREATE OR REPLACE FUNCTION softguard._machinery_check() RETURNS void
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
                       ' OR UPDATE ON %s FOR EACH STATEMENT'
                       ' WHEN (pg_catalog.pg_trigger_depth() = 0)'
                       ' EXECUTE FUNCTION softguard._capture_statement()', rel::regclass);
    END IF;
    -- one statement: the tamper guard checks the table after each
    IF EXISTS (SELECT FROM softguard._capture_state(ARRAY[rel]) s WHERE s.state <> 'ok') THEN
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zz_softguard_capture_delete,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_update,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_truncate,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_statement', rel::regclass);
    END IF;
    PERFORM softguard._install_capture_inherited(rel);
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
    far oid[];
BEGIN
    PERFORM softguard._notice(coalesce(ctx->>'offset', '0'), 'SGBEG');
    PERFORM softguard._machinery_check();
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
-- (this section's pass over existing tables: at the end of the script)
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

-- Undo restores exactly what was captured and says what it did not (issue 10 item 5):
-- user triggers and rules set ENABLE ALWAYS / REPLICA are off during undo; UPDATEs that
-- change keys, and UPDATEs of tables without a key, keep the keys (rows) that appeared and
-- those gone; rows of inheritance children deleted through a parent are kept whole (a row
-- trigger on each child, table softguard.inherited_rows). See 40_capture.sql and
-- docs/decisions/0006-row-capture.md ("Later changes").

-- Children's rows waiting for the statement trigger of the table the DELETE named; empty
-- outside a DELETE's own statement (rolled back with it, claimed at its end).
CREATE TABLE softguard.inherited_rows (
    txid   xid8 NOT NULL DEFAULT pg_current_xact_id(),
    stmt   text NOT NULL,                -- statement key, as in _capture_rows
    relid  oid NOT NULL,
    "row"  text NOT NULL
);
REVOKE ALL ON softguard.inherited_rows FROM PUBLIC;

-- The row trigger on inheritance children: the whole row, in the fixed formats.
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
                                          WHERE s.pid = pg_backend_pid()), '{}'))) THEN
        RETURN NULL;
    END IF;
    INSERT INTO softguard.inherited_rows (stmt, relid, "row")
    VALUES ((extract(epoch FROM statement_timestamp()) * 1000000)::bigint::text, TG_RELID, OLD::text);
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_inherited() FROM PUBLIC;

-- Put the row trigger on `rel` when it is an inheritance child (idempotent).
CREATE OR REPLACE FUNCTION softguard._install_capture_inherited(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF softguard._protected_table(rel)
       AND EXISTS (SELECT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                    WHERE i.inhrelid = rel AND c.relkind = 'r' AND NOT c.relispartition)
       AND NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = rel
                        AND tgname = 'zz_softguard_capture_inherited') THEN
        EXECUTE format('CREATE TRIGGER zz_softguard_capture_inherited AFTER DELETE ON %s'
                       ' FOR EACH ROW EXECUTE FUNCTION softguard._capture_inherited()',
                       rel::regclass);
        -- ALWAYS, as the capture triggers: replica mode must not silence it
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zz_softguard_capture_inherited',
                       rel::regclass);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._install_capture_inherited(oid) FROM PUBLIC;

-- In the statement trigger of a DELETE on `rel`: drop what rel's own row trigger kept (its
-- transition table has those rows whole), and move what its inheritance descendants' row
-- triggers kept into captures of their own. Returns [{relid, cid, n}], NULL when none.
-- Runs once per captured statement and table: no SET (called from _capture_rows).
CREATE OR REPLACE FUNCTION softguard._inherited_claim(rel oid, ev text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    k text;
    d record;
    cid bigint;
    n bigint;
    claimed jsonb := '[]';
BEGIN
    IF ev <> 'delete' OR NOT EXISTS (SELECT FROM pg_catalog.pg_inherits i
                                      WHERE i.inhparent = rel OR i.inhrelid = rel) THEN
        RETURN NULL;
    END IF;
    k := (extract(epoch FROM pg_catalog.statement_timestamp()) * 1000000)::bigint::text;
    DELETE FROM softguard.inherited_rows r
     WHERE r.txid = pg_catalog.pg_current_xact_id() AND r.stmt = k AND r.relid = rel;
    FOR d IN WITH RECURSIVE tree(r) AS (
                 SELECT i.inhrelid FROM pg_catalog.pg_inherits i
                   JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
                  WHERE i.inhparent = rel AND p.relkind = 'r'
                 UNION
                 SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree t ON i.inhparent = t.r)
             SELECT t.r FROM tree t WHERE softguard._protected_table(t.r) ORDER BY t.r LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger g WHERE g.tgrelid = d.r
                        AND g.tgname = 'zz_softguard_capture_inherited') THEN
            -- its rows are gone already: keep nothing rather than a part of them
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('softguard: cannot keep the rows of %s deleted through %s:'
                                 ' its capture trigger is missing', d.r::regclass, rel::regclass),
                HINT = 'Delete from the child table itself, or run softguard init again.';
        END IF;
        cid := pg_catalog.nextval('softguard.captures_id_seq'::regclass);
        WITH m AS (DELETE FROM softguard.inherited_rows r
                    WHERE r.txid = pg_catalog.pg_current_xact_id() AND r.stmt = k AND r.relid = d.r
                   RETURNING r."row")
        INSERT INTO softguard.captured_rows (capture_id, "row") SELECT cid, m."row" FROM m;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN
            claimed := claimed || pg_catalog.jsonb_build_array(
                pg_catalog.jsonb_build_object('relid', d.r, 'cid', cid, 'n', n));
        END IF;
    END LOOP;
    RETURN CASE WHEN claimed = '[]' THEN NULL ELSE claimed END;
END $$;
REVOKE ALL ON FUNCTION softguard._inherited_claim(oid, text) FROM PUBLIC;

-- The capture of `rel`'s own rows when descendants' rows were claimed: sg_old less those
-- rows cut to rel's columns (a multiset difference: identical rows of rel itself stay).
-- Run by _capture_rows (only it sees sg_old) with $1 = the capture id.
CREATE OR REPLACE FUNCTION softguard._inherited_sql(rel oid, claimed jsonb) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cols text := (SELECT pg_catalog.string_agg(pg_catalog.format('(q.p).%I', c->>0), ', ' ORDER BY o)
                    FROM pg_catalog.jsonb_array_elements(softguard._columns(rel))
                         WITH ORDINALITY x(c, o));
BEGIN
    RETURN pg_catalog.format(
        'INSERT INTO softguard.captured_rows (capture_id, "row") SELECT $1, s.x FROM'
        ' (SELECT o::text AS x FROM sg_old o EXCEPT ALL (%s)) s',
        (SELECT pg_catalog.string_agg(pg_catalog.format(
                    'SELECT ROW(%s)::text FROM (SELECT r."row"::%s AS p FROM softguard.captured_rows r'
                    ' WHERE r.capture_id = %s) q', cols, (e->>'relid')::oid::regclass, e->>'cid'),
                ' UNION ALL ')
           FROM pg_catalog.jsonb_array_elements(claimed) e));
END $$;
REVOKE ALL ON FUNCTION softguard._inherited_sql(oid, jsonb) FROM PUBLIC;

-- The statement _capture_rows runs (it alone sees sg_old and sg_new) after an UPDATE's old
-- rows: keeps the keys that appeared and those gone (whole rows for a table without a
-- key) under two new capture ids and returns {key, appeared, gone, changed} for the
-- capture's info; no row (NULL) when no key changed. With `detect`, a cheaper statement
-- first (planning the full one costs more than a one-row UPDATE): a row ('{}') when keys
-- may have changed.
CREATE OR REPLACE FUNCTION softguard._key_change_sql(rel oid, detect boolean) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    key text[] := softguard._row_key(rel);
    appeared text;
    gone text;
BEGIN
    IF detect THEN
        RETURN CASE WHEN key IS NULL THEN 'SELECT ''{}''::jsonb' ELSE pg_catalog.format(
            'SELECT ''{}''::jsonb WHERE EXISTS (SELECT FROM sg_new n WHERE NOT EXISTS'
            ' (SELECT FROM sg_old o WHERE %s))',
            (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I = n.%I', c, c), ' AND ')
               FROM pg_catalog.unnest(key) c)) END;
    END IF;
    IF key IS NULL THEN
        appeared := 'SELECT n::text AS x FROM sg_new n EXCEPT ALL SELECT o::text FROM sg_old o';
        gone := 'SELECT o::text AS x FROM sg_old o EXCEPT ALL SELECT n::text FROM sg_new n';
    ELSE
        appeared := pg_catalog.format(
            'SELECT ROW(%s)::text AS x FROM sg_new n WHERE NOT EXISTS (SELECT FROM sg_old o WHERE %s)',
            (SELECT pg_catalog.string_agg(pg_catalog.format('n.%I', c), ', ') FROM pg_catalog.unnest(key) c),
            (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I = n.%I', c, c), ' AND ')
               FROM pg_catalog.unnest(key) c));
        gone := pg_catalog.format(
            'SELECT ROW(%s)::text AS x FROM sg_old o WHERE EXISTS (SELECT FROM a)'
            ' AND NOT EXISTS (SELECT FROM sg_new n WHERE %s)',
            (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I', c), ', ') FROM pg_catalog.unnest(key) c),
            (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I = n.%I', c, c), ' AND ')
               FROM pg_catalog.unnest(key) c));
    END IF;
    RETURN pg_catalog.format(
        'WITH a AS MATERIALIZED (%s), g AS MATERIALIZED (%s),'
        ' c AS MATERIALIZED (SELECT pg_catalog.nextval(%L::regclass) AS ca,'
        ' pg_catalog.nextval(%L::regclass) AS cg WHERE %s),'
        ' ia AS (INSERT INTO softguard.captured_rows (capture_id, "row") SELECT c.ca, a.x FROM c, a),'
        ' ig AS (INSERT INTO softguard.captured_rows (capture_id, "row") SELECT c.cg, g.x FROM c, g)'
        ' SELECT pg_catalog.jsonb_build_object(''key'', %L::jsonb, ''appeared'', c.ca,'
        ' ''gone'', c.cg, ''changed'', (SELECT pg_catalog.count(*) FROM a)) FROM c',
        appeared, gone, 'softguard.captures_id_seq', 'softguard.captures_id_seq',
        CASE WHEN key IS NULL THEN 'true' ELSE 'EXISTS (SELECT FROM a)' END,
        pg_catalog.to_jsonb(key));
END $$;
REVOKE ALL ON FUNCTION softguard._key_change_sql(oid, boolean) FROM PUBLIC;

-- After _capture_rows recorded capture `cid` of `rel` in operation `op` (with info `kinfo`):
-- the captures of the keys an UPDATE changed (n_rows 0: read only through their capture's info) and of the
-- rows of inheritance children a DELETE removed (joining the operation like a cascade).
CREATE OR REPLACE FUNCTION softguard._capture_more(op bigint, cid bigint, rel oid, kinfo jsonb,
                                        claimed jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    e jsonb;
    child oid;
    ident text;
    kcols jsonb;
BEGIN
    IF kinfo ? 'appeared' THEN
        IF (kinfo->>'changed')::bigint > 0 AND EXISTS (
               SELECT FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = rel AND NOT c.relispartition) THEN
            -- rows that moved to other keys may be the children's: undo would put them
            -- into the parent
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = pg_catalog.format('softguard: cannot make this UPDATE of %s reversible:'
                                            ' it changes keys of rows that may belong to its'
                                            ' inheritance children', rel::regclass),
                HINT = 'Update the child tables themselves.';
        END IF;
        kcols := CASE WHEN kinfo->'key' = 'null' THEN softguard._columns(rel) ELSE
                     (SELECT pg_catalog.jsonb_agg(c ORDER BY k.o)
                        FROM pg_catalog.jsonb_array_elements_text(kinfo->'key') WITH ORDINALITY k(name, o)
                        JOIN pg_catalog.jsonb_array_elements(softguard._columns(rel)) c ON c->>0 = k.name)
                 END;
        INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns, info)
        SELECT (kinfo->>s)::bigint, op, rel, cp.table_identity, 'update', 0, kcols,
               pg_catalog.jsonb_build_object('part_of', cid, 'side', s)
          FROM softguard.captures cp, pg_catalog.unnest(ARRAY['appeared', 'gone']) s
         WHERE cp.id = cid;
    END IF;
    FOR e IN SELECT x FROM pg_catalog.jsonb_array_elements(coalesce(claimed, '[]')) x LOOP
        child := (e->>'relid')::oid;
        SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) INTO ident
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = child;
        INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns)
        VALUES ((e->>'cid')::bigint, op, child, ident, 'delete', (e->>'n')::bigint,
                softguard._columns(child));
        UPDATE softguard.operations o SET
            objects = o.objects || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'type', 'table', 'identity', ident, 'schema', pg_catalog.split_part(ident, '.', 1),
                'name', (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = child),
                'original', false, 'normal', true, 'classid', 'pg_class'::regclass::oid,
                'objid', child, 'objsubid', 0, 'event', 'delete', 'rows', (e->>'n')::bigint,
                'held_by', NULL)),
            row_counts = pg_catalog.jsonb_set(o.row_counts, ARRAY['tables', ident],
                pg_catalog.to_jsonb(coalesce((o.row_counts->'tables'->>ident)::bigint, 0)
                                    + (e->>'n')::bigint))
         WHERE o.id = op;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_more(bigint, bigint, oid, jsonb, jsonb) FROM PUBLIC;

-- The statement-level AFTER DELETE / AFTER UPDATE trigger (transition table sg_old).
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
REVOKE ALL ON FUNCTION softguard._capture_rows() FROM PUBLIC;

-- Install the capture triggers on one table (idempotent).
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
                       ' OR UPDATE ON %s FOR EACH STATEMENT'
                       ' WHEN (pg_catalog.pg_trigger_depth() = 0)'
                       ' EXECUTE FUNCTION softguard._capture_statement()', rel::regclass);
    END IF;
    -- one statement: the tamper guard checks the table after each
    IF EXISTS (SELECT FROM softguard._capture_state(ARRAY[rel]) s WHERE s.state <> 'ok') THEN
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zz_softguard_capture_delete,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_update,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_truncate,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_statement', rel::regclass);
    END IF;
    PERFORM softguard._install_capture_inherited(rel);
END $$;
REVOKE ALL ON FUNCTION softguard._install_capture(oid) FROM PUBLIC;

-- User triggers and rules that fire in replica mode (ENABLE ALWAYS, ENABLE REPLICA) on the
-- tables an undo of data changes writes into, their partitions and inheritance children:
-- disabled for the undo's own transaction, so that nothing but the captured values lands in
-- the restored rows. softguard's own triggers are left alone. Returns what
-- _undo_triggers_back puts back, parents first.
CREATE OR REPLACE FUNCTION softguard._undo_triggers_off(op bigint) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    saved jsonb := '[]';
BEGIN
    FOR t IN WITH RECURSIVE tree(rel, depth) AS (
                 SELECT DISTINCT c.relid, 0 FROM softguard.captures c WHERE c.op_id = op
                 UNION
                 SELECT i.inhrelid, tr.depth + 1 FROM pg_inherits i JOIN tree tr ON i.inhparent = tr.rel
                  WHERE tr.depth < 100)
             SELECT 'TRIGGER' AS kind, g.tgrelid AS rel, g.tgname::text AS name,
                    g.tgenabled::text AS state, min(tree.depth) AS depth
               FROM pg_trigger g JOIN tree ON tree.rel = g.tgrelid
              WHERE NOT g.tgisinternal AND g.tgenabled IN ('A', 'R')
                AND g.tgfoid NOT IN (SELECT p.oid FROM pg_proc p
                                      WHERE p.pronamespace = 'softguard'::regnamespace)
              GROUP BY 1, 2, 3, 4
             UNION ALL
             SELECT 'RULE', w.ev_class, w.rulename::text, w.ev_enabled::text, min(tree.depth)
               FROM pg_rewrite w JOIN tree ON tree.rel = w.ev_class
              WHERE w.ev_enabled IN ('A', 'R') AND w.rulename <> '_RETURN'
              GROUP BY 1, 2, 3, 4
             ORDER BY 5, 2, 3 LOOP
        EXECUTE format('ALTER TABLE %s DISABLE %s %I', t.rel::regclass, t.kind, t.name);
        saved := saved || jsonb_build_array(jsonb_build_object(
            'kind', t.kind, 'rel', t.rel, 'name', t.name, 'state', t.state));
    END LOOP;
    RETURN saved;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_triggers_off(bigint) FROM PUBLIC;

-- The triggers and rules _undo_triggers_off disabled, back to their exact state.
CREATE OR REPLACE FUNCTION softguard._undo_triggers_back(saved jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t jsonb;
BEGIN
    FOR t IN SELECT x FROM jsonb_array_elements(saved) WITH ORDINALITY AS s(x, i) ORDER BY s.i LOOP
        EXECUTE format('ALTER TABLE %s ENABLE %s %s %I', (t->>'rel')::oid::regclass,
                       CASE t->>'state' WHEN 'A' THEN 'ALWAYS' ELSE 'REPLICA' END,
                       t->>'kind', t->>'name');
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_triggers_back(jsonb) FROM PUBLIC;

-- The rows of capture `cid` read back through row type `rtype` (_row_type), as a query.
-- OFFSET 0: the row text is parsed once, not once per column.
CREATE OR REPLACE FUNCTION softguard._captured_src(rtype text, cid bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.format('SELECT (p.x).* FROM (SELECT r."row"::%s AS x'
                             ' FROM softguard.captured_rows r WHERE r.capture_id = %s OFFSET 0) p',
                             rtype, cid)
$$;
REVOKE ALL ON FUNCTION softguard._captured_src(text, bigint) FROM PUBLIC;

-- Undo of the UPDATE captures of table `rel` in operation `op` when the operation changed
-- keys, or the table has no key (40_capture.sql, "What a transition table alone cannot
-- tell undo"): last capture first, the rows whose key appeared are deleted, the old images
-- of the keys gone re-inserted, the others given their old values by key. Changed keys are
-- never paired, so a row whose new key is not there any more, or a gone key taken since,
-- refuses the undo (no --on-conflict skip: which old row to leave out is not known).
CREATE OR REPLACE FUNCTION softguard._undo_changed(op bigint, rel oid, on_conflict text)
RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c softguard.captures;
    key text[];
    cols text[];
    ucols text[];
    rtype text;
    ktype text;
    src text;
    app text;
    gone text;
    match text;
    gmatch text;
    n_app bigint;
    n_found bigint;
    nbad bigint;
    bad text;
    ins bigint;
    upd bigint;
    inplace bigint;
    done bigint := 0;
    missing bigint := 0;
    overriding text;
    ins_sql text;     -- 'INSERT INTO rel (cols) ... FROM (': a source and ') s' follow
BEGIN
    FOR c IN SELECT * FROM softguard.captures x
              WHERE x.op_id = op AND x.relid = rel AND x.event = 'update' AND x.n_rows > 0
              ORDER BY x.id DESC LOOP
        rtype := softguard._row_type(c.columns, c.id::text);
        cols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                         AND a.attgenerated = ''
                         AND a.attname IN (SELECT x->>0 FROM jsonb_array_elements(c.columns) x)
                       ORDER BY a.attnum);
        ucols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                        WHERE a.attrelid = rel AND a.attname = ANY (cols) AND a.attidentity <> 'a'
                        ORDER BY a.attnum);
        overriding := CASE WHEN EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = rel
                                         AND a.attidentity = 'a' AND a.attname = ANY (cols))
                           THEN 'OVERRIDING SYSTEM VALUE' ELSE '' END;
        src := softguard._captured_src(rtype, c.id);
        ins_sql := format('INSERT INTO %s (%s) %s SELECT %s FROM (', rel::regclass,
                          (SELECT string_agg(format('%I', x), ', ') FROM unnest(cols) x),
                          overriding,
                          (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(cols) x));
        IF c.info->'key' = 'null' THEN
            -- no key: the rows it left (as many of each as it left) must still be there
            EXECUTE format(
                'WITH want AS (SELECT r."row" AS x, count(*) AS m FROM softguard.captured_rows r'
                ' WHERE r.capture_id = %s GROUP BY 1),'
                ' have AS (SELECT t.tableoid AS o, t.ctid AS tid, row_number() OVER (PARTITION BY w.x) AS i,'
                ' w.m FROM %s t JOIN want w ON w.x = ROW(%s)::text),'
                ' del AS (DELETE FROM %s t USING have h WHERE h.i <= h.m AND t.tableoid = h.o'
                ' AND t.ctid = h.tid RETURNING 1)'
                ' SELECT (SELECT coalesce(sum(m), 0) FROM want), (SELECT count(*) FROM del)',
                c.info->>'appeared', rel::regclass,
                (SELECT string_agg(format('t.%I', x->>0), ', ' ORDER BY o)
                   FROM jsonb_array_elements(c.columns) WITH ORDINALITY y(x, o)),
                rel::regclass)
              INTO n_app, n_found;
            IF n_found < n_app THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s of the %s rows it changed in %s'
                                     ' (a table without a key) are not as it left them',
                                     op, n_app - n_found, n_app, rel::regclass),
                    HINT = 'Undo the later operations that changed or deleted them first.';
            END IF;
            EXECUTE ins_sql || softguard._captured_src(rtype, (c.info->>'gone')::bigint) || ') s';
            GET DIAGNOSTICS ins = ROW_COUNT;
            PERFORM softguard._check_fks(op, rel, softguard._captured_src(rtype, (c.info->>'gone')::bigint));
            done := done + ins;
            CONTINUE;
        END IF;
        key := CASE WHEN c.info ? 'key' THEN ARRAY(SELECT jsonb_array_elements_text(c.info->'key'))
                    ELSE softguard._row_key(rel) END;
        IF key IS NULL OR cardinality(key) = 0 THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('cannot undo operation %s: %s has no primary key to find the changed rows by',
                                 op, rel::regclass);
        END IF;
        match := (SELECT string_agg(format('t.%I = s.%I', x, x), ' AND ') FROM unnest(key) x);
        gone := NULL;
        ins := 0;
        IF c.info->>'appeared' IS NOT NULL THEN
            ktype := softguard._row_type((SELECT k.columns FROM softguard.captures k
                                           WHERE k.id = (c.info->>'appeared')::bigint), c.id || '_k');
            app := softguard._captured_src(ktype, (c.info->>'appeared')::bigint);
            gone := softguard._captured_src(ktype, (c.info->>'gone')::bigint);
            gmatch := (SELECT string_agg(format('g.%I = s.%I', x, x), ' AND ') FROM unnest(key) x);
            EXECUTE format('SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT FROM %s t WHERE %s))'
                           ' FROM (%s) s', rel::regclass, match, app)
              INTO n_app, n_found;
            IF n_found < n_app THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s of the %s rows of %s whose key it'
                                     ' changed no longer have that key (deleted or changed since)',
                                     op, n_app - n_found, n_app, rel::regclass),
                    HINT = 'Undo the later operations that changed or deleted them first.';
            END IF;
            EXECUTE format('SELECT count(*), string_agg(k, '', '') FILTER (WHERE n <= 5)'
                           ' FROM (SELECT format(%L, %s) AS k, row_number() OVER () AS n'
                           ' FROM (%s) s WHERE EXISTS (SELECT FROM %s t WHERE %s)) x',
                           '(' || array_to_string(key, ', ') || ')=(' ||
                               array_to_string(array_fill('%s'::text, ARRAY[cardinality(key)]), ', ') || ')',
                           (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(key) x),
                           gone, rel::regclass, match)
              INTO nbad, bad;
            IF nbad > 0 THEN
                RAISE EXCEPTION USING ERRCODE = '23505',
                    MESSAGE = format('cannot undo operation %s: %s of %s re-used since: %s%s',
                                     op, CASE WHEN nbad = 1 THEN '1 key' ELSE nbad || ' keys' END,
                                     rel::regclass, bad, CASE WHEN nbad > 5 THEN ', ...' ELSE '' END),
                    HINT = 'The operation changed these keys, so --on-conflict skip cannot leave'
                           ' their rows out: delete or re-key the rows that hold them now first.';
            END IF;
            EXECUTE format('DELETE FROM %s t USING (%s) s WHERE %s', rel::regclass, app, match);
            EXECUTE ins_sql || src || format(') s WHERE EXISTS (SELECT FROM (%s) g WHERE %s)', gone, gmatch);
            GET DIAGNOSTICS ins = ROW_COUNT;
        END IF;
        EXECUTE format('SELECT count(*) FROM (%s) s%s', src,
                       CASE WHEN gone IS NULL THEN ''
                            ELSE format(' WHERE NOT EXISTS (SELECT FROM (%s) g WHERE %s)', gone, gmatch) END)
          INTO inplace;
        EXECUTE format('UPDATE %s t SET (%s) = ROW(%s) FROM (%s) s WHERE %s%s',
                       rel::regclass,
                       (SELECT string_agg(format('%I', x), ', ') FROM unnest(ucols) x),
                       (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(ucols) x),
                       src, match,
                       CASE WHEN gone IS NULL THEN ''
                            ELSE format(' AND NOT EXISTS (SELECT FROM (%s) g WHERE %s)', gone, gmatch) END);
        GET DIAGNOSTICS upd = ROW_COUNT;
        PERFORM softguard._check_fks(op, rel, src);
        done := done + ins + upd;
        missing := missing + inplace - upd;
    END LOOP;
    RETURN ARRAY[softguard._step(op, 'restored', rel::regclass::text,
                 format('restored old values of %s rows of %s%s', done, rel::regclass,
                        CASE WHEN missing > 0 THEN format(' (%s no longer exist)', missing)
                             ELSE '' END), done)];
END $$;
REVOKE ALL ON FUNCTION softguard._undo_changed(bigint, oid, text) FROM PUBLIC;

-- Undo of a data change: clear the soft-delete marks it wrote (by key, only on rows still
-- carrying that very mark: a row un-marked and marked again since is left alone), then
-- put back everything else it captured (_undo_captures).
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
        PERFORM set_config('session_replication_role', 'replica', true);
        EXECUTE format('UPDATE %s t SET %I = s.sg_old_mark%s FROM (%s) s WHERE %s',
                       c.relid::regclass, c.info->>'column',
                       CASE WHEN c.info->>'by_column' IS NULL THEN ''
                            ELSE format(', %I = s.sg_old_by', c.info->>'by_column') END,
                       softguard._sd_source(c), softguard._sd_match(c));
        GET DIAGNOSTICS done = ROW_COUNT;
        PERFORM set_config('session_replication_role', saved_srr, true);
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
REVOKE ALL ON FUNCTION softguard._undo_rows(bigint, text) FROM PUBLIC;

-- Put back the rows, sequence values and columns operation `op` captured: deleted rows
-- re-inserted, updated rows given their old values (by _row_key), tables parents first;
-- column captures go to _undo_column. Returns what it restored.
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

    PERFORM set_config('session_replication_role', 'replica', true);

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

    PERFORM set_config('session_replication_role', saved_srr, true);

    UPDATE softguard.operations SET state = 'undone', undone_at = now(), undone_by = session_user
     WHERE id = op;
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, restore, undo_of)
    VALUES (o.expires_at, session_user, current_user, current_setting('application_name', true),
            inet_client_addr()::text,
            format('softguard undo %s%s', op,
                   CASE WHEN on_conflict = 'skip' THEN ' --on-conflict skip' ELSE '' END),
            'UNDO', o.objects, '[]', op);
    IF cardinality(lines) = 0 THEN
        lines := ARRAY[softguard._step(op, 'nothing', '', 'nothing to restore')];
    END IF;
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_captures(bigint, text) FROM PUBLIC;

-- Tables made inheritance children later (ALTER TABLE ... INHERIT) get their row trigger
-- (40_capture.sql, _install_capture_inherited); nothing else is installed on ALTER TABLE.
CREATE OR REPLACE FUNCTION softguard._capture_inherit_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF current_setting('softguard.probe', true) = 'on' THEN
        RETURN;
    END IF;
    FOR r IN SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() c
              WHERE c.classid = 'pg_class'::regclass AND c.objsubid = 0
                AND c.object_type = 'table' LOOP
        PERFORM softguard._install_capture_inherited(r.objid);
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_inherit_ddl() FROM PUBLIC;

CREATE EVENT TRIGGER softguard_capture_inherit ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION softguard._capture_inherit_ddl();
ALTER EVENT TRIGGER softguard_capture_inherit ENABLE ALWAYS;


-- Existing tables: the UPDATE trigger sees the new rows too (its enable state kept), and
-- inheritance children get their row trigger.
-- (The G7 section's pass already re-created every table's zz_softguard_capture_update
-- with its NEW TABLE, as _install_capture does now, enabled ALWAYS.)
-- (this section's pass over existing tables: at the end of the script)

-- ---------------------------------------------------------------------------------------
-- section: remote writes (issue 18)
-- ---------------------------------------------------------------------------------------

-- Refuse a write to a foreign table (rel: the foreign table, what: the verb).
CREATE OR REPLACE FUNCTION softguard._remote_refuse(what text, rel regclass) RETURNS void
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
CREATE OR REPLACE FUNCTION softguard._remote_guard() RETURNS trigger
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
CREATE OR REPLACE FUNCTION softguard._install_remote_guard(rel oid) RETURNS void
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
CREATE OR REPLACE FUNCTION softguard._remote_locked() RETURNS oid[]
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
CREATE OR REPLACE FUNCTION softguard._remote_truncated(before oid[], stmt text) RETURNS void
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
    PERFORM softguard._machinery_check();
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
CREATE OR REPLACE FUNCTION softguard._capture_remote_ddl() RETURNS event_trigger
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

-- (this section's pass over existing tables: at the end of the script)


-- ---------------------------------------------------------------------------------------
-- The passes over existing tables (capture triggers as installed, enabled ALWAYS, with the
-- statement trigger and the UPDATE trigger's NEW TABLE; inheritance children's row
-- trigger; foreign tables' remote guard), then every event trigger ALWAYS again.
-- ---------------------------------------------------------------------------------------
DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', e.evtname);
    END LOOP;
END $$;
SELECT softguard._install_capture(c.oid) FROM pg_class c WHERE c.relkind IN ('r', 'p')
 ORDER BY c.oid;
SELECT softguard._install_capture_inherited(c.oid) FROM pg_catalog.pg_class c
 WHERE c.relkind = 'r' AND softguard._protected_table(c.oid) ORDER BY c.oid;
SELECT softguard._install_remote_guard(c.oid) FROM pg_class c WHERE c.relkind = 'f'
 ORDER BY c.oid;
DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
END $$;
