-- Version 11 (section fidview, decision 0029 "Since then"): DROP TYPE/DOMAIN ... CASCADE
-- reaching RLS policies or views that read a kept column stays reversible: _list stops
-- counting a policy of a table whose column goes as going with that table; _drop_link
-- records a policy's roles by oid (quoted once); _quarantine keeps such views in quarantine
-- with their query set aside (_column_views, _stub_view), _undo_one puts it back (view_query).
--
-- Version 11 (section tie, decision 0033): the session registration (register_session,
-- register_limits, register_role, session_key and what they call) is LANGUAGE sql, so a
-- session that has run nothing of its own does not load plpgsql (SHOW ALL lists no
-- plpgsql.* settings, as directly); bad values are refused by casts to new domains.
-- DROP COLLATION / TEXT SEARCH CONFIGURATION / TEXT SEARCH DICTIONARY are reversible:
-- _quarantine moves such objects (_kw, _owner, _move), undo puts them back (_name_taken)
-- and refuses to give back a relation whose columns use an object a later operation holds
-- (_undo_one), purge drops them (_held_objects). Event triggers off meanwhile, as 9--10.sql.
--
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

-- section: fidview -------------------------------------------------------------------

CREATE OR REPLACE FUNCTION softguard._list(list jsonb)
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
    cols jsonb := '[]';     -- columns of live tables it takes (a type's CASCADE): kept
    stubbed oid[] := '{}';  -- views reading such a column: moved before the columns go (3a)
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
        -- a column goes with its listed table or view (`owned` would also count a
        -- partition's column, whose table depends on its listed parent's)
        CONTINUE WHEN r.objsubid <> 0
                  AND EXISTS (SELECT FROM softguard._list(list) t
                               WHERE t.classid = r.classid AND t.objid = r.objid
                                 AND t.objsubid = 0);
        IF r.objsubid <> 0 AND r.object_type <> 'table column' THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',   -- e.g. a composite type's attribute
                MESSAGE = format('softguard cannot keep %s %s (dropped by this statement)',
                                 r.object_type, r.object_identity),
                HINT = 'Run the statement without softguard if losing it is intended.';
        END IF;
        IF r.object_type = 'table column' THEN
            -- a column of a live table (DROP TYPE/DOMAIN ... CASCADE): kept as ALTER TABLE
            -- ... DROP COLUMN keeps it, step 3b (decision 0029)
            IF NOT softguard._protected_table(r.objid) THEN
                RAISE EXCEPTION USING ERRCODE = '0A000',
                    MESSAGE = format('softguard cannot keep column %s (dropped by this statement)',
                                     r.object_identity),
                    HINT = 'Drop the column with ALTER TABLE first, or run the statement without softguard.';
            END IF;
            cols := cols || jsonb_build_array(to_jsonb(r));
            CONTINUE;
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
                                   'domain', 'collation', 'text search configuration',
                                   'text search dictionary') THEN
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

    -- A view reading a kept column that moves into quarantine is kept in step 3a. Any
    -- other rule reading one (a materialized view, a rule, a view that stays in a dropped
    -- schema or that an earlier operation holds) would still hold the column: not kept yet.
    SELECT w.ev_class, w.rulename, k.object_identity INTO x
      FROM jsonb_to_recordset(cols) AS k(objid oid, objsubid integer, object_identity text)
      JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = k.objid
                      AND d.refobjsubid = k.objsubid AND d.classid = 'pg_rewrite'::regclass
      JOIN pg_rewrite w ON w.oid = d.objid
     WHERE NOT (w.rulename = '_RETURN'
                AND w.ev_class IN (SELECT v.oid FROM softguard._column_views(cols, moves) v))
     ORDER BY 1, 2 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard cannot yet keep %s, which reads column %s (dropped by '
                             'this statement)', CASE WHEN x.rulename = '_RETURN'
                                 THEN (SELECT CASE c.relkind WHEN 'm' THEN 'materialized view '
                                              ELSE 'view ' END FROM pg_class c
                                        WHERE c.oid = x.ev_class) || x.ev_class::regclass::text
                                 ELSE format('rule %I on %s', x.rulename, x.ev_class::regclass) END,
                             x.object_identity),
            HINT = 'Drop it first (DROP VIEW / DROP MATERIALIZED VIEW through softguard keeps '
                   'it), then run this statement again.';
    END IF;

    -- 3. Links from live objects to dropped ones, as a real DROP removes them. Constraints
    --    first (a foreign key may need a listed unique index), indexes last. What goes
    --    with a kept column (its default, indexes, constraints) is kept with it (3b).
    FOR r IN SELECT e.* FROM jsonb_to_recordset(links) AS e(classid oid, objid oid,
                  object_type text, object_identity text, original boolean, ord integer)
             ORDER BY CASE e.object_type WHEN 'table constraint' THEN 0 WHEN 'index' THEN 2
                      ELSE 1 END, e.ord LOOP
        CONTINUE WHEN softguard._with_columns(r.classid, r.objid, cols);
        steps := steps || softguard._drop_link(r.classid, r.objid, r.object_identity, r.original);
    END LOOP;

    -- 3a. Views reading a kept column (decision 0029, since then): moved into quarantine
    --     now, as step 6 moves the others, and their query set aside (_stub_view) so
    --     that the column can go; undo puts the query back once the columns are back.
    --     Views on them that the CASCADE takes move in step 6, their columns unchanged.
    FOR r IN SELECT e.classid, e.objid, e.original FROM softguard._column_views(cols, moves) v
               JOIN jsonb_to_recordset(moves) AS e(classid oid, objid oid, original boolean,
                                                   ord integer)
                 ON e.classid = 'pg_class'::regclass AND e.objid = v.oid
              ORDER BY e.ord LOOP
        n := n + 1;
        qn := r.objid::regclass::text;    -- its name before the move, for undo's messages
        steps := steps || softguard._move(op_id, n, r.classid, r.objid, r.original)
                       || softguard._stub_view(r.objid, qn)
                       || softguard._disown(r.classid, r.objid);
        stubbed := stubbed || r.objid;
    END LOOP;

    -- 3b. Columns of live tables (decision 0029): locked, kept as alter_op keeps a
    --     dropped column (_keep_column: definition, values by key or row image), parents
    --     first, then dropped (a parent's DROP COLUMN takes its partitions' along).
    IF cols <> '[]' THEN
        FOR x IN SELECT DISTINCT k.objid FROM jsonb_to_recordset(cols) AS k(objid oid)
                  ORDER BY 1 LOOP
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', x.objid::regclass);
        END LOOP;
        FOR x IN SELECT k.objid AS rel, k.objsubid AS attnum FROM softguard._kept_order(cols) k LOOP
            PERFORM softguard._keep_column(op_id, x.rel, x.attnum,
                                           softguard._alter_changing(list, '[]', x.rel));
        END LOOP;
        -- foreign keys from kept columns first: one may reference a unique key of another
        -- kept column (the captures hold their definitions; undo adds them back last)
        FOR x IN SELECT DISTINCT co.conrelid, co.conname FROM pg_constraint co
                   JOIN softguard._kept_order(cols) k
                     ON co.conrelid = k.objid AND k.objsubid = ANY (co.conkey)
                  WHERE co.contype = 'f' AND co.conparentid = 0 ORDER BY 1, 2 LOOP
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', x.conrelid::regclass, x.conname);
        END LOOP;
        FOR x IN SELECT k.objid AS rel, k.objsubid AS attnum FROM softguard._kept_order(cols) k
                  ORDER BY k.drop_ord LOOP
            PERFORM softguard._drop_kept_column(x.rel, x.attnum);
        END LOOP;
        steps := steps || jsonb_build_array(jsonb_build_object(
            'step', 'drop_columns', 'columns',
            (SELECT jsonb_agg(k.object_identity) FROM softguard._kept_order(cols) k)));
    END IF;

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
        -- table its indexes and sequences, a type its array) take those along; every
        -- other object with an owner, of whatever kind the catalogs hold
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
                 UNION ALL  -- statistics, operators, collations, text search objects, ...
                 SELECT o.classid, o.objid FROM softguard._schema_objects(r.objid) o
                 ORDER BY 1, 2 LOOP
            steps := steps || softguard._disown(x.cls, x.obj);
        END LOOP;
    END LOOP;

    -- 6. Move into softguard_quarantine under op<id>_<n>_<name>.
    FOR r IN SELECT e.* FROM jsonb_to_recordset(moves) AS e(classid oid, objid oid,
                  object_type text, object_identity text, original boolean, ord integer)
             ORDER BY e.ord LOOP
        CONTINUE WHEN r.classid = 'pg_class'::regclass AND r.objid = ANY (stubbed);  -- 3a
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
                       'quarantined_as', CASE WHEN h.held_by IS NULL
                                                   AND NOT cols @> jsonb_build_array(jsonb_build_object(
                                                       'objid', l.objid, 'objsubid', l.objsubid)) THEN
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

