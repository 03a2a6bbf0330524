-- softguard version 1: the install script as released, frozen. Never edit this file.
-- Generated from migrations/install/*.sql (softguard.ledger.migrate.install_script()); later
-- changes reach existing installs through migrations/upgrades/N--N+1.sql, and
-- tests/ledger/test_upgrade.py checks that this file plus those upgrades equals a fresh
-- install. See docs/decisions/0010-sql-layout-and-versioning.md.

-- install/00_schema.sql
-- softguard's database half: schemas, ledger tables, their grants and the ledger's guard.
--
-- The install script is the files of migrations/install/ in name order (one transaction,
-- serialised by an advisory lock, as a superuser: event triggers need one; see
-- softguard/ledger/migrate.py and docs/decisions/0010-sql-layout-and-versioning.md).
-- Editing a file here changes the install: add the matching reviewed upgrade script to
-- migrations/upgrades/ (the upgrade test compares the two).
--
-- What always holds:
-- * An operation row exists if and only if the transaction that did its work committed
--   (the row is written by that same transaction).
-- * Nothing is dropped without a way back: an object a DROP would remove is either moved into
--   quarantine, or its definition is recorded in the operation's restore plan before it is
--   dropped; anything softguard cannot keep makes drop_op fail with 0A000 (the caller's
--   transaction aborts, nothing is lost). Design: docs/decisions/0005-reversible-drop.md.
-- * Rows are captured in the database, in the transaction that removes or changes them
--   (40_capture.sql; docs/decisions/0006-row-capture.md). Captured rows are stored once, as the
--   text of the row (record_out): softguard.captured_rows (capture_id, row);
--   softguard.captures holds one row per trigger firing (operation, table, event, count,
--   the column list with types, to read the rows back whatever the table looks like at undo).
-- * Quarantine (schema softguard_quarantine, renamed schemas softguard_q<op>_<name>) and the
--   ledger tables are not accessible to PUBLIC.

CREATE SCHEMA softguard;
CREATE SCHEMA softguard_quarantine;
REVOKE ALL ON SCHEMA softguard FROM PUBLIC;
REVOKE ALL ON SCHEMA softguard_quarantine FROM PUBLIC;
-- USAGE only, so that any role can CALL softguard.drop_op (the proxy rewrites the client's
-- DROP into that CALL, run as the client's role); every table and every internal function
-- below is revoked from PUBLIC.
GRANT USAGE ON SCHEMA softguard TO PUBLIC;
COMMENT ON SCHEMA softguard IS 'softguard ledger and functions (do not edit by hand)';
COMMENT ON SCHEMA softguard_quarantine IS 'objects dropped through softguard, kept until purged';

-- One row per script applied to this database: the install of version N (name
-- 'softguard--N.sql'), then each upgrade (name 'N--N+1.sql'). The install's version is the
-- highest; see docs/decisions/0010-sql-layout-and-versioning.md.
CREATE TABLE softguard.migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON softguard.migrations FROM PUBLIC;
-- The ledger version is not a secret: the proxy reads it as the client's role.
GRANT SELECT ON softguard.migrations TO PUBLIC;

CREATE TABLE softguard.operations (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    db_role           text NOT NULL DEFAULT session_user,
    "current_role"    text,
    application_name  text,
    client_addr       text,
    statement         text NOT NULL,
    kind              text NOT NULL,            -- 'DROP TABLE', 'DROP SCHEMA', ..., 'UNDO'
    objects           jsonb NOT NULL,           -- see softguard._quarantine
    row_counts        jsonb,                    -- {"estimate": true, "tables": {...}}
    state             text NOT NULL DEFAULT 'active'
                      CHECK (state IN ('active', 'undone', 'purged')),
    undone_at         timestamptz,
    undone_by         text,
    purged_at         timestamptz,
    purged_by         text,
    undo_of           bigint REFERENCES softguard.operations (id),
    restore           jsonb NOT NULL,           -- ordered steps; undo runs them backwards
    txid              xid8 DEFAULT pg_current_xact_id(),
    purge_archive     text
);
REVOKE ALL ON softguard.operations FROM PUBLIC;
CREATE INDEX operations_active_idx ON softguard.operations (id) WHERE state = 'active';
COMMENT ON COLUMN softguard.operations.purge_archive IS
    'where softguard purge archived the operation before destroying it (NULL: not archived)';
-- Backstop for SQL softguard cannot see: the ledger's rows are never deleted except by
-- softguard's own maintenance (purge sets softguard.internal for its transaction).
CREATE FUNCTION softguard._guard_ledger() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('softguard.internal', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: rows of %I.%I cannot be removed', TG_TABLE_SCHEMA,
                             TG_TABLE_NAME),
            HINT = 'The ledger is kept by softguard; softguard purge removes expired entries.';
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._guard_ledger() FROM PUBLIC;
CREATE TRIGGER guard_ledger BEFORE DELETE OR TRUNCATE ON softguard.operations
    FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_ledger();
ALTER TABLE softguard.operations ENABLE ALWAYS TRIGGER guard_ledger;

COMMENT ON TABLE softguard.operations IS
    'one row per reversible operation, written in the transaction that performed it';

CREATE TABLE softguard.captures (
    id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    op_id           bigint NOT NULL REFERENCES softguard.operations (id),
    relid           oid NOT NULL,
    table_identity  text NOT NULL,           -- schema.table when captured
    event           text NOT NULL CHECK (event IN ('delete', 'update', 'truncate',
                                                   'sequence', 'column', 'soft_delete')),
    n_rows          bigint NOT NULL DEFAULT 0,
    columns         jsonb,                   -- [[name, type], ...] of the row text, in order
    info            jsonb,                   -- sequence state; column definition
    created_at      timestamptz NOT NULL DEFAULT now(),
    released_at     timestamptz              -- purged or undone: rows deleted by purge_rows
);
CREATE INDEX captures_op_idx ON softguard.captures (op_id);
CREATE INDEX captures_released_idx ON softguard.captures (id) WHERE released_at IS NOT NULL;
REVOKE ALL ON softguard.captures FROM PUBLIC;
COMMENT ON TABLE softguard.captures IS
    'one row per capture (trigger firing) of a reversible data change';

-- No foreign key and no per-row sequence: one extra write of each row, nothing more.
-- capture ids grow with time, so a BRIN index finds an operation's rows cheaply.
CREATE TABLE softguard.captured_rows (
    capture_id  bigint NOT NULL,             -- softguard.captures.id
    "row"       text NOT NULL                -- the old row, record_out of the table's row type
);
CREATE INDEX captured_rows_capture_brin ON softguard.captured_rows
    USING brin (capture_id) WITH (pages_per_range = 16);
REVOKE ALL ON softguard.captured_rows FROM PUBLIC;
COMMENT ON TABLE softguard.captured_rows IS 'rows removed or changed by reversible operations';

-- install/10_contract.sql
-- What the proxy and the database share (the Python side: softguard/contract.py; checked
-- against the installed code by tests/ledger/test_contract.py):
-- * private notice codes: SGBEG (first notice of a rewritten statement, message = the
--   proxy's offset), SGEND (last, message = the command tag), SGTAG (a soft delete sent
--   through the extended protocol: its UPDATE n is a DELETE n); the probe's error SGPRB
--   never leaves the database;
-- * the operation NOTICE 'softguard: <action> <targets> is reversible as operation <id>
--   until <YYYY-MM-DD>', formatted here only;
-- * the ctx the proxy passes to drop_op / truncate_op / alter_op: {"client_addr",
--   "retention_seconds", "offset", "action", ...};
-- * errors other code reacts to carry a SQLSTATE and a DETAIL of 'key=value' pairs: undo
--   blocked by a later operation is 55006 with DETAIL 'blocked_by=<op>';
-- * the undo result row, softguard.undo_step (70_undo.sql);
-- * settings: softguard.capture, softguard.retention, softguard.client_addr (session
--   defaults the proxy sets), softguard.cur_op, softguard.truncate_op, softguard.probe,
--   softguard.internal, softguard.sd_<oid> (transaction-local, the database's own).

-- Raise a NOTICE the client sees whatever its client_min_messages (changing the setting
-- only when it would hide it: two setting changes per captured statement otherwise).
CREATE FUNCTION softguard._notice(msg text, code text DEFAULT '00000') RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    saved text := pg_catalog.current_setting('client_min_messages');
BEGIN
    IF saved IN ('notice', 'log', 'debug1', 'debug2', 'debug3', 'debug4', 'debug5') THEN
        RAISE NOTICE USING ERRCODE = code, MESSAGE = msg;
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('client_min_messages', 'notice', true);
    RAISE NOTICE USING ERRCODE = code, MESSAGE = msg;
    PERFORM pg_catalog.set_config('client_min_messages', saved, true);
END $$;
GRANT EXECUTE ON FUNCTION softguard._notice(text, text) TO PUBLIC;

-- The operation NOTICE: the one place its wording is written (softguard/contract.py parses
-- it). No SET, all qualified: called from the capture trigger, it stays inlinable.
CREATE FUNCTION softguard._op_notice(action text, targets text, op bigint, expires timestamptz)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.format('softguard: %s %s is reversible as operation %s until %s',
                             action, targets, op, pg_catalog.to_char(expires, 'YYYY-MM-DD'))
$$;
REVOKE ALL ON FUNCTION softguard._op_notice(text, text, bigint, timestamptz) FROM PUBLIC;

-- The NOTICE of an operation this transaction opened (alter_op).
CREATE FUNCTION softguard._op_message(op bigint, action text, targets text) RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT softguard._op_notice(action, targets, op, expires_at)
      FROM softguard.operations WHERE id = op AND txid = pg_current_xact_id()
$$;
REVOKE ALL ON FUNCTION softguard._op_message(bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._op_message(bigint, text, text) TO PUBLIC;

-- The role the client acts as (inside SECURITY DEFINER functions current_user is the owner).
CREATE FUNCTION softguard._client_role() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN COALESCE(pg_catalog.current_setting('role', true), 'none') = 'none'
                THEN session_user::text ELSE pg_catalog.current_setting('role', true) END
$$;
REVOKE ALL ON FUNCTION softguard._client_role() FROM PUBLIC;

-- The ledger row of a TRUNCATE or ALTER TABLE operation, opened before the statement runs
-- (ctx: the proxy's, above).
CREATE FUNCTION softguard._op_begin(stmt text, ctx jsonb, kind text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    op bigint;
BEGIN
    IF kind NOT IN ('TRUNCATE', 'ALTER TABLE') THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'softguard: bad operation kind';
    END IF;
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, row_counts, restore)
    VALUES (now() + make_interval(secs => coalesce((ctx->>'retention_seconds')::integer, 604800)),
            session_user, softguard._client_role(), current_setting('application_name', true),
            coalesce(ctx->>'client_addr', inet_client_addr()::text), stmt, kind, '[]',
            jsonb_build_object('estimate', false, 'tables', '{}'::jsonb), '[]')
    RETURNING id INTO op;
    RETURN op;
END $$;
REVOKE ALL ON FUNCTION softguard._op_begin(text, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._op_begin(text, jsonb, text) TO PUBLIC;

-- DETAIL of a 55006 "undo blocked by a later operation" error, and reading it back.
CREATE FUNCTION softguard._blocked_detail(holder bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'blocked_by=' || holder
$$;
REVOKE ALL ON FUNCTION softguard._blocked_detail(bigint) FROM PUBLIC;

CREATE FUNCTION softguard._blocked_by(detail text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (pg_catalog.regexp_match(detail, '(?:^| )blocked_by=([0-9]+)(?: |$)'))[1]::bigint
$$;
REVOKE ALL ON FUNCTION softguard._blocked_by(text) FROM PUBLIC;

-- install/20_catalog.sql
-- Catalog helpers shared by drop, capture, alter, soft delete, undo and purge: they read
-- the catalog (and _probe runs a statement in a rolled-back subtransaction); none writes
-- the ledger. Those that drop_op and alter_op (SECURITY INVOKER, run as the client) call
-- keep EXECUTE for PUBLIC; the others are revoked from PUBLIC.
--
-- Hot-path helpers (called from the capture trigger) carry no SET search_path of their
-- own: the trigger's SET already pins it, and a nested SET (switching search_path back and
-- forth) makes PostgreSQL re-plan every statement of the trigger on each call. Everything
-- in them is schema-qualified instead. They are PL/pgSQL, not SQL: a SQL function that
-- cannot be inlined is planned again on every call (~0.1 ms per captured statement);
-- PL/pgSQL keeps the plan per session.

-- ---------------------------------------------------------------------------------------
-- Quarantine names and dependencies
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION softguard._is_quarantine_schema(nsp text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT nsp = 'softguard_quarantine' OR nsp ~ '^softguard_q[0-9]+_'
$$;
GRANT EXECUTE ON FUNCTION softguard._is_quarantine_schema(text) TO PUBLIC;

-- The active operation that holds an object in quarantine, from the name it was given
-- there (op<id>_<n>_<name> in softguard_quarantine, or a schema softguard_q<id>_<name>);
-- NULL for a live object (or one that does not exist).
CREATE FUNCTION softguard._holder(p_classid oid, p_objid oid, p_objsubid integer)
RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(
        (regexp_match(i.identity, '(?:^|[ ."])softguard_quarantine\."?op([0-9]+)_'))[1],
        (regexp_match(i.identity, '(?:^|[ ."])softguard_q([0-9]+)_'))[1])::bigint
      FROM pg_identify_object(p_classid, p_objid, p_objsubid) i
$$;
REVOKE ALL ON FUNCTION softguard._holder(oid, oid, integer) FROM PUBLIC;

-- The owner of an object a DROP statement can name directly.
CREATE FUNCTION softguard._owner(p_classid oid, p_objid oid) RETURNS oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE p_classid
        WHEN 'pg_class'::regclass THEN (SELECT relowner FROM pg_class WHERE oid = p_objid)
        WHEN 'pg_proc'::regclass THEN (SELECT proowner FROM pg_proc WHERE oid = p_objid)
        WHEN 'pg_type'::regclass THEN (SELECT typowner FROM pg_type WHERE oid = p_objid)
        WHEN 'pg_namespace'::regclass THEN (SELECT nspowner FROM pg_namespace WHERE oid = p_objid)
        WHEN 'pg_statistic_ext'::regclass
            THEN (SELECT stxowner FROM pg_statistic_ext WHERE oid = p_objid)
    END
$$;
REVOKE ALL ON FUNCTION softguard._owner(oid, oid) FROM PUBLIC;

-- 'op<id>_<n>_<name>' cut to PostgreSQL's 63-byte identifier limit.
CREATE FUNCTION softguard._qname(prefix text, name text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r text := prefix || name;
BEGIN
    WHILE octet_length(r) > 63 LOOP
        r := left(r, -1);
    END LOOP;
    RETURN r;
END $$;
REVOKE ALL ON FUNCTION softguard._qname(text, text) FROM PUBLIC;

-- The dependencies of an object (to check, at undo, that they are live again), as JSON.
CREATE FUNCTION softguard._deps(p_classid oid, p_objid oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_agg(DISTINCT jsonb_build_object(
               'classid', d.refclassid, 'objid', d.refobjid,
               'identity', (pg_identify_object(d.refclassid, d.refobjid, 0)).identity)), '[]')
      FROM pg_depend d
     WHERE d.classid = p_classid AND d.objid = p_objid
       AND d.refclassid <> 'pg_namespace'::regclass
       AND d.deptype IN ('n', 'a')
$$;
REVOKE ALL ON FUNCTION softguard._deps(oid, oid) FROM PUBLIC;

-- The listed objects that are sub-objects of another listed object: they go (or stay)
-- with it (an index, constraint, trigger, default, rule, policy, row or array type, owned
-- sequence, toast table, partition of a dropped parent).
CREATE FUNCTION softguard._list(list jsonb)
RETURNS TABLE (classid oid, objid oid, objsubid integer, original boolean, normal boolean,
               is_temporary boolean, object_type text, schema_name text, object_name text,
               object_identity text, ord integer, owned boolean, home text)
-- PL/pgSQL rather than SQL: drop_op calls this several times, and a SQL function that
-- cannot be inlined is planned again on every call (~0.5 ms each here).
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH l AS (
        SELECT (e->>'classid')::oid AS classid, (e->>'objid')::oid AS objid,
               (e->>'objsubid')::integer AS objsubid, (e->>'original')::boolean AS original,
               (e->>'normal')::boolean AS normal, (e->>'is_temporary')::boolean AS is_temporary,
               e->>'object_type' AS object_type, e->>'schema_name' AS schema_name,
               e->>'object_name' AS object_name, e->>'object_identity' AS object_identity,
               o::integer AS ord
          FROM jsonb_array_elements(list) WITH ORDINALITY AS x (e, o)
    )
    SELECT l.*,
           EXISTS (SELECT FROM pg_depend d
                    WHERE d.classid = l.classid AND d.objid = l.objid
                      AND d.deptype IN ('a', 'i', 'P', 'S')
                      AND NOT (d.refclassid = l.classid AND d.refobjid = l.objid)
                      AND (d.refclassid, d.refobjid) IN (SELECT o.classid, o.objid FROM l o))
           OR (l.objsubid <> 0
               AND (l.classid, l.objid, 0) IN (SELECT o.classid, o.objid, o.objsubid FROM l o))
           AS owned,
           coalesce(l.schema_name,
                    CASE WHEN l.classid = 'pg_rewrite'::regclass THEN
                        (SELECT n.nspname FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
                           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.oid = l.objid)
                    END) AS home
      FROM l;
END $$;
GRANT EXECUTE ON FUNCTION softguard._list(jsonb) TO PUBLIC;

-- True when a CASCADE list removes nothing live beyond what the RESTRICT statement would
-- have removed: every object that is not a target is a sub-object of a listed object, or
-- already lives in quarantine. (Then the RESTRICT failure was caused only by quarantine.)
CREATE FUNCTION softguard._only_quarantine_blocks(list jsonb) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT NOT EXISTS (
        SELECT FROM softguard._list(list) l
         WHERE NOT l.original AND NOT l.owned
           AND NOT coalesce(softguard._is_quarantine_schema(l.home), false))
$$;
GRANT EXECUTE ON FUNCTION softguard._only_quarantine_blocks(jsonb) TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Probe: run stmt with the capture triggers armed; return what it would drop.
-- SECURITY INVOKER: the statement runs with the caller's privileges and search_path, so
-- PostgreSQL's own errors and notices reach the caller unchanged.
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION softguard._probe(stmt text) RETURNS jsonb
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
    RETURN detail::jsonb;
END $$;
GRANT EXECUTE ON FUNCTION softguard._probe(text) TO PUBLIC;

-- The SQL keyword and the current name of a movable object.
CREATE FUNCTION softguard._kw(p_classid oid, p_objid oid, OUT keyword text, OUT ident text,
                              OUT name text, OUT nsp oid)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_classid = 'pg_class'::regclass THEN
        SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                    WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                    WHEN 'i' THEN 'INDEX' WHEN 'I' THEN 'INDEX' ELSE 'TABLE' END,
               c.oid::regclass::text, c.relname, c.relnamespace
          INTO keyword, ident, name, nsp FROM pg_class c WHERE c.oid = p_objid;
    ELSIF p_classid = 'pg_proc'::regclass THEN
        SELECT CASE p.prokind WHEN 'a' THEN 'AGGREGATE' WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
               p.oid::regprocedure::text, p.proname, p.pronamespace
          INTO keyword, ident, name, nsp FROM pg_proc p WHERE p.oid = p_objid;
    ELSIF p_classid = 'pg_type'::regclass THEN
        SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
               t.oid::regtype::text, t.typname, t.typnamespace
          INTO keyword, ident, name, nsp FROM pg_type t WHERE t.oid = p_objid;
    ELSIF p_classid = 'pg_statistic_ext'::regclass THEN
        SELECT 'STATISTICS', format('%I.%I', s.stxnamespace::regnamespace, s.stxname), s.stxname,
               s.stxnamespace
          INTO keyword, ident, name, nsp FROM pg_statistic_ext s WHERE s.oid = p_objid;
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._kw(oid, oid) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Tables, rows and keys
-- ---------------------------------------------------------------------------------------

-- Is this relation a user table softguard protects? (ordinary or partitioned, permanent or
-- unlogged, not in a system or softguard schema)
CREATE FUNCTION softguard._protected_table(rel oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (
        SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = rel AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
           AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
           AND n.nspname NOT LIKE 'softguard%')
$$;
REVOKE ALL ON FUNCTION softguard._protected_table(oid) FROM PUBLIC;
-- alter_op runs as the caller: it checks tables with this (it reads only the catalog).
GRANT EXECUTE ON FUNCTION softguard._protected_table(oid) TO PUBLIC;

-- The column list of a table's row type: [[name, type], ...] (types schema-qualified).
-- Hot path: no SET, PL/pgSQL (see the top of this file).
CREATE FUNCTION softguard._columns(rel oid) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(
                   a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum),
               '[]')
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped);
END $$;
REVOKE ALL ON FUNCTION softguard._columns(oid) FROM PUBLIC;

-- A temporary composite type with the captured column list, to read the stored row text
-- back whatever the table looks like now. Returns its name.
CREATE FUNCTION softguard._row_type(columns jsonb, tag text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tname text := 'sg_undo_' || tag;
BEGIN
    IF to_regtype(format('pg_temp.%I', tname)) IS NOT NULL THEN
        EXECUTE format('DROP TYPE pg_temp.%I', tname);
    END IF;
    EXECUTE format('CREATE TYPE pg_temp.%I AS (%s)', tname,
                   (SELECT string_agg(format('%I %s', c->>0, c->>1), ', ' ORDER BY o)
                      FROM jsonb_array_elements(columns) WITH ORDINALITY x(c, o)));
    RETURN format('pg_temp.%I', tname);
END $$;
REVOKE ALL ON FUNCTION softguard._row_type(jsonb, text) FROM PUBLIC;

-- Which key identifies a row of table `rel` (the one place in the database that decides
-- it: capture, alter, soft delete and undo ask this): the primary key, else the narrowest
-- valid unique index on NOT NULL columns without expressions or predicate, as column names
-- in index order; none of the columns `excluded` (ALTER COLUMN ... TYPE: the columns whose
-- values are about to change); NULL when there is none. Hot path (every soft delete): no
-- SET, PL/pgSQL (see the top of this file).
CREATE FUNCTION softguard._row_key(rel oid, excluded text[] DEFAULT '{}') RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT ARRAY(SELECT a.attname::text
                           FROM pg_catalog.unnest(i.indkey) WITH ORDINALITY k(attnum, o)
                           JOIN pg_catalog.pg_attribute a
                             ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                          ORDER BY k.o)
              FROM pg_catalog.pg_index i
             WHERE i.indrelid = rel AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
               AND i.indexprs IS NULL AND 0 <> ALL (i.indkey)
               AND NOT EXISTS (SELECT FROM pg_catalog.unnest(i.indkey) k(attnum)
                                 JOIN pg_catalog.pg_attribute a
                                   ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                WHERE NOT a.attnotnull OR a.attname::text = ANY (excluded))
             ORDER BY i.indisprimary DESC, i.indnatts, i.indexrelid
             LIMIT 1);
END $$;
REVOKE ALL ON FUNCTION softguard._row_key(oid, text[]) FROM PUBLIC;

-- install/30_drop.sql
-- Reversible DROP: drop_op(stmt, stmt_cascade, ctx), what the proxy CALLs in place of a
-- destructive DROP. Design: docs/decisions/0005-reversible-drop.md. Undo: 70_undo.sql
-- (_undo_one).
--
-- What always holds:
-- * PostgreSQL decides what a DROP removes: drop_op runs the statement itself in a
--   rolled-back subtransaction with the capture triggers armed (softguard._probe), under the
--   caller's privileges.
-- * Nothing is dropped without a way back: an object the DROP would remove is either moved
--   into quarantine, or its definition is recorded in the operation's restore plan before
--   it is dropped; anything softguard cannot keep makes drop_op fail with 0A000 (the
--   caller's transaction aborts, nothing is lost).
-- * The operation row is written by the transaction that moves the objects.

-- ---------------------------------------------------------------------------------------
-- Quarantine: move what the probed DROP would remove, record the restore plan and the
-- operation. SECURITY DEFINER (the installing superuser): the caller has no rights on the
-- quarantine or the ledger. EXECUTE is PUBLIC because drop_op runs as the caller; so the
-- list is not trusted: the session user must be able to drop every target itself, and
-- every other listed object must depend on a listed object, as PostgreSQL's cascade does.
--
-- objects (one per listed object, in PostgreSQL's order):
--   {"type", "identity", "schema", "name", "original", "normal", "classid", "objid",
--    "objsubid", "quarantined_as" (identity after the move; null when only its definition
--    is kept or it went with its owner unnamed), "held_by" (an earlier operation already
--    holds it in quarantine; this one leaves it there)}
-- restore: ordered steps as done; undo runs their inverses last to first:
--   {"step": "drop_constraint"|"drop_trigger"|"drop_default"|"drop_policy"|"drop_rule"|
--            "drop_index", "table", "table_name", "name", "def", "deps", ...}
--   {"step": "detach_partition", "parent", "child", "bound"}
--   {"step": "no_inherit", "parent", "child"}
--   {"step": "seq_owned_by", "seq", "table", "column"}
--   {"step": "rename", "class": "relation"|"statistics", "oid", "name", "qname"}
--   {"step": "move", "class": "relation"|"routine"|"type"|"statistics", "keyword", "oid",
--    "schema", "schema_oid", "name", "qname", "original"}
--   {"step": "rename_schema", "oid", "name", "qname", "acl": [{"grantee", "privilege",
--    "grantable"}], "original"}
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION softguard._quarantine(list jsonb, stmt text, ctx jsonb, invoker text)
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

    expires := now() + make_interval(secs => coalesce((ctx->>'retention_seconds')::integer, 604800));
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, restore)
    VALUES (expires, session_user, invoker, current_setting('application_name', true),
            coalesce(ctx->>'client_addr', inet_client_addr()::text), stmt,
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
REVOKE ALL ON FUNCTION softguard._quarantine(jsonb, text, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._quarantine(jsonb, text, jsonb, text) TO PUBLIC;

-- Record the definition of a link (on a live table) and drop it. Returns [step].
CREATE FUNCTION softguard._drop_link(p_classid oid, p_objid oid, p_identity text,
                                     p_original boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    x record;
    step jsonb;
    deps jsonb := softguard._deps(p_classid, p_objid);
BEGIN
    IF p_classid = 'pg_constraint'::regclass THEN
        SELECT c.conname, c.conrelid, c.contypid, c.contype, c.convalidated, c.conislocal,
               pg_get_constraintdef(c.oid) AS def, obj_description(c.oid, 'pg_constraint') AS cmt,
               t.relkind, c.confrelid
          INTO x FROM pg_constraint c LEFT JOIN pg_class t ON t.oid = c.conrelid
         WHERE c.oid = p_objid;
        IF x.conrelid = 0 OR NOT x.conislocal THEN
            -- domain constraints; inherited copies come back with their parent's
            IF x.conislocal IS FALSE THEN RETURN '[]'; END IF;
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('softguard cannot keep constraint %s (dropped by this statement)',
                                 p_identity);
        END IF;
        step := jsonb_build_object('step', 'drop_constraint', 'table', x.conrelid,
            'table_name', x.conrelid::regclass::text, 'name', x.conname, 'def', x.def,
            'contype', x.contype, 'validated', x.convalidated,
            'partitioned', x.relkind = 'p', 'comment', x.cmt,
            'ref_table', nullif(x.confrelid, 0),
            'ref_name', CASE WHEN x.confrelid <> 0 THEN x.confrelid::regclass::text END);
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', x.conrelid::regclass, x.conname);
    ELSIF p_classid = 'pg_trigger'::regclass THEN
        SELECT t.tgname, t.tgrelid, t.tgenabled, t.tgisinternal, pg_get_triggerdef(t.oid) AS def,
               obj_description(t.oid, 'pg_trigger') AS cmt
          INTO x FROM pg_trigger t WHERE t.oid = p_objid;
        IF x.tgisinternal THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('softguard cannot keep trigger %s (dropped by this statement)',
                                 p_identity);
        END IF;
        step := jsonb_build_object('step', 'drop_trigger', 'table', x.tgrelid,
            'table_name', x.tgrelid::regclass::text, 'name', x.tgname, 'def', x.def,
            'enabled', x.tgenabled, 'comment', x.cmt);
        EXECUTE format('DROP TRIGGER %I ON %s', x.tgname, x.tgrelid::regclass);
    ELSIF p_classid = 'pg_attrdef'::regclass THEN
        SELECT d.adrelid, a.attname, a.attgenerated, pg_get_expr(d.adbin, d.adrelid) AS def
          INTO x FROM pg_attrdef d
          JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
         WHERE d.oid = p_objid;
        IF x.attgenerated <> '' THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('softguard cannot keep the generated column expression %s', p_identity);
        END IF;
        step := jsonb_build_object('step', 'drop_default', 'table', x.adrelid,
            'table_name', x.adrelid::regclass::text, 'name', x.attname, 'def', x.def);
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', x.adrelid::regclass, x.attname);
    ELSIF p_classid = 'pg_policy'::regclass THEN
        SELECT p.polname, p.polrelid,
               format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s', p.polname,
                      p.polrelid::regclass,
                      CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                      CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT'
                           WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                      (SELECT string_agg(CASE WHEN rl = 0 THEN 'PUBLIC'
                                         ELSE quote_ident(rl::regrole::text) END, ', ')
                         FROM unnest(p.polroles) rl),
                      ' USING (' || pg_get_expr(p.polqual, p.polrelid) || ')',
                      ' WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')') AS def,
               obj_description(p.oid, 'pg_policy') AS cmt
          INTO x FROM pg_policy p WHERE p.oid = p_objid;
        step := jsonb_build_object('step', 'drop_policy', 'table', x.polrelid,
            'table_name', x.polrelid::regclass::text, 'name', x.polname, 'def', x.def,
            'comment', x.cmt);
        EXECUTE format('DROP POLICY %I ON %s', x.polname, x.polrelid::regclass);
    ELSIF p_classid = 'pg_rewrite'::regclass THEN
        SELECT r.rulename, r.ev_class, r.ev_enabled, pg_get_ruledef(r.oid) AS def,
               obj_description(r.oid, 'pg_rewrite') AS cmt
          INTO x FROM pg_rewrite r WHERE r.oid = p_objid;
        step := jsonb_build_object('step', 'drop_rule', 'table', x.ev_class,
            'table_name', x.ev_class::regclass::text, 'name', x.rulename, 'def', x.def,
            'enabled', x.ev_enabled, 'comment', x.cmt);
        EXECUTE format('DROP RULE %I ON %s', x.rulename, x.ev_class::regclass);
    ELSIF p_classid = 'pg_class'::regclass THEN
        SELECT i.indrelid, ic.relname, i.indisclustered, i.indisreplident,
               replace(pg_get_indexdef(i.indexrelid), ' ON ONLY ', ' ON ') AS def,
               obj_description(i.indexrelid, 'pg_class') AS cmt
          INTO x FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
         WHERE i.indexrelid = p_objid;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('softguard cannot keep %s (dropped by this statement)', p_identity);
        END IF;
        step := jsonb_build_object('step', 'drop_index', 'table', x.indrelid,
            'table_name', x.indrelid::regclass::text, 'name', x.relname, 'def', x.def,
            'clustered', x.indisclustered, 'replident', x.indisreplident, 'comment', x.cmt);
        EXECUTE format('DROP INDEX %s', p_objid::regclass);
    ELSE
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard cannot keep %s (dropped by this statement)', p_identity);
    END IF;
    RETURN jsonb_build_array(step || jsonb_build_object('deps', deps, 'identity', p_identity,
                                                        'original', p_original));
END $$;
REVOKE ALL ON FUNCTION softguard._drop_link(oid, oid, text, boolean) FROM PUBLIC;

-- Rename an object to op<id>_<n>_<name> and move it into softguard_quarantine. Returns [step].
CREATE FUNCTION softguard._move(op_id bigint, n integer, p_classid oid, p_objid oid,
                                p_original boolean)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k record := softguard._kw(p_classid, p_objid);
    qn text;
BEGIN
    IF k.keyword IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'XX000',
            MESSAGE = format('softguard: cannot move object %s/%s', p_classid, p_objid);
    END IF;
    qn := softguard._qname(format('op%s_%s_', op_id, n), k.name);
    EXECUTE format('ALTER %s %s RENAME TO %I', k.keyword, k.ident, qn);
    k.ident := (softguard._kw(p_classid, p_objid)).ident;
    EXECUTE format('ALTER %s %s SET SCHEMA softguard_quarantine', k.keyword, k.ident);
    RETURN jsonb_build_array(jsonb_build_object(
        'step', 'move', 'class', CASE p_classid WHEN 'pg_class'::regclass THEN 'relation'
            WHEN 'pg_proc'::regclass THEN 'routine' WHEN 'pg_type'::regclass THEN 'type'
            ELSE 'statistics' END,
        'classid', p_classid, 'keyword', k.keyword, 'oid', p_objid,
        'schema', k.nsp::regnamespace::text, 'schema_oid', k.nsp, 'name', k.name, 'qname', qn,
        'original', p_original));
END $$;
REVOKE ALL ON FUNCTION softguard._move(bigint, integer, oid, oid, boolean) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- drop_op: what the proxy CALLs in place of a destructive DROP. See 0005-reversible-drop.
--   stmt          the client's statement, verbatim
--   stmt_cascade  the same statement with CASCADE (NULL if it has CASCADE already)
--   ctx           {"client_addr", "retention_seconds" (default 604800), "offset" (echoed in
--                 the SGBEG marker), "action" (the command tag, e.g. 'DROP TABLE')}
-- Notices: SGBEG (message = offset) first and SGEND (message = action) last, forced visible,
-- for the proxy to swallow; between them PostgreSQL's own notices and one
-- 'softguard: <action> <objects> is reversible as operation <id> until <YYYY-MM-DD>'.
-- ---------------------------------------------------------------------------------------

-- Lock the relations of a probe list (and every listed object through an advisory lock,
-- so two softguard DROPs of one function or type serialise too). Objects gone since are
-- skipped: the next probe reports them as PostgreSQL would.
CREATE FUNCTION softguard._lock_listed(list jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e jsonb;
    r record;
BEGIN
    FOR e IN SELECT x FROM jsonb_array_elements(list) x
             ORDER BY (x->>'classid')::oid, (x->>'objid')::oid LOOP
        PERFORM pg_advisory_xact_lock(((e->>'classid')::oid::bigint << 32)
                                      | (e->>'objid')::oid::bigint);
        IF (e->>'classid')::oid = 'pg_class'::regclass AND (e->>'objsubid')::int = 0 THEN
            SELECT n.nspname, c.relname, c.relkind INTO r
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = (e->>'objid')::oid;
            IF FOUND AND r.relkind IN ('r', 'p', 'v', 'f') THEN
                BEGIN
                    EXECUTE format('LOCK TABLE ONLY %I.%I IN ACCESS EXCLUSIVE MODE',
                                   r.nspname, r.relname);
                EXCEPTION WHEN undefined_table OR wrong_object_type THEN
                    NULL;
                END;
            END IF;
        END IF;
    END LOOP;
END $$;
GRANT EXECUTE ON FUNCTION softguard._lock_listed(jsonb) TO PUBLIC;

CREATE FUNCTION softguard._same_objects(a jsonb, b jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (SELECT array_agg(k ORDER BY k)
              FROM (SELECT x->>'classid' || '/' || (x->>'objid') || '/' || (x->>'objsubid') AS k
                      FROM jsonb_array_elements(a) x) s)
           IS NOT DISTINCT FROM
           (SELECT array_agg(k ORDER BY k)
              FROM (SELECT x->>'classid' || '/' || (x->>'objid') || '/' || (x->>'objsubid') AS k
                      FROM jsonb_array_elements(b) x) s)
$$;
GRANT EXECUTE ON FUNCTION softguard._same_objects(jsonb, jsonb) TO PUBLIC;

CREATE PROCEDURE softguard.drop_op(stmt text, stmt_cascade text, ctx jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    saved text := pg_catalog.current_setting('client_min_messages');
    list jsonb;
    clist jsonb;
    msg text;
    n_all integer;
    n_temp integer;
    relist jsonb;
    used text;
BEGIN
    PERFORM pg_catalog.set_config('client_min_messages', 'notice', true);
    RAISE NOTICE USING ERRCODE = 'SGBEG', MESSAGE = coalesce(ctx->>'offset', '0');
    PERFORM pg_catalog.set_config('client_min_messages', saved, true);

    BEGIN
        list := softguard._probe(stmt);
    EXCEPTION WHEN dependent_objects_still_exist THEN
        -- Refused only because of objects in quarantine? Then a real DROP would succeed.
        IF stmt_cascade IS NULL THEN
            RAISE;
        END IF;
        IF saved NOT IN ('error', 'fatal', 'panic') THEN
            PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
        END IF;
        BEGIN
            clist := softguard._probe(stmt_cascade);
        EXCEPTION WHEN OTHERS THEN
            clist := NULL;
        END;
        PERFORM pg_catalog.set_config('client_min_messages', saved, true);
        IF clist IS NULL OR NOT softguard._only_quarantine_blocks(clist) THEN
            RAISE;
        END IF;
        list := clist;
        used := stmt_cascade;
    END;

    -- The probe's locks went with its subtransaction: a concurrent DROP of the same
    -- objects may have probed them too. Lock what was found, then probe again (quietly)
    -- under those locks, as PostgreSQL re-resolves names after waiting for a lock.
    FOR attempt IN 1..5 LOOP
        EXIT WHEN pg_catalog.jsonb_array_length(list) = 0;
        PERFORM softguard._lock_listed(list);
        IF saved NOT IN ('error', 'fatal', 'panic') THEN
            PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
        END IF;
        BEGIN
            relist := softguard._probe(coalesce(used, stmt));
        EXCEPTION WHEN OTHERS THEN
            PERFORM pg_catalog.set_config('client_min_messages', saved, true);
            RAISE;
        END;
        PERFORM pg_catalog.set_config('client_min_messages', saved, true);
        EXIT WHEN softguard._same_objects(list, relist);
        list := relist;
    END LOOP;

    n_all := pg_catalog.jsonb_array_length(list);
    SELECT pg_catalog.count(*) FILTER (WHERE (e->>'is_temporary')::boolean) INTO n_temp
      FROM pg_catalog.jsonb_array_elements(list) e;
    IF n_all > 0 AND n_temp = n_all THEN
        -- Temporary objects cannot be moved and vanish with the session anyway: drop them
        -- for real, unrecorded (notices were already sent by the probe).
        IF saved NOT IN ('error', 'fatal', 'panic') THEN
            PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
        END IF;
        EXECUTE stmt;
        PERFORM pg_catalog.set_config('client_min_messages', saved, true);
    ELSIF n_temp > 0 THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = 'softguard cannot drop temporary and permanent objects in one statement',
            HINT = 'Drop the temporary objects in a separate statement.';
    ELSIF n_all > 0 THEN
        msg := softguard._quarantine(list, stmt, ctx, current_user::text);
        PERFORM pg_catalog.set_config('client_min_messages', 'notice', true);
        RAISE NOTICE '%', msg;
        PERFORM pg_catalog.set_config('client_min_messages', saved, true);
    END IF;

    PERFORM pg_catalog.set_config('client_min_messages', 'notice', true);
    RAISE NOTICE USING ERRCODE = 'SGEND', MESSAGE = coalesce(ctx->>'action', 'DROP');
    PERFORM pg_catalog.set_config('client_min_messages', saved, true);
END $$;
GRANT EXECUTE ON PROCEDURE softguard.drop_op(text, text, jsonb) TO PUBLIC;

-- install/40_capture.sql
-- Row capture: reversible DELETE, UPDATE, MERGE and TRUNCATE (the soft-delete branch of the
-- capture trigger reads 60_soft_delete.sql's helpers). Design: docs/decisions/0006-row-capture.md.
-- Undo: 70_undo.sql (_undo_rows).
--
-- What always holds:
-- * Rows are captured in the database, in the transaction that removes or changes them:
--   statement-level AFTER DELETE / AFTER UPDATE triggers with transition tables on every
--   user table (so rows removed by ON DELETE CASCADE, changed by SET NULL / SET DEFAULT, by
--   rules, user triggers and functions are caught too), and BEFORE TRUNCATE triggers that
--   copy a table's rows when softguard.truncate_op runs the TRUNCATE. ROLLBACK keeps nothing.
-- * Only sessions the proxy marks are captured: the session default softguard.capture
--   ('delete' or 'delete,update', set by the proxy in the StartupMessage options). Other
--   sessions pay the transition tables' bookkeeping and one function call per statement.
-- * One operation per top-level client statement: captures are grouped by transaction and
--   statement_timestamp() (a transaction-local setting softguard.cur_op remembers the open
--   operation). The ledger row of an operation is written once, complete, at the first
--   capture with at least one row, and its NOTICE is raised then (PostgreSQL fires the
--   statement's own trigger first, then those of the cascaded tables, all at trigger
--   depth 1).
-- * Nothing is granted to PUBLIC but what the rewritten statements call as the client.

-- ---------------------------------------------------------------------------------------
-- DELETE / UPDATE / MERGE (and soft delete): the statement-level trigger
-- ---------------------------------------------------------------------------------------

-- The statement-level AFTER DELETE / AFTER UPDATE trigger (transition table sg_old).
CREATE FUNCTION softguard._capture_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cap text := current_setting('softguard.capture', true);
    ev text;
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
    IF cap IS NULL OR cap = '' THEN
        RETURN NULL;
    END IF;
    ev := lower(TG_OP);
    k := (extract(epoch FROM statement_timestamp()) * 1000000)::bigint::text;
    cur := current_setting('softguard.cur_op', true);
    IF cur IS NOT NULL AND split_part(cur, '/', 1) = k THEN
        op := split_part(cur, '/', 2)::bigint;
        op_kind := split_part(cur, '/', 3);
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
        IF NOT (ev = ANY (string_to_array(replace(lower(cap), ' ', ''), ','))) THEN
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
            first_word := upper(substring(current_query() FROM '^\s*([A-Za-z]+)'));
            op_kind := CASE WHEN first_word = 'MERGE' THEN 'MERGE' ELSE TG_OP END;
        END IF;
        expires := now() + make_interval(secs => coalesce(
            nullif(current_setting('softguard.retention', true), '')::integer, 604800));
        INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                          client_addr, statement, kind, objects, row_counts,
                                          restore)
        VALUES (expires, session_user, softguard._client_role(),
                current_setting('application_name', true),
                coalesce(nullif(current_setting('softguard.client_addr', true), ''),
                         inet_client_addr()::text),
                coalesce(stmt, current_query(), ''), op_kind, jsonb_build_array(obj),
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
REVOKE ALL ON FUNCTION softguard._capture_rows() FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- TRUNCATE: truncate_op(stmt, ctx). Runs the client's statement as the caller (its own
-- errors and notices), the BEFORE TRUNCATE triggers copy the rows first. O(rows).
-- ---------------------------------------------------------------------------------------

-- The BEFORE TRUNCATE trigger: when softguard.truncate_op runs the statement (the
-- transaction-local setting softguard.truncate_op names its operation), copy the rows and
-- the state of the table's owned / identity sequences. PostgreSQL fires it for every table
-- the TRUNCATE empties (listed, CASCADE, partitions), after its own checks.
CREATE FUNCTION softguard._capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    op bigint := nullif(current_setting('softguard.truncate_op', true), '')::bigint;
    cid bigint;
    n bigint;
    ident text;
    s record;
    st record;
BEGIN
    IF op IS NULL THEN
        RETURN NULL;
    END IF;
    -- only the operation truncate_op opened in this transaction
    PERFORM FROM softguard.operations o
      WHERE o.id = op AND o.kind = 'TRUNCATE' AND o.txid = pg_current_xact_id();
    IF NOT FOUND THEN
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
REVOKE ALL ON FUNCTION softguard._capture_truncate() FROM PUBLIC;

-- After the TRUNCATE: fill in objects and counts; return the NOTICE text.
CREATE FUNCTION softguard._truncate_finish(op bigint, action text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    targets text;
BEGIN
    SELECT * INTO o FROM softguard.operations
     WHERE id = op AND kind = 'TRUNCATE' AND txid = pg_current_xact_id();
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'softguard: not an open TRUNCATE operation';
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
REVOKE ALL ON FUNCTION softguard._truncate_finish(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._truncate_finish(bigint, text) TO PUBLIC;

--   stmt  the client's TRUNCATE, verbatim
--   ctx   {"client_addr", "retention_seconds", "offset", "action" ('TRUNCATE TABLE')}
-- Notices: SGBEG (message = offset) first, SGEND (message = action) last, forced visible;
-- between them PostgreSQL's own ('truncate cascades to table ...') and one
-- 'softguard: TRUNCATE TABLE <tables> is reversible as operation <id> until <YYYY-MM-DD>'.
CREATE PROCEDURE softguard.truncate_op(stmt text, ctx jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    op bigint;
BEGIN
    PERFORM softguard._notice(coalesce(ctx->>'offset', '0'), 'SGBEG');
    op := softguard._op_begin(stmt, ctx, 'TRUNCATE');
    PERFORM pg_catalog.set_config('softguard.truncate_op', op::text, true);
    EXECUTE stmt;
    PERFORM pg_catalog.set_config('softguard.truncate_op', '', true);
    PERFORM softguard._notice(softguard._truncate_finish(op, coalesce(ctx->>'action', 'TRUNCATE TABLE')));
    PERFORM softguard._notice(coalesce(ctx->>'action', 'TRUNCATE TABLE'), 'SGEND');
END $$;
GRANT EXECUTE ON PROCEDURE softguard.truncate_op(text, jsonb) TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- The triggers on each table (new tables: 90_event_triggers.sql)
-- ---------------------------------------------------------------------------------------

-- Install the capture triggers on one table (idempotent).
CREATE FUNCTION softguard._install_capture(rel oid) RETURNS void
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
END $$;
REVOKE ALL ON FUNCTION softguard._install_capture(oid) FROM PUBLIC;

-- install/50_alter.sql
-- ALTER TABLE ... DROP COLUMN and ALTER COLUMN ... TYPE are reversible: alter_op(stmt, ctx).
-- Design: docs/decisions/0006-row-capture.md ("ALTER COLUMN ... TYPE"). Undo: 70_undo.sql
-- (_undo_drop_column, _undo_type).
--
-- What always holds:
-- * DROP COLUMN: PostgreSQL decides what the statement drops (softguard._probe); each
--   dropped column of a live table is kept: its definition and its values keyed by
--   softguard._row_key (none, or the key is the column: 0A000).
-- * ALTER COLUMN ... TYPE: PostgreSQL's event triggers do not report type changes and SQL
--   is parsed only by the proxy: ctx->'columns' names them, [{"schema" (null:
--   unqualified), "table", "column"}, ...] (every ALTER COLUMN ... TYPE subcommand of the
--   statement). They are resolved as the caller sees them (its search_path); a name that
--   resolves to nothing is left to the statement's own error.
-- * For each such column of a protected table the caller owns: the table is locked
--   (ACCESS EXCLUSIVE, as the ALTER itself), then its values are copied BEFORE the
--   statement runs, keyed by a primary key or unique NOT NULL key that the statement
--   leaves unchanged (none: 0A000, nothing done), with the old type (format_type),
--   default and collation; AFTER the statement its new values are copied too (second
--   capture, info kind 'type_new'), so that undo can tell rows changed since.
-- * ctx->>'drop_column' = 'false' (the proxy: no DROP COLUMN subcommand) skips the probe,
--   which would otherwise run the whole ALTER (a table rewrite) twice.
-- * Undo of a type change: the column must still be there under its name with the type
--   the operation left (else 55000; 55006 with the holding operation when a later active
--   operation dropped it or changed its type again, so that --cascade works). It is
--   converted back to the old type (and collation) with `USING` a per-row cast (explicit
--   cast, else through text); then every row whose value is still the one the ALTER
--   produced gets its captured old value back, exactly (by key). Rows added or changed
--   since keep their value, converted back; when such a value does not convert back, the
--   undo is refused (55000, keys listed): undo never replaces a write made since with
--   NULL. The old default comes back; NOT NULL is kept.

-- ---------------------------------------------------------------------------------------
-- Capture of a dropped column
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION softguard._capture_column(op bigint, rel oid, attnum integer) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
     WHERE id = op AND kind = 'ALTER TABLE' AND txid = pg_current_xact_id();
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'softguard: not an open ALTER TABLE operation';
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
REVOKE ALL ON FUNCTION softguard._capture_column(bigint, oid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._capture_column(bigint, oid, integer) TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Capture: before the statement (old values), after it (new values)
-- ---------------------------------------------------------------------------------------

-- The old values of column `attnum` of `rel`, keyed by a key outside `changed` (all the
-- columns of rel whose type the statement changes). Returns the capture id; NULL when the
-- table is not protected. The rows of inheritance children and partitions are included
-- (ALTER COLUMN ... TYPE recurses to them).
CREATE FUNCTION softguard._capture_type(op bigint, rel oid, attnum integer, changed text[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a record;
    key text[];
    cid bigint;
    n bigint;
    ident text;
BEGIN
    PERFORM FROM softguard.operations
     WHERE id = op AND kind = 'ALTER TABLE' AND txid = pg_current_xact_id();
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
REVOKE ALL ON FUNCTION softguard._capture_type(bigint, oid, integer, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._capture_type(bigint, oid, integer, text[]) TO PUBLIC;

-- After the statement: the new values of the column of capture `cid` (a second capture,
-- info kind 'type_new'), the new type and default; the operation's objects and counts.
-- Returns schema.table.column for the NOTICE.
CREATE FUNCTION softguard._capture_type_after(op bigint, cid bigint) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c softguard.captures;
    a record;
    key text[];
    cn bigint;
    n bigint;
BEGIN
    SELECT cp.* INTO c FROM softguard.captures cp JOIN softguard.operations o ON o.id = cp.op_id
     WHERE cp.id = cid AND cp.op_id = op AND cp.info->>'kind' = 'type'
       AND o.txid = pg_current_xact_id();
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
REVOKE ALL ON FUNCTION softguard._capture_type_after(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._capture_type_after(bigint, bigint) TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- alter_op: DROP COLUMN and ALTER COLUMN ... TYPE
--   stmt  the client's ALTER TABLE, verbatim
--   ctx   as truncate_op (action 'ALTER TABLE'), plus
--         "columns": [{"schema", "table", "column"}]  the ALTER COLUMN ... TYPE targets
--         "drop_column": false   the statement has no DROP COLUMN: no probe
-- NOTICE: 'softguard: ALTER TABLE DROP COLUMN <cols>[, ALTER COLUMN TYPE <cols>] is ...' or
-- 'softguard: ALTER TABLE ALTER COLUMN TYPE <cols> is reversible as operation N until D'.
-- ---------------------------------------------------------------------------------------

CREATE PROCEDURE softguard.alter_op(stmt text, ctx jsonb)
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
GRANT EXECUTE ON PROCEDURE softguard.alter_op(text, jsonb) TO PUBLIC;

-- install/60_soft_delete.sql
-- Soft delete (docs/decisions/0008-soft-delete.md). Undo: 70_undo.sql (_undo_rows); purge:
-- 80_purge.sql (purge_soft_rows).
--
-- On tables configured for soft delete the proxy sends a client's DELETE as an UPDATE that
-- marks the rows (softguard/sql/soft_delete.py). What always holds here:
-- * softguard.soft_delete_begin() runs once per such statement, when its first row is
--   marked: it checks the table name resolved to the configured table, and leaves the
--   statement's mark in the transaction-local setting softguard.sd_<table oid>.
-- * The table's statement-level capture trigger (40_capture.sql's _capture_rows) takes that
--   setting (and clears it): the rows the statement marked are captured as event
--   'soft_delete' -- their key and the old values of the mark columns, nothing more --
--   in an operation of kind DELETE (MERGE for a MERGE ... DELETE) with one NOTICE.
-- * For statements sent through the extended protocol the proxy cannot tell which
--   CommandComplete belongs to which statement; the trigger tells it instead: a statement
--   whose text begins with /*softguard:delete*/ gets a private notice SGTAG before its
--   CommandComplete, and the proxy turns that tag from UPDATE n into DELETE n.
-- * Undo clears the marks this operation wrote: by key, only on rows still carrying the
--   very mark it wrote (a row un-marked and marked again since is left alone).
-- * Purge hard-deletes those rows (still carrying that mark), in batches
--   (purge_soft_rows), before purge_op marks the operation purged.


