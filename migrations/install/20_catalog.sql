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

-- Plain SQL without a SET, its operators qualified: PostgreSQL inlines it into the query
-- that calls it (a DROP calls it for each listed object, several times), where a SET made
-- it a function call planned each time (decision 0041).
CREATE FUNCTION softguard._is_quarantine_schema(nsp text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT nsp OPERATOR(pg_catalog.=) 'softguard_quarantine'
        OR nsp OPERATOR(pg_catalog.~) '^softguard_q[0-9]+_'
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

-- The owner of an object a DROP statement can name directly. PL/pgSQL: a DROP calls it
-- for every object it keeps, and a SQL function with a SET is planned again on every call
-- (~0.25 ms here, decision 0041); one branch per catalog keeps each plan an index lookup.
CREATE FUNCTION softguard._owner(p_classid oid, p_objid oid) RETURNS oid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_classid = 'pg_class'::regclass THEN
        RETURN (SELECT relowner FROM pg_class WHERE oid = p_objid);
    ELSIF p_classid = 'pg_proc'::regclass THEN
        RETURN (SELECT proowner FROM pg_proc WHERE oid = p_objid);
    ELSIF p_classid = 'pg_type'::regclass THEN
        RETURN (SELECT typowner FROM pg_type WHERE oid = p_objid);
    ELSIF p_classid = 'pg_namespace'::regclass THEN
        RETURN (SELECT nspowner FROM pg_namespace WHERE oid = p_objid);
    ELSIF p_classid = 'pg_statistic_ext'::regclass THEN
        RETURN (SELECT stxowner FROM pg_statistic_ext WHERE oid = p_objid);
    ELSIF p_classid = 'pg_collation'::regclass THEN
        RETURN (SELECT collowner FROM pg_collation WHERE oid = p_objid);
    ELSIF p_classid = 'pg_ts_config'::regclass THEN
        RETURN (SELECT cfgowner FROM pg_ts_config WHERE oid = p_objid);
    ELSIF p_classid = 'pg_ts_dict'::regclass THEN
        RETURN (SELECT dictowner FROM pg_ts_dict WHERE oid = p_objid);
    ELSIF p_classid = 'pg_operator'::regclass THEN
        RETURN (SELECT oprowner FROM pg_operator WHERE oid = p_objid);
    ELSIF p_classid = 'pg_opfamily'::regclass THEN
        RETURN (SELECT opfowner FROM pg_opfamily WHERE oid = p_objid);
    ELSIF p_classid = 'pg_opclass'::regclass THEN
        RETURN (SELECT opcowner FROM pg_opclass WHERE oid = p_objid);
    ELSIF p_classid = 'pg_foreign_server'::regclass THEN
        RETURN (SELECT srvowner FROM pg_foreign_server WHERE oid = p_objid);
    ELSIF p_classid = 'pg_language'::regclass THEN
        RETURN (SELECT lanowner FROM pg_language WHERE oid = p_objid);
    END IF;
    RETURN NULL;
END $$;
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
                      -- on a listed object, or on a listed column itself: a policy or
                      -- trigger of a table one of whose columns goes (DROP TYPE ...
                      -- CASCADE) does not go with that table, which stays
                      AND EXISTS (SELECT FROM l o
                                   WHERE o.classid = d.refclassid AND o.objid = d.refobjid
                                     AND o.objsubid IN (0, d.refobjsubid)))
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
    ELSIF p_classid = 'pg_collation'::regclass THEN
        SELECT 'COLLATION', format('%I.%I', c.collnamespace::regnamespace, c.collname),
               c.collname, c.collnamespace
          INTO keyword, ident, name, nsp FROM pg_collation c WHERE c.oid = p_objid;
    ELSIF p_classid = 'pg_ts_config'::regclass THEN
        SELECT 'TEXT SEARCH CONFIGURATION',
               format('%I.%I', c.cfgnamespace::regnamespace, c.cfgname), c.cfgname, c.cfgnamespace
          INTO keyword, ident, name, nsp FROM pg_ts_config c WHERE c.oid = p_objid;
    ELSIF p_classid = 'pg_ts_dict'::regclass THEN
        SELECT 'TEXT SEARCH DICTIONARY',
               format('%I.%I', d.dictnamespace::regnamespace, d.dictname), d.dictname,
               d.dictnamespace
          INTO keyword, ident, name, nsp FROM pg_ts_dict d WHERE d.oid = p_objid;
    ELSIF p_classid = 'pg_operator'::regclass THEN
        -- an operator has no RENAME: its name is a symbol, its identity the argument types
        -- too (NONE for a prefix operator's left side)
        SELECT 'OPERATOR',
               format('%s.%s (%s, %s)', quote_ident(n.nspname), o.oprname,
                      coalesce(nullif(o.oprleft, 0)::regtype::text, 'NONE'),
                      coalesce(nullif(o.oprright, 0)::regtype::text, 'NONE')),
               o.oprname, o.oprnamespace
          INTO keyword, ident, name, nsp
          FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
         WHERE o.oid = p_objid;
    ELSIF p_classid = 'pg_opfamily'::regclass THEN   -- named per access method
        SELECT 'OPERATOR FAMILY', format('%s.%I USING %I', quote_ident(n.nspname), f.opfname,
                                         a.amname), f.opfname, f.opfnamespace
          INTO keyword, ident, name, nsp
          FROM pg_opfamily f JOIN pg_namespace n ON n.oid = f.opfnamespace
          JOIN pg_am a ON a.oid = f.opfmethod
         WHERE f.oid = p_objid;
    ELSIF p_classid = 'pg_opclass'::regclass THEN
        SELECT 'OPERATOR CLASS', format('%s.%I USING %I', quote_ident(n.nspname), c.opcname,
                                        a.amname), c.opcname, c.opcnamespace
          INTO keyword, ident, name, nsp
          FROM pg_opclass c JOIN pg_namespace n ON n.oid = c.opcnamespace
          JOIN pg_am a ON a.oid = c.opcmethod
         WHERE c.oid = p_objid;
    ELSIF p_classid = 'pg_foreign_server'::regclass THEN
        -- not in a schema (nsp NULL): kept by a rename only (_move, decision 0036)
        SELECT 'SERVER', quote_ident(s.srvname), s.srvname, NULL::oid
          INTO keyword, ident, name, nsp FROM pg_foreign_server s WHERE s.oid = p_objid;
    ELSIF p_classid = 'pg_language'::regclass THEN   -- the same
        SELECT 'LANGUAGE', quote_ident(l.lanname), l.lanname, NULL::oid
          INTO keyword, ident, name, nsp FROM pg_language l WHERE l.oid = p_objid;
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._kw(oid, oid) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Tables, rows and keys
-- ---------------------------------------------------------------------------------------

-- Is this relation a user table softguard protects? (ordinary or partitioned, permanent or
-- unlogged, not in a system or softguard schema) PL/pgSQL: every ALTER TABLE calls it
-- (the inheritance event trigger), a DROP and its undo three times each; as a SQL function
-- with a SET it was planned again on every call (~0.18 ms, decision 0041).
CREATE FUNCTION softguard._protected_table(rel oid) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (
        SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = rel AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
           AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
           AND n.nspname NOT LIKE 'softguard%');
END $$;
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
                   -- a column kept in its restore form (a third element, 46_restore.sql): jsonb
                   (SELECT string_agg(format('%I %s', c->>0, CASE WHEN jsonb_array_length(c) > 2
                                                                 THEN 'pg_catalog.jsonb' ELSE c->>1 END),
                                      ', ' ORDER BY o)
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