CREATE OR REPLACE FUNCTION softguard._drop_link(p_classid oid, p_objid oid, p_identity text,
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
        -- the statement in two halves around its TO list (undo leaves out roles dropped
        -- since); regrole's text is quoted already
        SELECT p.polname, p.polrelid,
               format('CREATE POLICY %I ON %s AS %s FOR %s', p.polname, p.polrelid::regclass,
                      CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                      CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT'
                           WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END) AS head,
               (SELECT string_agg(CASE WHEN rl = 0 THEN 'PUBLIC' ELSE rl::regrole::text END,
                                  ', ' ORDER BY o)
                  FROM unnest(p.polroles) WITH ORDINALITY AS u(rl, o)) AS tolist,
               (SELECT jsonb_agg(jsonb_build_object(
                           'role', CASE WHEN rl = 0 THEN 'PUBLIC' ELSE rl::regrole::text END,
                           'oid', rl) ORDER BY o)
                  FROM unnest(p.polroles) WITH ORDINALITY AS u(rl, o)) AS roles,
               concat(' USING (' || pg_get_expr(p.polqual, p.polrelid) || ')',
                      ' WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')') AS tail,
               obj_description(p.oid, 'pg_policy') AS cmt
          INTO x FROM pg_policy p WHERE p.oid = p_objid;
        step := jsonb_build_object('step', 'drop_policy', 'table', x.polrelid,
            'table_name', x.polrelid::regclass::text, 'name', x.polname,
            'def', format('%s TO %s%s', x.head, x.tolist, x.tail), 'head', x.head,
            'roles', x.roles, 'tail', x.tail, 'comment', x.cmt);
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

CREATE OR REPLACE FUNCTION softguard._column_views(cols jsonb, moves jsonb) RETURNS TABLE (oid oid)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT DISTINCT w.ev_class
      FROM jsonb_to_recordset(cols) AS k(objid oid, objsubid integer)
      JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = k.objid
                      AND d.refobjsubid = k.objsubid AND d.classid = 'pg_rewrite'::regclass
      JOIN pg_rewrite w ON w.oid = d.objid AND w.rulename = '_RETURN'
      JOIN pg_class c ON c.oid = w.ev_class AND c.relkind = 'v'
     WHERE EXISTS (SELECT FROM jsonb_to_recordset(moves) AS m(classid oid, objid oid)
                    WHERE m.classid = 'pg_class'::regclass AND m.objid = w.ev_class)
$$;
REVOKE ALL ON FUNCTION softguard._column_views(jsonb, jsonb) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._stub_view(rel oid, view_name text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    def text := pg_get_viewdef(rel);
    opts text[];
    outs text;
    deps jsonb;
BEGIN
    SELECT coalesce(jsonb_agg(e), '[]') INTO deps
      FROM pg_rewrite w, jsonb_array_elements(softguard._deps('pg_rewrite'::regclass, w.oid)) e
     WHERE w.ev_class = rel AND w.rulename = '_RETURN'
       AND NOT (e->>'classid' = 'pg_class'::regclass::oid::text AND e->>'objid' = rel::text);
    SELECT c.reloptions INTO opts FROM pg_class c WHERE c.oid = rel AND c.relkind = 'v';
    IF NOT FOUND OR def IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'XX000',
            MESSAGE = format('softguard: %s is not a view', rel);
    END IF;
    SELECT string_agg(format('NULL::%s%s AS %I', format_type(a.atttypid, a.atttypmod),
                             CASE WHEN a.attcollation <> 0
                                  THEN format(' COLLATE %I.%I', cn.nspname, co.collname) END,
                             a.attname), ', ' ORDER BY a.attnum)
      INTO outs
      FROM pg_attribute a
      LEFT JOIN pg_collation co ON co.oid = a.attcollation
      LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
    EXECUTE format('CREATE OR REPLACE VIEW %s AS SELECT %s WHERE false', rel::regclass,
                   coalesce(outs, ''));
    RETURN jsonb_build_array(jsonb_build_object(
        'step', 'view_query', 'oid', rel, 'view', view_name, 'kept_as', rel::regclass::text,
        'def', def,
        'options', to_jsonb(opts), 'deps', deps));
END $$;
REVOKE ALL ON FUNCTION softguard._stub_view(oid, text) FROM PUBLIC;

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
    cap softguard.captures;
    quiet jsonb;
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
        WHEN 'drop_columns' THEN
            -- the columns a DROP ... CASCADE took (decision 0029), their type back already:
            -- re-added as the undo of ALTER TABLE ... DROP COLUMN re-adds them, parents first
            -- (their foreign keys last: one may reference another of these columns)
            quiet := softguard._undo_triggers_off(op);
            FOR cap IN SELECT * FROM softguard.captures c
                        WHERE c.op_id = op AND c.event = 'column' ORDER BY c.id LOOP
                PERFORM softguard._need_table(op, cap.relid, cap.table_identity);
                cap.info := jsonb_set(cap.info, '{constraints}', (
                    SELECT coalesce(jsonb_agg(x ORDER BY i), '[]')
                      FROM jsonb_array_elements(cap.info->'constraints') WITH ORDINALITY t(x, i)
                     WHERE x->>'def' NOT LIKE 'FOREIGN KEY %'));
                lines := lines || softguard._undo_column(op, cap);
            END LOOP;
            PERFORM softguard._undo_triggers_back(quiet);
            FOR k IN SELECT c.relid, x FROM softguard.captures c,
                            jsonb_array_elements(c.info->'constraints') WITH ORDINALITY t(x, i)
                      WHERE c.op_id = op AND c.event = 'column'
                        AND x->>'def' LIKE 'FOREIGN KEY %' ORDER BY c.id, t.i LOOP
                CONTINUE WHEN EXISTS (SELECT FROM pg_constraint co WHERE co.conrelid = k.relid
                                         AND co.conname = k.x->>'name');   -- via its parent
                EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', k.relid::regclass,
                               k.x->>'name', k.x->>'def');
                IF k.x->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON CONSTRAINT %I ON %s IS %L', k.x->>'name',
                                   k.relid::regclass, k.x->>'comment');
                END IF;
            END LOOP;
        WHEN 'view_query' THEN
            -- a view that read a column the DROP kept (decision 0029): its query and
            -- options back, the columns back already; the view is still in quarantine
            -- (moved back next), so this records no CREATE OR REPLACE VIEW operation
            FOR d IN SELECT x FROM jsonb_array_elements(s->'deps') x LOOP
                PERFORM softguard._need_live(op, (d->>'classid')::oid, (d->>'objid')::oid,
                                             'view ' || (s->>'view'), d->>'identity');
            END LOOP;
            EXECUTE format('CREATE OR REPLACE VIEW %s%s AS %s', (s->>'oid')::oid::regclass,
                           (SELECT ' WITH (' || string_agg(x, ', ' ORDER BY i) || ')'
                              FROM jsonb_array_elements_text(
                                       CASE jsonb_typeof(s->'options') WHEN 'array'
                                            THEN s->'options' ELSE '[]' END)
                                   WITH ORDINALITY AS t(x, i)),
                           s->>'def');
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
                ddl := s->>'def';
                IF s ? 'roles' THEN
                    -- the roles it applied to that still exist (by oid, under their
                    -- names of now); none left: it stays dropped, as DROP OWNED BY of its
                    -- last role would have dropped it (recorded by ledger 11 and later)
                    SELECT string_agg(CASE WHEN t.rl->>'role' = 'PUBLIC' THEN 'PUBLIC'
                                           ELSE r.oid::regrole::text END, ', ' ORDER BY t.i)
                      INTO target
                      FROM jsonb_array_elements(s->'roles') WITH ORDINALITY AS t(rl, i)
                      LEFT JOIN pg_roles r ON r.oid = (t.rl->>'oid')::oid
                     WHERE t.rl->>'role' = 'PUBLIC' OR r.oid IS NOT NULL;
                    FOR e IN SELECT x FROM jsonb_array_elements(s->'roles') x
                              WHERE x->>'role' <> 'PUBLIC'
                                AND NOT EXISTS (SELECT FROM pg_roles r
                                                 WHERE r.oid = (x->>'oid')::oid) LOOP
                        lines := lines || softguard._step(op, 'skipped',
                            format('%I on %s', s->>'name', cur),
                            format('policy %I on %s not given back to role %s: it no longer exists',
                                   s->>'name', cur, e->>'role'));
                    END LOOP;
                    IF target IS NULL THEN
                        CONTINUE;
                    END IF;
                    ddl := format('%s TO %s%s', s->>'head', target, s->>'tail');
                END IF;
                EXECUTE ddl;
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

    -- Everything restored must find what it uses live: a later operation may hold it. A
    -- relation's columns too (their type, collation: decision 0033), so that a live table
    -- never uses a kept object, which that operation's purge could then not drop.
    FOR e IN SELECT x FROM jsonb_array_elements(o.objects) x
              WHERE x->>'held_by' IS NULL AND x->>'quarantined_as' IS NOT NULL LOOP
        FOR k IN SELECT dp.refclassid, dp.refobjid FROM pg_depend dp
                  WHERE dp.classid = (e->>'classid')::oid AND dp.objid = (e->>'objid')::oid
                    AND (dp.objsubid = (e->>'objsubid')::integer
                         OR (dp.classid = 'pg_class'::regclass
                             AND (e->>'objsubid')::integer = 0))
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
REVOKE ALL ON FUNCTION softguard._undo_one(bigint, text) FROM PUBLIC;