-- ---------------------------------------------------------------------------------------
-- The rewritten statement's side
-- ---------------------------------------------------------------------------------------

--   target    the table as the client named it (resolved through the session's search_path)
--   expected  the configured table it must be, schema-qualified
--   info      {"column", "mark_kind", "by_column", "by_value", "statement", "verb" (DELETE
--             or MERGE), "verify" (capture only rows now carrying the mark)} from the proxy
--   mark      the value the statement writes into the mark column (returned as is)
CREATE FUNCTION softguard.soft_delete_begin(target regclass, expected text, info jsonb,
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
    PERFORM set_config('softguard.sd_' || target::oid::text,
                       (info || jsonb_build_object(
                           'table', expected, 'mark', to_jsonb(mark),
                           'by', CASE info->>'by_value'
                                     WHEN 'application_name' THEN current_setting('application_name')
                                     ELSE current_user::text END))::text,
                       true);
    RETURN mark;
END $$;
GRANT EXECUTE ON FUNCTION softguard.soft_delete_begin(regclass, text, jsonb, anyelement) TO PUBLIC;

CREATE FUNCTION softguard._sd_type(rel oid, col text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped);
END $$;
REVOKE ALL ON FUNCTION softguard._sd_type(oid, text) FROM PUBLIC;

-- What the capture trigger needs for a soft delete of table `rel` (info: the setting
-- soft_delete_begin left): the key columns, the column list of the captured rows
-- (key..., sg_old_mark, sg_old_by) and the INSERT capturing them from transition table
-- sg_old ($1: the capture id); only rows that were not marked (WHERE CURRENT OF may
-- reach a marked one).
CREATE FUNCTION softguard._sd_shape(rel oid, info jsonb,
                                    OUT key text[], OUT columns jsonb, OUT capture text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    col text := info->>'column';
    by_col text := info->>'by_column';
BEGIN
    key := softguard._row_key(rel);
    IF key IS NULL THEN
        RETURN;
    END IF;
    columns := (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(
                           c, softguard._sd_type(rel, c)) ORDER BY o)
                  FROM pg_catalog.unnest(key) WITH ORDINALITY x(c, o))
        || pg_catalog.jsonb_build_array(
               pg_catalog.jsonb_build_array('sg_old_mark', softguard._sd_type(rel, col)),
               pg_catalog.jsonb_build_array('sg_old_by',
                                            coalesce(softguard._sd_type(rel, by_col), 'text')));
    capture := pg_catalog.format(
        'INSERT INTO softguard.captured_rows (capture_id, "row")'
        ' SELECT $1, ROW(%s, o.%I, %s)::text FROM sg_old o%s WHERE %s%s',
        (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I', c), ', ') FROM unnest(key) c),
        col,
        CASE WHEN by_col IS NULL THEN 'NULL::text' ELSE pg_catalog.format('o.%I', by_col) END,
        -- a MERGE may also UPDATE rows of the table: only those now carrying the mark
        CASE WHEN (info->>'verify')::boolean THEN pg_catalog.format(' JOIN %s t ON %s',
            rel::regclass, (SELECT pg_catalog.string_agg(pg_catalog.format('t.%I = o.%I', c, c),
                                                          ' AND ') FROM unnest(key) c))
             ELSE '' END,
        CASE info->>'mark_kind'
            WHEN 'boolean' THEN pg_catalog.format('o.%I IS NOT TRUE', col)
            WHEN 'expression' THEN pg_catalog.format('o.%I IS DISTINCT FROM %L::%s', col,
                info->>'mark', softguard._sd_type(rel, col))
            ELSE pg_catalog.format('o.%I IS NULL', col) END,
        CASE WHEN (info->>'verify')::boolean THEN pg_catalog.format(
            ' AND t.%I IS NOT DISTINCT FROM %L::%s', col, info->>'mark', softguard._sd_type(rel, col))
             ELSE '' END);
END $$;
REVOKE ALL ON FUNCTION softguard._sd_shape(oid, jsonb) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Reading a soft-delete capture back
-- ---------------------------------------------------------------------------------------

-- SQL: the captured rows of soft-delete capture `c` (key columns, sg_old_mark, sg_old_by),
-- read from softguard.captured_rows, or from `rows` (a relation with a "row" column).
CREATE FUNCTION softguard._sd_source(c softguard.captures, rows text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN format('SELECT (p.x).* FROM (SELECT r."row"::%s AS x FROM %s OFFSET 0) p',
                  softguard._row_type(c.columns, 'sd' || c.id),
                  coalesce(rows || ' r', format('softguard.captured_rows r WHERE r.capture_id = %s', c.id)));
END $$;
REVOKE ALL ON FUNCTION softguard._sd_source(softguard.captures, text) FROM PUBLIC;

-- SQL condition: live row t is captured row s and still carries the mark `c` wrote.
CREATE FUNCTION softguard._sd_match(c softguard.captures) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT string_agg(format('t.%I = s.%I', k, k), ' AND ')
              FROM jsonb_array_elements_text(c.info->'key') k)
        || format(' AND t.%I IS NOT DISTINCT FROM %L::%s', c.info->>'column', c.info->>'mark',
                  c.columns->(jsonb_array_length(c.columns) - 2)->>1);
END $$;
REVOKE ALL ON FUNCTION softguard._sd_match(softguard.captures) FROM PUBLIC;

-- The live rows a soft-delete capture still holds: for purge's archive (COPY (...) TO).
CREATE FUNCTION softguard.soft_delete_rows_query(cid bigint) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c softguard.captures;
BEGIN
    SELECT * INTO c FROM softguard.captures WHERE id = cid AND event = 'soft_delete';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN format('SELECT t.* FROM %s t WHERE EXISTS (SELECT FROM (%s) s WHERE %s)',
                  c.relid::regclass, softguard._sd_source(c), softguard._sd_match(c));
END $$;
REVOKE ALL ON FUNCTION softguard.soft_delete_rows_query(bigint) FROM PUBLIC;

-- install/70_undo.sql
-- Undo: everything that puts back what an operation took, in one file.
--
-- Entry points: softguard.undo_steps(op, rename_to, cascade, on_conflict), one row per thing
-- restored (softguard.undo_step; the `softguard undo` command), and softguard.undo_op, the
-- same as lines of text for SQL callers. Who may undo: EXECUTE on undo_op(bigint, text,
-- boolean), not granted to PUBLIC. Both run _undo, which refuses a purged operation
-- (_refuse_purged), then dispatches on the operation's kind:
-- * DROP ... (the objects are in quarantine; restore plan in operations.restore):
--   _undo_one moves them back under their names and runs the restore steps' inverses,
--   last to first (re-adds constraints, triggers, defaults, policies, rules, indexes,
--   inheritance, partitions, sequence ownership).
-- * DELETE, UPDATE, MERGE, TRUNCATE, ALTER TABLE (rows in softguard.captured_rows):
--   _undo_rows clears soft-delete marks, then _undo_captures puts rows back by key
--   (TRUNCATE: every captured row re-inserted, then the sequences' values), and for
--   ALTER TABLE _undo_column: _undo_drop_column re-adds a dropped column with its values,
--   _undo_type converts a retyped column back.
--
-- What always holds:
-- * An undo runs in the caller's transaction: all or nothing. It writes an UNDO operation
--   and marks the undone one 'undone'.
-- * Conflicts stop it with a SQLSTATE and a clear message: a name taken since (42P07,
--   42P06, 42723, 42710: --rename-to), a key re-used since (23505: --on-conflict skip), an
--   object or column a later active operation holds (55006, DETAIL 'blocked_by=<op>': undo
--   the later one first, or --cascade), a table or column gone or changed since, a purged
--   operation (55000).
-- * Restored rows are written with user triggers off (session_replication_role replica),
--   so their foreign keys are checked here (_check_fks) instead of by PostgreSQL.

-- What an undo reports: one row per thing it restored (softguard/contract.py UndoStep).
CREATE TYPE softguard.undo_step AS (
    op      bigint,   -- the operation undone
    action  text,     -- restored, re-added, re-created, re-set, re-established, re-attached,
                      -- cleared, nothing
    object  text,     -- what it acted on (qualified name), '' for nothing
    detail  text,     -- the sentence shown to people
    "rows"  bigint    -- rows put back, when it moved rows
);

-- ---------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------

-- The identity an object had when its operation took it (falls back to the current one).
CREATE FUNCTION softguard._identity_in(op bigint, p_classid oid, p_objid oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(
        (SELECT e->>'type' || ' ' || (e->>'identity')
           FROM softguard.operations o, jsonb_array_elements(o.objects) e
          WHERE o.id = op AND (e->>'classid')::oid = p_classid AND (e->>'objid')::oid = p_objid
            AND (e->>'objsubid')::integer = 0
          LIMIT 1),
        (SELECT i.type || ' ' || i.identity FROM pg_identify_object(p_classid, p_objid, 0) i))
$$;
REVOKE ALL ON FUNCTION softguard._identity_in(bigint, oid, oid) FROM PUBLIC;

-- One row of what an undo did.
CREATE FUNCTION softguard._step(op bigint, action text, object text, detail text,
                                n bigint DEFAULT NULL)
RETURNS softguard.undo_step
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(op, action, object, detail, n)::softguard.undo_step
$$;
REVOKE ALL ON FUNCTION softguard._step(bigint, text, text, text, bigint) FROM PUBLIC;

-- Fail with 55006 when a later operation holds (in quarantine) an object that `what` needs.
CREATE FUNCTION softguard._need_live(op bigint, p_classid oid, p_objid oid, what text,
                                     what_identity text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    holder bigint;
    held text;
    holder_stmt text;
BEGIN
    IF (pg_identify_object(p_classid, p_objid, 0)).identity IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: %s needs %s, which no longer exists',
                             op, what, coalesce(what_identity, p_objid::text));
    END IF;
    holder := softguard._holder(p_classid, p_objid, 0);
    IF holder IS NOT NULL AND holder <> op THEN
        held := softguard._identity_in(holder, p_classid, p_objid);
        SELECT o.statement INTO holder_stmt FROM softguard.operations o WHERE o.id = holder;
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = format('cannot undo operation %s: %s needs %s, held by operation %s (%s)',
                             op, what, held, holder, holder_stmt),
            DETAIL = softguard._blocked_detail(holder),
            HINT = format('Undo operation %s first, or use --cascade.', holder);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._need_live(bigint, oid, oid, text, text) FROM PUBLIC;

-- Is `name` free for a relation/type (or routine with these argument types, or statistics
-- object) in schema nsp?
CREATE FUNCTION softguard._name_taken(p_class text, nsp oid, name text, p_objid oid)
RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE p_class
        WHEN 'routine' THEN EXISTS (
            SELECT FROM pg_proc p, pg_proc me
             WHERE me.oid = p_objid AND p.pronamespace = nsp AND p.proname = name
               AND p.proargtypes = me.proargtypes AND p.oid <> p_objid)
        WHEN 'statistics' THEN EXISTS (
            SELECT FROM pg_statistic_ext s WHERE s.stxnamespace = nsp AND s.stxname = name)
        ELSE EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = nsp AND c.relname = name)
          OR EXISTS (SELECT FROM pg_type t WHERE t.typnamespace = nsp AND t.typname = name)
    END
$$;
REVOKE ALL ON FUNCTION softguard._name_taken(text, oid, text, oid) FROM PUBLIC;

-- Fail with 55006 / 55000 when a captured table is not live (held by a later DROP, gone).
CREATE FUNCTION softguard._need_table(op bigint, rel oid, ident text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    holder bigint;
    holder_stmt text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_class WHERE oid = rel) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: table %s no longer exists', op, ident);
    END IF;
    holder := softguard._holder('pg_class'::regclass, rel, 0);
    IF holder IS NOT NULL AND holder <> op THEN
        SELECT o.statement INTO holder_stmt FROM softguard.operations o WHERE o.id = holder;
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = format('cannot undo operation %s: table %s is held by operation %s (%s)',
                             op, ident, holder, holder_stmt),
            DETAIL = softguard._blocked_detail(holder),
            HINT = format('Undo operation %s first, or use --cascade.', holder);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._need_table(bigint, oid, text) FROM PUBLIC;

-- Check that restored rows (source query `src` with columns of table rel) reference live
-- rows through every foreign key of rel (replica mode skipped PostgreSQL's own checks).
CREATE FUNCTION softguard._check_fks(op bigint, rel oid, src text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f record;
    bad text;
BEGIN
    FOR f IN SELECT c.conname, c.confrelid,
                    ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
                            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
                           ORDER BY k.o) AS cols,
                    ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, o)
                            JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n
                           ORDER BY k.o) AS refcols
               FROM pg_constraint c
              WHERE c.contype = 'f' AND c.conrelid = rel AND c.conparentid = 0 LOOP
        EXECUTE format('SELECT format(%L, %s) FROM (%s) s WHERE %s AND NOT EXISTS'
                       ' (SELECT FROM %s p WHERE %s) LIMIT 1',
                       '(' || array_to_string(f.cols, ', ') || ')=(' ||
                           array_to_string(array_fill('%s'::text, ARRAY[cardinality(f.cols)]), ', ') || ')',
                       (SELECT string_agg(format('s.%I', c), ', ') FROM unnest(f.cols) c),
                       src,
                       (SELECT string_agg(format('s.%I IS NOT NULL', c), ' AND ') FROM unnest(f.cols) c),
                       f.confrelid::regclass,
                       (SELECT string_agg(format('p.%I = s.%I', r, c), ' AND ')
                          FROM unnest(f.refcols, f.cols) x(r, c)))
          INTO bad;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '23503',
                MESSAGE = format('cannot undo operation %s: restored rows of %s reference %s %s, which no longer exists',
                                 op, rel::regclass, f.confrelid::regclass, bad),
                HINT = 'Undo the later operation that removed it first.';
        END IF;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._check_fks(bigint, oid, text) FROM PUBLIC;

-- Order tables parents first (foreign keys among them; cycles and self references last).
CREATE FUNCTION softguard._parents_first(rels oid[]) RETURNS oid[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    done oid[] := '{}';
    nxt oid[];
    root oid;
BEGIN
    LOOP
        SELECT coalesce(array_agg(r ORDER BY r), '{}') INTO nxt FROM unnest(rels) r
         WHERE NOT (r = ANY (done))
           AND NOT EXISTS (
               SELECT FROM pg_constraint c
                WHERE c.contype = 'f' AND c.conrelid IN (
                          SELECT r UNION SELECT inhparent FROM pg_inherits WHERE inhrelid = r)
                  AND c.confrelid <> c.conrelid
                  AND EXISTS (SELECT FROM unnest(rels) p
                               WHERE NOT (p = ANY (done)) AND p <> r
                                 AND (p = c.confrelid OR c.confrelid IN (
                                      SELECT inhparent FROM pg_inherits WHERE inhrelid = p))));
        IF cardinality(nxt) = 0 THEN
            EXIT;
        END IF;
        done := done || nxt;
    END LOOP;
    SELECT done || coalesce(array_agg(r ORDER BY r), '{}') INTO done FROM unnest(rels) r
     WHERE NOT (r = ANY (done));
    RETURN done;
END $$;
REVOKE ALL ON FUNCTION softguard._parents_first(oid[]) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- DROP: objects back from quarantine
-- ---------------------------------------------------------------------------------------

-- Undo one operation (no cascade); returns what it restored.
CREATE FUNCTION softguard._undo_one(op bigint, rename_to text) RETURNS softguard.undo_step[]
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
                EXECUTE format('GRANT %s ON SCHEMA %I TO %s%s', e->>'privilege', target,
                               CASE WHEN e->>'grantee' = 'PUBLIC' THEN 'PUBLIC'
                                    ELSE quote_ident(e->>'grantee') END,
                               CASE WHEN (e->>'grantable')::boolean THEN ' WITH GRANT OPTION' ELSE '' END);
            END LOOP;
            lines := lines || softguard._step(op, 'restored', quote_ident(target),
                                              format('restored schema %I', target));
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

    UPDATE softguard.operations SET state = 'undone', undone_at = now(), undone_by = session_user
     WHERE id = op;
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, restore, undo_of)
    VALUES (o.expires_at, session_user, current_user, current_setting('application_name', true),
            inet_client_addr()::text,
            format('softguard undo %s%s', op,
                   CASE WHEN rename_to IS NULL THEN '' ELSE ' --rename-to ' || rename_to END),
            'UNDO', o.objects, '[]', op);
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_one(bigint, text) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Data changes: captured rows back (DELETE, UPDATE, MERGE, TRUNCATE, soft delete)
-- ---------------------------------------------------------------------------------------

-- Undo of a data change: clear the soft-delete marks it wrote (by key, only on rows still
-- carrying that very mark: a row un-marked and marked again since is left alone), then
-- put back everything else it captured (_undo_captures).
CREATE FUNCTION softguard._undo_rows(op bigint, on_conflict text) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines softguard.undo_step[] := '{}';
    rest softguard.undo_step[];
    c softguard.captures;
    saved_srr text := current_setting('session_replication_role');
    done bigint;
BEGIN
    PERFORM FROM softguard.operations WHERE id = op FOR UPDATE;
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
    IF cardinality(lines) > 0 THEN
        rest := ARRAY(SELECT r FROM unnest(rest) r WHERE r.action <> 'nothing');
    END IF;
    RETURN lines || rest;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_rows(bigint, text) FROM PUBLIC;

-- Put back the rows, sequence values and columns operation `op` captured: deleted rows
-- re-inserted, updated rows given their old values (by _row_key), tables parents first;
-- column captures go to _undo_column. Returns what it restored.
CREATE FUNCTION softguard._undo_captures(op bigint, on_conflict text) RETURNS softguard.undo_step[]
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
    FOR g IN SELECT c.relid, c.columns, array_agg(c.id ORDER BY c.id) AS ids, min(c.id) AS first_id
               FROM softguard.captures c
              WHERE c.op_id = op AND c.event = 'update' AND c.n_rows > 0
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

-- ---------------------------------------------------------------------------------------
-- ALTER TABLE: dropped columns back, types back
-- ---------------------------------------------------------------------------------------

-- A column capture: a dropped column (_undo_drop_column) or a type change (_undo_type;
-- its 'type_new' capture is read there).
CREATE FUNCTION softguard._undo_column(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    CASE coalesce(c.info->>'kind', 'drop')
        WHEN 'type' THEN
            RETURN softguard._undo_type(op, c);
        WHEN 'type_new' THEN
            RETURN '{}';  -- read by the undo of its 'type' capture
        ELSE
            RETURN softguard._undo_drop_column(op, c);
    END CASE;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_column(bigint, softguard.captures) FROM PUBLIC;

-- Undo of a dropped column: re-add it, put the values back by key, then its default,
-- NOT NULL, constraints, indexes, comment.
CREATE FUNCTION softguard._undo_drop_column(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
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
    EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s%s', rel, i->>'name', i->>'type',
                   CASE WHEN i->>'collation' IS NOT NULL THEN ' COLLATE ' || (i->>'collation') ELSE '' END);
    rtype := softguard._row_type(c.columns, c.id::text);
    PERFORM set_config('session_replication_role', 'replica', true);
    EXECUTE format('UPDATE %s t SET %I = s.sg_value FROM (SELECT (p.x).* FROM (SELECT r."row"::%s AS x'
                   ' FROM softguard.captured_rows r WHERE r.capture_id = %s OFFSET 0) p) s WHERE %s',
                   rel, i->>'name', rtype, c.id,
                   (SELECT string_agg(format('t.%I = s.%I', k, k), ' AND ') FROM unnest(key) k));
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('session_replication_role', saved_srr, true);
    IF i->>'default' IS NOT NULL THEN
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
REVOKE ALL ON FUNCTION softguard._undo_drop_column(bigint, softguard.captures) FROM PUBLIC;

-- Undo of a type change (see 50_alter.sql's header for what holds).
CREATE FUNCTION softguard._undo_type(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
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
    PERFORM set_config('session_replication_role', 'replica', true);
    EXECUTE format('UPDATE %s t SET %I = s.sg_value FROM %s s WHERE %s', rel, col, tmp,
                   (SELECT string_agg(format('t.%I = s.%I', k, k), ' AND ') FROM unnest(key) k));
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('session_replication_role', saved_srr, true);
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
REVOKE ALL ON FUNCTION softguard._undo_type(bigint, softguard.captures) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Entry points
-- ---------------------------------------------------------------------------------------

-- Undo of a purged operation: a clear refusal that points at the archive.
CREATE FUNCTION softguard._refuse_purged(op bigint) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
BEGIN
    SELECT * INTO o FROM softguard.operations WHERE id = op;
    IF NOT FOUND OR o.state <> 'purged' THEN
        RETURN;
    END IF;
    IF o.purge_archive IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s was purged (at %s by %s): nothing is left to restore;'
                             ' it was archived first, to %s', op,
                             to_char(o.purged_at, 'YYYY-MM-DD HH24:MI:SS'), o.purged_by,
                             o.purge_archive),
            HINT = format('Load it by hand from the archive: see %s/README.txt (pg_restore for '
                          'the objects, psql for the captured rows).', o.purge_archive);
    END IF;
    RAISE EXCEPTION USING ERRCODE = '55000',
        MESSAGE = format('operation %s was purged (at %s by %s): nothing is left to restore'
                         ' (it was not archived)', op,
                         to_char(o.purged_at, 'YYYY-MM-DD HH24:MI:SS'), o.purged_by);
END $$;
REVOKE ALL ON FUNCTION softguard._refuse_purged(bigint) FROM PUBLIC;

-- Undo `op`: refuse a purged operation, then undo by kind; with cascade, first undo
-- (newest first) the later operations that hold something it needs: the 55006 errors that
-- say so carry DETAIL 'blocked_by=<op>' (softguard/contract.py), never read from the message.
CREATE FUNCTION softguard._undo(op bigint, rename_to text, "cascade" boolean,
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
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo(bigint, text, boolean, text) FROM PUBLIC;

-- undo_steps: put back what operation `op` took, in one transaction (the caller's), or fail
-- with nothing changed; on_conflict 'fail' or 'skip' (keys re-used since). One row per thing
-- restored (softguard.undo_step; `softguard undo` prints them). Who may undo: whoever may
-- EXECUTE undo_op(bigint, text, boolean), which is not granted to PUBLIC (the installing
-- superuser, or a role it was granted to): one grant decides it for both forms.
CREATE FUNCTION softguard.undo_steps(op bigint, rename_to text DEFAULT NULL,
                                     "cascade" boolean DEFAULT false,
                                     on_conflict text DEFAULT 'fail')
RETURNS SETOF softguard.undo_step
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT has_function_privilege(softguard._client_role(),
                                  'softguard.undo_op(bigint, text, boolean)', 'EXECUTE') THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'permission denied for function undo_steps',
            HINT = 'Undo needs EXECUTE on softguard.undo_op(bigint, text, boolean).';
    END IF;
    RETURN QUERY SELECT * FROM unnest(softguard._undo(op, rename_to, "cascade", on_conflict));
END $$;
REVOKE ALL ON FUNCTION softguard.undo_steps(bigint, text, boolean, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.undo_steps(bigint, text, boolean, text) TO PUBLIC;

-- undo_op: the same undo for SQL callers, one line of text per step
-- ('operation <op>: <detail>').
CREATE FUNCTION softguard.undo_op(op bigint, rename_to text, "cascade" boolean,
                                  on_conflict text)
RETURNS SETOF text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('operation %s: %s', s.op, s.detail)
      FROM unnest(softguard._undo(op, rename_to, "cascade", on_conflict)) s
$$;
REVOKE ALL ON FUNCTION softguard.undo_op(bigint, text, boolean, text) FROM PUBLIC;

-- The three-argument form (on_conflict 'fail').
CREATE FUNCTION softguard.undo_op(op bigint, rename_to text DEFAULT NULL,
                                  "cascade" boolean DEFAULT false)
RETURNS SETOF text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT softguard.undo_op(op, rename_to, "cascade", 'fail')
$$;
REVOKE ALL ON FUNCTION softguard.undo_op(bigint, text, boolean) FROM PUBLIC;

-- install/80_purge.sql
-- Purge (retention) and the size of the quarantine.
--
-- Used by `softguard purge` and `softguard space` (softguard/ledger/).
--
-- What always holds:
-- * An operation is purged in ONE short transaction (purge_op): its row in the ledger is
--   locked, its quarantined objects are locked with the caller's lock_timeout (default 2 s:
--   purge gives up rather than queue the application behind it), dropped, and it is marked
--   'purged' (purged_at, purged_by, purge_archive). An interruption leaves it either purged
--   or untouched.
-- * Purge destroys only what the operation holds: before each DROP ... CASCADE the statement
--   is probed (softguard._probe, rolled back); if it would remove anything held by another
--   operation, or anything live, the purge is refused with 55006 and nothing is changed.
-- * Captured rows of a purged (or undone) operation are released in that transaction
--   (captures.released_at); small sets are deleted there and then, large ones by
--   purge_rows(batch) in later short transactions. Released rows are never read again:
--   undo of a purged operation is refused before it looks at them.
-- * Undo of a purged operation fails with 55000, naming the archive when there is one.
-- * Sizes (op_size) are O(objects), not O(rows): relation sizes from the catalog, captured
--   rows as count x a sampled row width.

-- * Soft-deleted rows are hard-deleted in batches (purge_soft_rows), before purge_op marks
--   the operation purged.

-- ---------------------------------------------------------------------------------------
-- What an operation holds in quarantine
-- ---------------------------------------------------------------------------------------

-- The objects operation `op` holds: relations, routines, types and statistics named
-- op<id>_<n>_<name> in softguard_quarantine, and its renamed schemas softguard_q<id>_<name>.
-- Indexes, toast tables, row types and owned sequences are left out: they go with their
-- owner. `ident` is what a DROP statement names; `keyword` its object type.
CREATE FUNCTION softguard._held_objects(op bigint)
RETURNS TABLE (classid oid, objid oid, keyword text, ident text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'pg_class'::regclass::oid, c.oid,
           CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
           c.oid::regclass::text
      FROM pg_class c
     WHERE c.relnamespace = 'softguard_quarantine'::regnamespace
       AND c.relname ~ ('^op' || op || '_')
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
       AND NOT EXISTS (SELECT FROM pg_depend d
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                          AND c.relkind = 'S')
    UNION ALL
    SELECT 'pg_proc'::regclass::oid, p.oid,
           CASE p.prokind WHEN 'a' THEN 'AGGREGATE' WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
           p.oid::regprocedure::text
      FROM pg_proc p
     WHERE p.pronamespace = 'softguard_quarantine'::regnamespace
       AND p.proname ~ ('^op' || op || '_')
    UNION ALL
    SELECT 'pg_type'::regclass::oid, t.oid,
           CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, t.oid::regtype::text
      FROM pg_type t
     WHERE t.typnamespace = 'softguard_quarantine'::regnamespace
       AND t.typname ~ ('^op' || op || '_')
       AND t.typtype IN ('b', 'c', 'd', 'e', 'r')
       AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
    UNION ALL
    SELECT 'pg_statistic_ext'::regclass::oid, s.oid, 'STATISTICS',
           format('%I.%I', 'softguard_quarantine', s.stxname)
      FROM pg_statistic_ext s
     WHERE s.stxnamespace = 'softguard_quarantine'::regnamespace
       AND s.stxname ~ ('^op' || op || '_')
    UNION ALL
    SELECT 'pg_namespace'::regclass::oid, n.oid, 'SCHEMA', quote_ident(n.nspname)
      FROM pg_namespace n
     WHERE n.nspname ~ ('^softguard_q' || op || '_')
$$;
REVOKE ALL ON FUNCTION softguard._held_objects(bigint) FROM PUBLIC;

-- The relations (tables, views, materialized views, sequences, foreign tables) operation
-- `op` holds, with those inside its renamed schemas: what `softguard purge --archive` gives
-- pg_dump (as --table / --schema) and what op_size measures.
CREATE FUNCTION softguard.held_relations(op bigint)
RETURNS TABLE (relid oid, ident text, relkind "char", in_schema text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.oid, c.oid::regclass::text, c.relkind, NULL::text
      FROM pg_class c
     WHERE c.relnamespace = 'softguard_quarantine'::regnamespace
       AND c.relname ~ ('^op' || op || '_')
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    UNION ALL
    SELECT c.oid, c.oid::regclass::text, c.relkind, n.nspname::text
      FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid
     WHERE n.nspname ~ ('^softguard_q' || op || '_')
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
$$;
REVOKE ALL ON FUNCTION softguard.held_relations(bigint) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Sizes
-- ---------------------------------------------------------------------------------------

-- Bytes one capture's rows take: n_rows x (average stored width of up to 20 of its rows +
-- 36 bytes of tuple header, item pointer and capture_id). The sample is read through the
-- BRIN index (enable_seqscan off: never a scan of the whole table).
CREATE FUNCTION softguard._capture_bytes(cid bigint, n_rows bigint) RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
    SELECT CASE WHEN n_rows <= 0 THEN 0 ELSE
        (n_rows * (coalesce((SELECT avg(pg_column_size(s."row"))
                               FROM (SELECT r."row" FROM softguard.captured_rows r
                                      WHERE r.capture_id = cid LIMIT 20) s), 0) + 36))::bigint
    END
$$;
REVOKE ALL ON FUNCTION softguard._capture_bytes(bigint, bigint) FROM PUBLIC;

-- Bytes operation `op` keeps in quarantine: pg_total_relation_size (heap, indexes, toast)
-- of the relations it holds, plus its captured rows (estimated; see _capture_bytes).
-- 0 for an operation that holds nothing (purged, undone DROP, undo record).
CREATE FUNCTION softguard.op_size(op bigint) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT sum(pg_total_relation_size(h.relid))
                       FROM softguard.held_relations(op) h
                      WHERE h.relkind IN ('r', 'm', 'S')), 0)::bigint
         + coalesce((SELECT sum(softguard._capture_bytes(c.id, c.n_rows))
                       FROM softguard.captures c WHERE c.op_id = op), 0)::bigint
$$;
REVOKE ALL ON FUNCTION softguard.op_size(bigint) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Purge
-- ---------------------------------------------------------------------------------------

-- Destroy what operation `op` holds and mark it purged, in the caller's transaction (run it
-- alone in a transaction and commit). `archive`: where it was archived (recorded, shown by
-- undo). `lock_timeout`: how long to wait for a lock (SET LOCAL; the ledger row, the
-- quarantined relations) before failing with 55P03, nothing changed. Captured rows: deleted
-- here when the operation has at most `inline_rows`, else released for purge_rows.
-- An undone operation holds nothing: its captured rows are released, its state kept.
-- Errors: 42704 no such operation; 55000 already purged; 55006 the DROP would remove
-- something another operation holds, or something live; 55P03 lock timeout.
CREATE FUNCTION softguard.purge_op(op bigint, archive text DEFAULT NULL,
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
BEGIN
    PERFORM set_config('lock_timeout', coalesce(lock_timeout, '2s'), true);
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
            PERFORM set_config('softguard.internal', 'on', true);
            EXECUTE stmt;
            PERFORM set_config('softguard.internal', '', true);
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
        RETURN format('operation %s: %s, nothing in quarantine; %s', op,
                      CASE WHEN o.kind = 'UNDO' THEN 'the record of an undo'
                           ELSE format('undone at %s', to_char(o.undone_at, 'YYYY-MM-DD HH24:MI:SS'))
                      END, released);
    END IF;
    UPDATE softguard.operations
       SET state = 'purged', purged_at = now(), purged_by = session_user, purge_archive = archive
     WHERE id = op;
    RETURN format('operation %s: purged (%s objects dropped, %s)', op, n_objects, released);
END $$;
REVOKE ALL ON FUNCTION softguard.purge_op(bigint, text, text, bigint) FROM PUBLIC;

-- Delete up to `batch` released captured rows (and the released captures left empty), in
-- the caller's transaction; returns how many rows it deleted plus captures it removed:
-- 0 when nothing released is left. Call it in a loop, one transaction per call.
CREATE FUNCTION softguard.purge_rows(batch integer DEFAULT 10000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    cid bigint;
    want integer;
    n bigint;
    done bigint := 0;
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
    RETURN done;
END $$;
REVOKE ALL ON FUNCTION softguard.purge_rows(integer) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Purge: hard-delete the soft-deleted rows, `batch` per call (one transaction each)
-- ---------------------------------------------------------------------------------------

-- Deletes up to `batch` of the rows operation `op` soft-deleted that still carry its mark
-- (their captured keys go with them); returns how many captured rows it took: 0 when
-- none is left. The first call records 'purging' in the capture (undo is refused from
-- then on). Foreign keys act as for any DELETE (CASCADE follows; NO ACTION fails: 23503).
CREATE FUNCTION softguard.purge_soft_rows(op bigint, batch integer DEFAULT 10000,
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
BEGIN
    PERFORM set_config('lock_timeout', coalesce(lock_timeout, '2s'), true);
    PERFORM set_config('softguard.capture', '', true);  -- purge's DELETE is not an operation
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF NOT FOUND OR o.state <> 'active' THEN
        RETURN 0;
    END IF;
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
    RETURN total;
END $$;
REVOKE ALL ON FUNCTION softguard.purge_soft_rows(bigint, integer, text) FROM PUBLIC;

-- install/90_event_triggers.sql
-- softguard's event triggers, all ENABLE ALWAYS (session_replication_role = replica must
-- not switch them off):
-- * softguard_capture_sql_drop / softguard_capture_ddl_end: the probe (softguard._probe
--   arms them to report what a statement would drop) and the backstop that refuses any
--   DROP of the ledger or the quarantine from SQL softguard cannot see.
-- * softguard_capture_install: new tables get the capture triggers (40_capture.sql).
-- The install ends by putting the capture triggers on every existing table.

-- ---------------------------------------------------------------------------------------
-- Capture triggers. Silent unless softguard.probe = 'on' (transaction-local, set only by
-- softguard._probe around the statement it probes): then they abort the statement with
-- the private SQLSTATE SGPRB, DETAIL = JSON array of what it would drop ('[]' when nothing).
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION softguard._capture_sql_drop() RETURNS event_trigger
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
REVOKE ALL ON FUNCTION softguard._capture_sql_drop() FROM PUBLIC;

CREATE FUNCTION softguard._capture_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- Reached in probe mode only when sql_drop did not fire: nothing was dropped.
    IF current_setting('softguard.probe', true) = 'on' THEN
        RAISE EXCEPTION USING ERRCODE = 'SGPRB', MESSAGE = 'softguard probe', DETAIL = '[]';
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_ddl_end() FROM PUBLIC;

CREATE EVENT TRIGGER softguard_capture_sql_drop ON sql_drop
    EXECUTE FUNCTION softguard._capture_sql_drop();
CREATE EVENT TRIGGER softguard_capture_ddl_end ON ddl_command_end
    EXECUTE FUNCTION softguard._capture_ddl_end();
-- ALWAYS: session_replication_role = replica must not switch them off.
ALTER EVENT TRIGGER softguard_capture_sql_drop ENABLE ALWAYS;
ALTER EVENT TRIGGER softguard_capture_ddl_end ENABLE ALWAYS;

-- Tables created later get the triggers too (CREATE TABLE, PARTITION OF, AS, SELECT INTO).
CREATE FUNCTION softguard._capture_install_ddl() RETURNS event_trigger
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
REVOKE ALL ON FUNCTION softguard._capture_install_ddl() FROM PUBLIC;

CREATE EVENT TRIGGER softguard_capture_install ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
    EXECUTE FUNCTION softguard._capture_install_ddl();
ALTER EVENT TRIGGER softguard_capture_install ENABLE ALWAYS;

SELECT softguard._install_capture(c.oid) FROM pg_class c WHERE c.relkind IN ('r', 'p')
 ORDER BY c.oid;

