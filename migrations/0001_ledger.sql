-- softguard ledger, version 1: the operations ledger, the quarantine, reversible DROP.
--
-- Design: docs/decisions/0005-reversible-drop.md. Applied by softguard.ledger.migrate
-- (one transaction, serialised by an advisory lock), as a superuser: event triggers need one.
--
-- What always holds:
-- * An operation row exists if and only if the transaction that moved its objects committed
--   (the row is written by the same transaction that moves the objects).
-- * Nothing is dropped without a way back: an object a DROP would remove is either moved into
--   quarantine, or its definition is recorded in the operation's restore plan before it is
--   dropped; anything softguard cannot keep makes drop_op fail with 0A000 (the caller's
--   transaction aborts, nothing is lost).
-- * PostgreSQL decides what a DROP removes: drop_op runs the statement itself in a rolled-back
--   subtransaction with the capture triggers armed, under the caller's privileges.
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
    txid              xid8 DEFAULT pg_current_xact_id()
);
REVOKE ALL ON softguard.operations FROM PUBLIC;
CREATE INDEX operations_active_idx ON softguard.operations (id) WHERE state = 'active';
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

CREATE FUNCTION softguard._capture_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- Reached in probe mode only when sql_drop did not fire: nothing was dropped.
    IF current_setting('softguard.probe', true) = 'on' THEN
        RAISE EXCEPTION USING ERRCODE = 'SGPRB', MESSAGE = 'softguard probe', DETAIL = '[]';
    END IF;
END $$;

REVOKE ALL ON FUNCTION softguard._capture_sql_drop() FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._capture_ddl_end() FROM PUBLIC;

CREATE EVENT TRIGGER softguard_capture_sql_drop ON sql_drop
    EXECUTE FUNCTION softguard._capture_sql_drop();
CREATE EVENT TRIGGER softguard_capture_ddl_end ON ddl_command_end
    EXECUTE FUNCTION softguard._capture_ddl_end();
-- ALWAYS: session_replication_role = replica must not switch them off.
ALTER EVENT TRIGGER softguard_capture_sql_drop ENABLE ALWAYS;
ALTER EVENT TRIGGER softguard_capture_ddl_end ENABLE ALWAYS;

-- ---------------------------------------------------------------------------------------
-- Small helpers
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION softguard._is_quarantine_schema(nsp text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT nsp = 'softguard_quarantine' OR nsp ~ '^softguard_q[0-9]+_'
$$;

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

-- Read-only catalog helpers that drop_op (SECURITY INVOKER) calls: EXECUTE stays PUBLIC.
GRANT EXECUTE ON FUNCTION softguard._is_quarantine_schema(text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._list(jsonb) TO PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._only_quarantine_blocks(jsonb) TO PUBLIC;
REVOKE ALL ON FUNCTION softguard._holder(oid, oid, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._owner(oid, oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._qname(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._deps(oid, oid) FROM PUBLIC;

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

    RETURN format('softguard: %s %s is reversible as operation %s until %s',
                  coalesce(ctx->>'action', 'DROP'), targets, op_id,
                  to_char(expires, 'YYYY-MM-DD'));
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

-- ---------------------------------------------------------------------------------------
-- Undo
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

-- Undo one operation (no cascade); returns what it restored.
CREATE FUNCTION softguard._undo_one(op bigint, rename_to text) RETURNS text[]
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
    lines text[] := '{}';
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
            lines := lines || format('restored %s %s', lower(s->>'keyword'),
                                     (softguard._kw((s->>'classid')::oid, (s->>'oid')::oid)).ident);
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
            lines := lines || format('restored schema %I', target);
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
            lines := lines || format('re-established inheritance of %s from %s',
                                     (s->>'child')::oid::regclass, (s->>'parent')::oid::regclass);
        WHEN 'detach_partition' THEN
            PERFORM softguard._need_live(op, 'pg_class'::regclass, (s->>'parent')::oid,
                                         'partition ' || (s->>'child_name'));
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s %s', (s->>'parent')::oid::regclass,
                           (s->>'child')::oid::regclass, s->>'bound');
            lines := lines || format('re-attached partition %s to %s',
                                     (s->>'child')::oid::regclass, (s->>'parent')::oid::regclass);
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
                lines := lines || format('re-added constraint %I on %s', s->>'name', cur);
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
                lines := lines || format('re-created trigger %I on %s', s->>'name', cur);
            WHEN 'drop_default' THEN
                EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', cur, s->>'name',
                               s->>'def');
                lines := lines || format('re-set default of %s.%I', cur, s->>'name');
            WHEN 'drop_policy' THEN
                EXECUTE s->>'def';
                IF s->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON POLICY %I ON %s IS %L', s->>'name', cur,
                                   s->>'comment');
                END IF;
                lines := lines || format('re-created policy %I on %s', s->>'name', cur);
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
                lines := lines || format('re-created rule %I on %s', s->>'name', cur);
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
                lines := lines || format('re-created index %s', cur);
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
    RETURN ARRAY(SELECT format('operation %s: %s', op, l) FROM unnest(lines) l);
END $$;
REVOKE ALL ON FUNCTION softguard._undo_one(bigint, text) FROM PUBLIC;

-- undo_op: put back what operation `op` took, in one transaction (the caller's), or fail
-- with nothing changed. With cascade, first undo (newest first) the later operations that
-- hold something it needs. Not granted to PUBLIC: run it as the installing superuser (the
-- `softguard undo` command), or grant EXECUTE to an administrator role.
CREATE FUNCTION softguard.undo_op(op bigint, rename_to text DEFAULT NULL,
                                  "cascade" boolean DEFAULT false)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines text[] := '{}';
    done text[];
    msg text;
    holder bigint;
BEGIN
    FOR attempt IN 1..1000 LOOP
        BEGIN
            done := softguard._undo_one(op, rename_to);
            lines := lines || done;
            EXIT;
        EXCEPTION WHEN SQLSTATE '55006' THEN
            IF NOT "cascade" THEN
                RAISE;
            END IF;
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            holder := (regexp_match(msg, 'held by operation ([0-9]+)'))[1]::bigint;
            IF holder IS NULL OR holder = op THEN
                RAISE;
            END IF;
            lines := lines || ARRAY(SELECT softguard.undo_op(holder, NULL, true));
        END;
    END LOOP;
    RETURN QUERY SELECT l FROM unnest(lines) l;
END $$;
REVOKE ALL ON FUNCTION softguard.undo_op(bigint, text, boolean) FROM PUBLIC;