-- end section: fidview ---------------------------------------------------------------

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

CREATE OR REPLACE FUNCTION softguard._owner(p_classid oid, p_objid oid) RETURNS oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE p_classid
        WHEN 'pg_class'::regclass THEN (SELECT relowner FROM pg_class WHERE oid = p_objid)
        WHEN 'pg_proc'::regclass THEN (SELECT proowner FROM pg_proc WHERE oid = p_objid)
        WHEN 'pg_type'::regclass THEN (SELECT typowner FROM pg_type WHERE oid = p_objid)
        WHEN 'pg_namespace'::regclass THEN (SELECT nspowner FROM pg_namespace WHERE oid = p_objid)
        WHEN 'pg_statistic_ext'::regclass
            THEN (SELECT stxowner FROM pg_statistic_ext WHERE oid = p_objid)
        WHEN 'pg_collation'::regclass THEN (SELECT collowner FROM pg_collation WHERE oid = p_objid)
        WHEN 'pg_ts_config'::regclass THEN (SELECT cfgowner FROM pg_ts_config WHERE oid = p_objid)
        WHEN 'pg_ts_dict'::regclass THEN (SELECT dictowner FROM pg_ts_dict WHERE oid = p_objid)
    END
$$;

CREATE OR REPLACE FUNCTION softguard._kw(p_classid oid, p_objid oid, OUT keyword text, OUT ident text,
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
    END IF;
END $$;

-- (FUNCTION softguard._quarantine: defined above)

CREATE OR REPLACE FUNCTION softguard._move(op_id bigint, n integer, p_classid oid, p_objid oid,
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
            WHEN 'pg_collation'::regclass THEN 'collation'
            WHEN 'pg_ts_config'::regclass THEN 'text search configuration'
            WHEN 'pg_ts_dict'::regclass THEN 'text search dictionary'
            ELSE 'statistics' END,
        'classid', p_classid, 'keyword', k.keyword, 'oid', p_objid,
        'schema', k.nsp::regnamespace::text, 'schema_oid', k.nsp, 'name', k.name, 'qname', qn,
        'original', p_original));
END $$;

CREATE OR REPLACE FUNCTION softguard._name_taken(p_class text, nsp oid, name text, p_objid oid)
RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE p_class
        WHEN 'routine' THEN EXISTS (
            SELECT FROM pg_proc p, pg_proc me
             WHERE me.oid = p_objid AND p.pronamespace = nsp AND p.proname = name
               AND p.proargtypes = me.proargtypes AND p.oid <> p_objid)
        WHEN 'statistics' THEN EXISTS (
            SELECT FROM pg_statistic_ext s WHERE s.stxnamespace = nsp AND s.stxname = name)
        WHEN 'collation' THEN EXISTS (   -- any encoding's: the strictest reading
            SELECT FROM pg_collation c
             WHERE c.collnamespace = nsp AND c.collname = name AND c.oid <> p_objid)
        WHEN 'text search configuration' THEN EXISTS (
            SELECT FROM pg_ts_config c WHERE c.cfgnamespace = nsp AND c.cfgname = name)
        WHEN 'text search dictionary' THEN EXISTS (
            SELECT FROM pg_ts_dict d WHERE d.dictnamespace = nsp AND d.dictname = name)
        ELSE EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = nsp AND c.relname = name)
          OR EXISTS (SELECT FROM pg_type t WHERE t.typnamespace = nsp AND t.typname = name)
    END
$$;

-- (FUNCTION softguard._undo_one: defined above)

CREATE OR REPLACE FUNCTION softguard._held_objects(op bigint)
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
    SELECT 'pg_collation'::regclass::oid, c.oid, 'COLLATION',
           format('%I.%I', 'softguard_quarantine', c.collname)
      FROM pg_collation c
     WHERE c.collnamespace = 'softguard_quarantine'::regnamespace
       AND c.collname ~ ('^op' || op || '_')
    UNION ALL
    SELECT 'pg_ts_config'::regclass::oid, c.oid, 'TEXT SEARCH CONFIGURATION',
           format('%I.%I', 'softguard_quarantine', c.cfgname)
      FROM pg_ts_config c
     WHERE c.cfgnamespace = 'softguard_quarantine'::regnamespace
       AND c.cfgname ~ ('^op' || op || '_')
    UNION ALL
    SELECT 'pg_ts_dict'::regclass::oid, d.oid, 'TEXT SEARCH DICTIONARY',
           format('%I.%I', 'softguard_quarantine', d.dictname)
      FROM pg_ts_dict d
     WHERE d.dictnamespace = 'softguard_quarantine'::regnamespace
       AND d.dictname ~ ('^op' || op || '_')
    UNION ALL
    SELECT 'pg_namespace'::regclass::oid, n.oid, 'SCHEMA', quote_ident(n.nspname)
      FROM pg_namespace n
     WHERE n.nspname ~ ('^softguard_q' || op || '_')
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
