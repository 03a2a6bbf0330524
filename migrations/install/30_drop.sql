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

-- The rows of softguard._list(list) kept as JSON (`items`: jsonb_agg of to_jsonb of each
-- row), as _quarantine reads them once and queries them a dozen times (decision 0041).
-- Plain SQL without a SET, every name qualified: PostgreSQL inlines it into each query,
-- where a call of _list ran its catalog lookups again each time.
CREATE FUNCTION softguard._listed(items jsonb)
RETURNS TABLE (classid oid, objid oid, objsubid integer, original boolean, normal boolean,
               is_temporary boolean, object_type text, schema_name text, object_name text,
               object_identity text, ord integer, owned boolean, home text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT l.* FROM pg_catalog.jsonb_to_recordset(items) AS l(
        classid pg_catalog.oid, objid pg_catalog.oid, objsubid pg_catalog.int4,
        original pg_catalog.bool, normal pg_catalog.bool, is_temporary pg_catalog.bool,
        object_type pg_catalog.text, schema_name pg_catalog.text, object_name pg_catalog.text,
        object_identity pg_catalog.text, ord pg_catalog.int4, owned pg_catalog.bool,
        home pg_catalog.text)
$$;
REVOKE ALL ON FUNCTION softguard._listed(jsonb) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Quarantine: move what the probed DROP would remove, record the restore plan and the
-- operation. SECURITY DEFINER (the installing superuser): the caller has no rights on the
-- quarantine or the ledger. EXECUTE is PUBLIC because drop_op runs as the caller; so no
-- input is trusted: the session user must be able to drop every target itself, and every
-- other listed object must depend on a listed object, as PostgreSQL's cascade does (called
-- directly, it then really moves what the caller could have dropped: work done, recorded);
-- the recorded role (invoker) must be one the session user is a member of; the kind
-- (ctx action) a DROP; an empty list records nothing (verify_operation refuses the commit).
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
--   {"step": "publications", "tables": [...], "schemas": [...]}  (_publications_step)
--   {"step": "user_mapping", "server", "server_name", "user_oid" (0: PUBLIC), "user"}
--    (_keep_mappings: the options are in softguard.kept_mappings, not here)
--   {"step": "owner", "classid", "oid", "keyword", "grant_keyword", "identity", "owner",
--    "owner_oid", "owner_changed", "acl": [{"grantee", "grantee_oid", "privilege",
--    "grantable", "column"}], "exact": {"" or column: the ACL as it was},
--    "policies", "default_acls" (_untie)}
--    (_disown: a kept object belongs to softguard while it is kept)
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
    cols jsonb := '[]';     -- columns of live tables it takes (a type's CASCADE): kept
    stubbed oid[] := '{}';  -- views reading such a column: moved before the columns go (3a)
    readers jsonb;          -- views and materialized views reading one (_column_readers)
    in_schema jsonb := '[]'; -- relations staying in a dropped schema (step 5)
    remade oid[] := '{}';   -- materialized views reading one: recorded, dropped, re-made (3a)
    kw text;
    qn text;
    acl jsonb;
    expires timestamptz;
    targets text;
    is_super boolean;
    held jsonb;             -- 'classid/objid/objsubid' -> the earlier operation holding it
    reg softguard.sessions := softguard._session(true);
    items jsonb;            -- softguard._list(list), read once (_listed)
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
    --    Every step reads the list's rows (_list) as they are now, before anything moves:
    --    read once, each query expands them (decision 0041).
    items := coalesce((SELECT jsonb_agg(to_jsonb(l) ORDER BY l.ord)
                         FROM softguard._list(list) l), '[]');
    FOR r IN SELECT * FROM softguard._listed(items) l WHERE l.original LOOP
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
        SELECT FROM softguard._listed(items) l
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
      FROM softguard._listed(items) l
     WHERE coalesce(softguard._is_quarantine_schema(l.home), false);
    SELECT coalesce(array_agg(l.object_name), '{}') INTO dropped_schemas
      FROM softguard._listed(items) l WHERE l.object_type = 'schema';
    SELECT coalesce(array_agg(l.objid), '{}') INTO going
      FROM softguard._listed(items) l
     WHERE l.classid = 'pg_class'::regclass AND l.objsubid = 0
       AND NOT coalesce(softguard._is_quarantine_schema(l.home), false);

    -- 1b. Publications (decision 0038): what goes leaves them as after a direct DROP.
    --     First in the plan, so that undo adds the memberships back last, with every
    --     table, column and schema in place again. Those of a kept column: _keep_column.
    steps := steps || softguard._publications_step(going, ARRAY(
        SELECT l.objid FROM softguard._listed(items) l
         WHERE l.object_type = 'schema'
           AND NOT coalesce(softguard._is_quarantine_schema(l.home), false)));

    -- 2. Classify: what moves, what is a link to record and drop, what cannot be kept.
    FOR r IN SELECT * FROM softguard._listed(items) l ORDER BY l.ord LOOP
        CONTINUE WHEN coalesce(softguard._is_quarantine_schema(r.home), false);  -- held already
        CONTINUE WHEN r.object_type = 'schema';
        IF r.home = ANY (dropped_schemas) THEN                 -- stays in its renamed schema
            IF r.classid = 'pg_class'::regclass AND r.objsubid = 0 THEN
                in_schema := in_schema || jsonb_build_array(to_jsonb(r));  -- unless it reads
            END IF;                                                        -- a kept column
            CONTINUE;
        END IF;
        -- a column goes with its listed table or view (`owned` would also count a
        -- partition's column, whose table depends on its listed parent's)
        CONTINUE WHEN r.objsubid <> 0
                  AND EXISTS (SELECT FROM softguard._listed(items) t
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
        -- a membership in a publication: left with its table or schema (1b), or with
        -- the kept column its column list or row filter uses (_keep_column, 3b)
        CONTINUE WHEN r.object_type IN ('publication relation', 'publication namespace')
                  AND (EXISTS (SELECT FROM jsonb_array_elements(steps) st,
                                    jsonb_array_elements((st->'tables') || (st->'schemas')) m
                                WHERE st->>'step' = 'publications'
                                  AND (m->>'member')::oid = r.objid)
                       OR EXISTS (SELECT FROM pg_publication_rel pr
                                    JOIN softguard._listed(items) k ON k.objid = pr.prrelid
                                   WHERE pr.oid = r.objid AND k.object_type = 'table column'));
        CONTINUE WHEN r.owned;                                   -- goes with its owner
        -- a user mapping goes with its server, kept by a rename (_move): recorded and
        -- dropped (_keep_mappings, step 6), or left on it when it cannot be (decision 0043)
        CONTINUE WHEN r.object_type = 'user mapping'
                  -- (the view: pg_user_mapping is superuser-only, the ledger owner may not be)
                  AND EXISTS (SELECT FROM pg_user_mappings um
                                JOIN softguard._listed(items) sv
                                  ON sv.classid = 'pg_foreign_server'::regclass
                                 AND sv.objid = um.srvid
                               WHERE um.umid = r.objid);
        CASE
            WHEN r.object_type IN ('sequence', 'function', 'procedure', 'aggregate', 'type',
                                   'domain', 'collation', 'text search configuration',
                                   'text search dictionary', 'operator',
                                   'operator family', 'server', 'language') THEN
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

    -- What reads a kept column (decision 0029 and its "Since then"): views move into
    -- quarantine with their query set aside, materialized views are recorded and dropped
    -- (3a, decision 0035), also when they stood in a schema the statement drops (they
    -- then leave it for quarantine, or are re-made in it, instead of staying in it
    -- renamed); rules are links like any other (3). Any other rule reading one (a view an
    -- earlier operation holds) would still hold the column: not kept.
    readers := CASE WHEN cols = '[]' THEN '[]'   -- no kept column: nothing reads one
                    ELSE softguard._column_readers(cols, list) END;
    moves := moves || coalesce((SELECT jsonb_agg(e) FROM jsonb_array_elements(in_schema) e
                                 WHERE softguard._is_reader(readers, (e->>'objid')::oid, NULL)),
                         '[]');
    SELECT w.ev_class, w.rulename, k.object_identity INTO x
      FROM jsonb_to_recordset(cols) AS k(objid oid, objsubid integer, object_identity text)
      JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = k.objid
                      AND d.refobjsubid = k.objsubid AND d.classid = 'pg_rewrite'::regclass
      JOIN pg_rewrite w ON w.oid = d.objid
     WHERE NOT (w.rulename = '_RETURN' AND softguard._is_reader(readers, w.ev_class, NULL))
       AND NOT (w.rulename <> '_RETURN'
                AND EXISTS (SELECT FROM jsonb_to_recordset(links) AS l(classid oid, objid oid)
                             WHERE l.classid = 'pg_rewrite'::regclass AND l.objid = w.oid))
     ORDER BY 1, 2 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard cannot keep %s, which reads column %s (dropped by '
                             'this statement)', CASE WHEN x.rulename = '_RETURN'
                                 THEN (SELECT CASE c.relkind WHEN 'm' THEN 'materialized view '
                                              ELSE 'view ' END FROM pg_class c
                                        WHERE c.oid = x.ev_class) || x.ev_class::regclass::text
                                 ELSE format('rule %I on %s', x.rulename, x.ev_class::regclass) END,
                             x.object_identity),
            HINT = 'An earlier operation keeps it: undo or purge that one first, or run the '
                   'statement without softguard if losing it is intended.';
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

    -- 3a. What reads a kept column, each before what it reads (so that undo gives back
    --     each after what it reads: a view's query needs the materialized views it reads
    --     re-made, a materialized view needs the views it reads back in place):
    --   - views (decision 0029, since then): moved into quarantine now, as step 6 moves
    --     the others, and their query set aside (_stub_view) so that the column can go;
    --     undo puts the query back once the columns are back. Views on them that the
    --     CASCADE takes move in step 6, their columns unchanged.
    --   - materialized views (decision 0035): PostgreSQL cannot replace their query, so
    --     the definition, storage, indexes, comments, owner and privileges are recorded
    --     and they are dropped; undo re-makes them after the columns, and refreshes those
    --     that were populated (as their owner, as REFRESH runs).
    FOR r IN SELECT e.classid, e.objid, e.original, v.relkind
               FROM jsonb_to_recordset(readers) AS v(oid oid, relkind "char", depth integer)
               JOIN jsonb_to_recordset(moves) AS e(classid oid, objid oid, original boolean,
                                                   ord integer)
                 ON e.classid = 'pg_class'::regclass AND e.objid = v.oid
              ORDER BY v.depth DESC, e.ord LOOP
        IF r.relkind = 'v' THEN
            n := n + 1;
            qn := r.objid::regclass::text;    -- its name before the move, for undo's messages
            steps := steps || softguard._move(op_id, n, r.classid, r.objid, r.original)
                           || softguard._without_deps(softguard._stub_view(r.objid, qn), readers)
                           || softguard._disown(r.classid, r.objid);
            stubbed := stubbed || r.objid;
            CONTINUE;
        END IF;
        steps := steps || softguard._remake_step(op_id, r.objid, readers);
        UPDATE softguard.operations o SET restore = steps WHERE o.id = op_id;  -- the backstop's mark
        BEGIN
            EXECUTE format('DROP MATERIALIZED VIEW %s', r.objid::regclass);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            -- something else uses it (a routine or a column of its row type): not kept yet
            GET STACKED DIAGNOSTICS qn = PG_EXCEPTION_DETAIL;
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('softguard cannot yet keep materialized view %s, which reads '
                                 'a column dropped by this statement: %s', r.objid::regclass, qn),
                HINT = 'Drop what uses it first (through softguard, which keeps it), then run '
                       'this statement again.';
        END;
        remade := remade || r.objid;
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
    FOR r IN SELECT * FROM softguard._listed(items) l WHERE l.object_type = 'schema' ORDER BY l.ord LOOP
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
        CONTINUE WHEN r.classid = 'pg_class'::regclass
                  AND (r.objid = ANY (stubbed) OR r.objid = ANY (remade));      -- 3a
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
        IF r.classid = 'pg_opfamily'::regclass THEN
            -- its operator classes go with it (and its operators and support functions,
            -- which are entries of the family): moved along, so that their names are free
            -- as after the DROP (decision 0036)
            FOR own IN SELECT c.oid FROM pg_opclass c WHERE c.opcfamily = r.objid ORDER BY 1 LOOP
                n := n + 1;
                steps := steps || softguard._move(op_id, n, 'pg_opclass'::regclass, own, false)
                               || softguard._disown('pg_opclass'::regclass, own);
            END LOOP;
        END IF;
        IF r.classid = 'pg_foreign_server'::regclass THEN
            -- its user mappings go as directly, recorded (decision 0043), before the rename
            steps := steps || softguard._keep_mappings(op_id, r.objid);
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
      FROM softguard._listed(items) l WHERE l.original;
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
              FROM softguard._listed(items) l,
                   LATERAL (SELECT (held->>format('%s/%s/%s', l.classid, l.objid, l.objsubid))::bigint
                                   AS held_by) h),
        row_counts = jsonb_build_object('estimate', true, 'tables', (
            SELECT coalesce(jsonb_object_agg(l.object_identity,
                       CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END), '{}')
              FROM softguard._listed(items) l JOIN pg_class c ON c.oid = l.objid
             WHERE l.classid = 'pg_class'::regclass AND l.objsubid = 0
               AND c.relkind IN ('r', 'm')
               AND NOT held ? format('%s/%s/%s', l.classid, l.objid, l.objsubid)))
     WHERE o.id = op_id;

    RETURN softguard._op_notice(coalesce(ctx->>'action', 'DROP'), targets, op_id, expires);
END $$;
REVOKE ALL ON FUNCTION softguard._quarantine(jsonb, text, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._quarantine(jsonb, text, jsonb, text) TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Publication memberships a DROP takes (decision 0038). PostgreSQL takes a table out of
-- every publication that lists it (pg_publication_rel) when the table goes, or when a
-- column of its column list or row filter goes (a CASCADE), and a schema out of every
-- FOR TABLES IN SCHEMA publication (pg_publication_namespace). A kept table or schema
-- would stay a member (membership is by oid): pg_publication_tables, which every role
-- reads, would list it under its kept name, as would a subscriber's refresh. So
-- each membership is recorded, then removed with ALTER PUBLICATION as a direct DROP
-- removes it; undo adds it back (_rejoin_publications). Recorded by name and text (the
-- column list, the row filter as pg_get_expr gives it, every name qualified), never by
-- attnum: a kept column comes back as the last of its table. A publication FOR ALL
-- TABLES has no membership rows: a kept table stays in it (README limits).
-- Not PUBLIC: the callers (SECURITY DEFINER) check that the DROP may take the object.
-- ---------------------------------------------------------------------------------------

-- The memberships of table `rel` (all of them when attnum is NULL, else those whose
-- column list or row filter uses column attnum): recorded, then removed. Returns
-- [{"member" (its pg_publication_rel oid), "pub", "pub_name", "pub_owner", "table",
--   "table_name", "columns", "filter"}].
CREATE FUNCTION softguard._leave_publications(rel oid, attnum integer) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kept jsonb := '[]';
    x record;
BEGIN
    FOR x IN SELECT pr.oid AS member, p.oid, p.pubname, p.pubowner,
                    (SELECT jsonb_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
                      WHERE a.attrelid = pr.prrelid
                        AND a.attnum = ANY (pr.prattrs::smallint[])) AS cols,
                    pg_get_expr(pr.prqual, pr.prrelid) AS filter
               FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
              WHERE pr.prrelid = rel
                AND (attnum IS NULL
                     OR EXISTS (SELECT FROM pg_depend d
                                 WHERE d.classid = 'pg_publication_rel'::regclass
                                   AND d.objid = pr.oid AND d.refclassid = 'pg_class'::regclass
                                   AND d.refobjid = rel AND d.refobjsubid = attnum))
              ORDER BY p.pubname LOOP
        kept := kept || jsonb_build_array(jsonb_build_object(
            'member', x.member, 'pub', x.oid, 'pub_name', x.pubname, 'pub_owner', x.pubowner,
            'table', rel, 'table_name', rel::regclass::text, 'columns', x.cols,
            'filter', x.filter));
        EXECUTE format('ALTER PUBLICATION %I DROP TABLE ONLY %s', x.pubname, rel::regclass);
    END LOOP;
    RETURN kept;
END $$;
REVOKE ALL ON FUNCTION softguard._leave_publications(oid, integer) FROM PUBLIC;

-- The restore step of what a DROP takes from publications: the memberships of the
-- tables in `rels` and of the schemas in `nsps`, recorded and removed. Returns [] when
-- there are none, else [{"step": "publications", "tables": [...], "schemas":
-- [{"member" (its pg_publication_namespace oid), "pub", "pub_name", "pub_owner", "schema",
--   "schema_name"}]}].
CREATE FUNCTION softguard._publications_step(rels oid[], nsps oid[]) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tables jsonb := '[]';
    schemas jsonb := '[]';
    rel oid;
    x record;
BEGIN
    FOREACH rel IN ARRAY coalesce(rels, '{}') LOOP
        tables := tables || softguard._leave_publications(rel, NULL);
    END LOOP;
    FOR x IN SELECT pn.oid AS member, p.oid, p.pubname, p.pubowner, n.oid AS nsp, n.nspname
               FROM pg_publication_namespace pn JOIN pg_publication p ON p.oid = pn.pnpubid
               JOIN pg_namespace n ON n.oid = pn.pnnspid
              WHERE pn.pnnspid = ANY (coalesce(nsps, '{}'))
              ORDER BY n.nspname, p.pubname LOOP
        schemas := schemas || jsonb_build_array(jsonb_build_object(
            'member', x.member, 'pub', x.oid, 'pub_name', x.pubname, 'pub_owner', x.pubowner,
            'schema', x.nsp, 'schema_name', x.nspname));
        EXECUTE format('ALTER PUBLICATION %I DROP TABLES IN SCHEMA %I', x.pubname, x.nspname);
    END LOOP;
    IF tables = '[]' AND schemas = '[]' THEN
        RETURN '[]';
    END IF;
    RETURN jsonb_build_array(jsonb_build_object('step', 'publications', 'tables', tables,
                                                'schemas', schemas));
END $$;
REVOKE ALL ON FUNCTION softguard._publications_step(oid[], oid[]) FROM PUBLIC;

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

-- Whether a link (an index, constraint, default, ...) goes with one of the kept columns
-- `cols` (list entries): it depends on one automatically or internally, or is the index of
-- a constraint that does. Its column's DROP COLUMN removes it and _keep_column records it.
CREATE FUNCTION softguard._with_columns(p_classid oid, p_objid oid, cols jsonb) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH k AS (SELECT * FROM jsonb_to_recordset(cols) AS k(objid oid, objsubid integer))
    SELECT EXISTS (SELECT FROM pg_depend d JOIN k ON d.refclassid = 'pg_class'::regclass
                                                 AND d.refobjid = k.objid AND d.refobjsubid = k.objsubid
                    WHERE d.classid = p_classid AND d.objid = p_objid AND d.deptype IN ('a', 'i'))
        OR EXISTS (SELECT FROM pg_depend d JOIN pg_constraint c ON c.oid = d.refobjid
                     JOIN k ON c.conrelid = k.objid AND k.objsubid = ANY (c.conkey)
                    WHERE d.classid = p_classid AND d.objid = p_objid AND d.deptype = 'i'
                      AND d.refclassid = 'pg_constraint'::regclass)
$$;
REVOKE ALL ON FUNCTION softguard._with_columns(oid, oid, jsonb) FROM PUBLIC;

-- The kept columns `cols` (list entries) in the order they are kept: parents before their
-- partitions and inheritance children (whose column comes back with the parent's),
-- generated columns after the columns they are computed from. Dropped in the order of
-- `drop_ord`: parents first, a generated column before what it is computed from (which
-- it depends on).
CREATE FUNCTION softguard._kept_order(cols jsonb)
RETURNS TABLE (objid oid, objsubid integer, object_identity text, drop_ord bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT k.objid, k.objsubid, k.object_identity,
           row_number() OVER (ORDER BY k.depth, k.objid, k.generated DESC, k.objsubid)
      FROM (SELECT k.*, a.attgenerated <> '' AS generated,
                   (WITH RECURSIVE up(r, depth) AS (
                        SELECT k.objid, 0
                        UNION ALL
                        SELECT i.inhparent, up.depth + 1 FROM pg_inherits i JOIN up ON i.inhrelid = up.r
                         WHERE up.depth < 100)
                    SELECT max(up.depth) FROM up) AS depth
              FROM jsonb_to_recordset(cols) AS k(objid oid, objsubid integer, object_identity text)
              JOIN pg_attribute a ON a.attrelid = k.objid AND a.attnum = k.objsubid) k
     ORDER BY k.depth, k.objid, k.generated, k.objsubid
$$;
REVOKE ALL ON FUNCTION softguard._kept_order(jsonb) FROM PUBLIC;

-- The views and materialized views that `list` (a DROP's list) takes because their query
-- reads one of the kept columns `cols` (list entries), or reads a materialized view that
-- does (dropped and re-made at undo, so what reads it must let it go too); not those an
-- earlier operation holds. [{oid, relkind, depth}]: depth, the longest chain of these
-- that it reads through (0: it reads none of them). _quarantine keeps them deepest first,
-- so that undo gives back each after what it reads.
CREATE FUNCTION softguard._column_readers(cols jsonb, list jsonb) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE r(oid, relkind) AS (
        SELECT w.ev_class, c.relkind
          FROM jsonb_to_recordset(cols) AS k(objid oid, objsubid integer)
          JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = k.objid
                          AND d.refobjsubid = k.objsubid AND d.classid = 'pg_rewrite'::regclass
          JOIN pg_rewrite w ON w.oid = d.objid AND w.rulename = '_RETURN'
          JOIN pg_class c ON c.oid = w.ev_class AND c.relkind IN ('v', 'm')
        UNION
        SELECT w.ev_class, c.relkind
          FROM r
          JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = r.oid
                          AND d.classid = 'pg_rewrite'::regclass
          JOIN pg_rewrite w ON w.oid = d.objid AND w.rulename = '_RETURN'
                           AND w.ev_class <> r.oid
          JOIN pg_class c ON c.oid = w.ev_class AND c.relkind IN ('v', 'm')
         WHERE r.relkind = 'm'
    ),
    kept AS (
        SELECT r.oid, r.relkind FROM r
          JOIN pg_class c ON c.oid = r.oid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT softguard._is_quarantine_schema(n.nspname)
           AND EXISTS (SELECT FROM jsonb_to_recordset(list) AS l(classid oid, objid oid,
                                                                 objsubid integer)
                        WHERE l.classid = 'pg_class'::regclass AND l.objid = r.oid
                          AND l.objsubid = 0)
    ),
    reads AS (  -- x reads y, both kept here
        SELECT DISTINCT w.ev_class AS x, d.refobjid AS y
          FROM kept
          JOIN pg_rewrite w ON w.ev_class = kept.oid AND w.rulename = '_RETURN'
          JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid
                          AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> kept.oid
         WHERE d.refobjid IN (SELECT oid FROM kept)
    ),
    h(oid, depth) AS (
        SELECT kept.oid, 0 FROM kept
        UNION
        SELECT reads.x, h.depth + 1 FROM h JOIN reads ON reads.y = h.oid WHERE h.depth < 100
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object('oid', kept.oid, 'relkind', kept.relkind,
                                                 'depth', (SELECT max(h.depth) FROM h
                                                            WHERE h.oid = kept.oid))
                              ORDER BY kept.oid), '[]')
      FROM kept
$$;
REVOKE ALL ON FUNCTION softguard._column_readers(jsonb, jsonb) FROM PUBLIC;

-- Whether `rel` is among `readers` (_column_readers), of kind `kind` when not NULL.
CREATE FUNCTION softguard._is_reader(readers jsonb, rel oid, kind "char") RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM jsonb_to_recordset(readers) AS r(oid oid, relkind "char")
                    WHERE r.oid = rel AND (kind IS NULL OR r.relkind = kind))
$$;
REVOKE ALL ON FUNCTION softguard._is_reader(jsonb, oid, "char") FROM PUBLIC;

-- `steps` without the dependencies on the materialized views among `readers`
-- (_column_readers): they are dropped and re-made, under another oid, before the steps
-- that needed them are undone.
CREATE FUNCTION softguard._without_deps(steps jsonb, readers jsonb) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_agg(CASE WHEN s ? 'deps' THEN jsonb_set(s, '{deps}', (
                   SELECT coalesce(jsonb_agg(e ORDER BY i), '[]')
                     FROM jsonb_array_elements(s->'deps') WITH ORDINALITY AS t(e, i)
                    WHERE NOT (e->>'classid' = 'pg_class'::regclass::oid::text
                               AND softguard._is_reader(readers, (e->>'objid')::oid, 'm'))))
                              ELSE s END ORDER BY o), '[]')
      FROM jsonb_array_elements(steps) WITH ORDINALITY AS x(s, o)
$$;
REVOKE ALL ON FUNCTION softguard._without_deps(jsonb, jsonb) FROM PUBLIC;

-- Record what re-makes a materialized view that reads a kept column (decision 0035):
-- its query (qualified names), access method, options, tablespace, whether it was
-- populated, its columns' comments, statistics targets, storage and compression, its
-- comment, indexes (clustered one), statistics objects, owner and privileges (_disown,
-- which also gives it to softguard_keeper until it is dropped) and what the query used
-- (`deps`, checked live at undo). Returns [step]; 70_undo.sql ('remake_matview') re-makes it.
CREATE FUNCTION softguard._remake_step(op_id bigint, rel oid, readers jsonb) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    step jsonb;
BEGIN
    SELECT jsonb_build_object(
               'step', 'remake_matview', 'oid', c.oid, 'name', c.oid::regclass::text,
               'schema', n.nspname, 'schema_oid', n.oid, 'relname', c.relname,
               'def', regexp_replace(pg_get_viewdef(c.oid), ';\s*$', ''),
               'am', am.amname, 'options', to_jsonb(c.reloptions), 'tablespace', ts.spcname,
               'populated', c.relispopulated,
               'comment', obj_description(c.oid, 'pg_class'),
               'columns', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                  'name', a.attname,
                                  'comment', col_description(c.oid, a.attnum),
                                  'stattarget', CASE WHEN a.attstattarget >= 0
                                                     THEN a.attstattarget END,
                                  'storage', CASE WHEN a.attstorage <> t.typstorage
                                                  THEN a.attstorage END,
                                  'compression', nullif(a.attcompression, ''))
                                  ORDER BY a.attnum), '[]')
                             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
               'indexes', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                  'name', ic.relname, 'def', pg_get_indexdef(i.indexrelid),
                                  'clustered', i.indisclustered,
                                  'comment', obj_description(i.indexrelid, 'pg_class'))
                                  ORDER BY i.indexrelid), '[]')
                             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                            WHERE i.indrelid = c.oid),
               'statistics', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                  'name', format('%I.%I', sn.nspname, st.stxname),
                                  'def', pg_get_statisticsobjdef(st.oid),
                                  'owner', st.stxowner::regrole::text,
                                  'comment', obj_description(st.oid, 'pg_statistic_ext'))
                                  ORDER BY st.oid), '[]')
                             FROM pg_statistic_ext st
                             JOIN pg_namespace sn ON sn.oid = st.stxnamespace
                            WHERE st.stxrelid = c.oid),
               'deps', (SELECT coalesce(jsonb_agg(e), '[]')
                          FROM pg_rewrite w,
                               jsonb_array_elements(softguard._deps('pg_rewrite'::regclass, w.oid)) e
                         WHERE w.ev_class = c.oid AND w.rulename = '_RETURN'
                           AND NOT (e->>'classid' = 'pg_class'::regclass::oid::text
                                    AND (e->>'objid' = c.oid::text
                                         OR softguard._is_reader(readers, (e->>'objid')::oid,
                                                                 'm')))))
      INTO step
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_am am ON am.oid = c.relam
      LEFT JOIN pg_tablespace ts ON ts.oid = c.reltablespace
     WHERE c.oid = rel AND c.relkind = 'm';
    IF step IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'XX000',
            MESSAGE = format('softguard: %s is not a materialized view', rel);
    END IF;
    RETURN jsonb_build_array(step || jsonb_build_object(
        'owner', softguard._disown('pg_class'::regclass, rel)));
END $$;
REVOKE ALL ON FUNCTION softguard._remake_step(bigint, oid, jsonb) FROM PUBLIC;

-- Set a kept view's query aside: replace it (in quarantine already, so no CREATE OR
-- REPLACE VIEW operation is recorded) by one of the same columns, types and collations
-- that reads nothing, so that it no longer holds the columns, tables and functions it
-- read. Owner, privileges, comments, column defaults, triggers and rules on the view
-- stay; the options (security_barrier, check_option, ...) are replaced with the query,
-- so they are recorded with it, and so is what the query used (`deps`: undo first checks
-- that each is live again, or names the operation holding it). Returns [step]; undo
-- (70_undo.sql, 'view_query') puts both back.
CREATE FUNCTION softguard._stub_view(rel oid, view_name text) RETURNS jsonb
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

-- Drop a column _quarantine kept (_keep_column), unless its parent's DROP COLUMN took it
-- already. Without CASCADE: anything else that still needs it fails the statement. The
-- backstop (85_backstop.sql) lets this EXECUTE drop a column its transaction kept.
CREATE FUNCTION softguard._drop_kept_column(rel oid, attnum integer) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col name;
BEGIN
    SELECT a.attname INTO col FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attnum = _drop_kept_column.attnum AND NOT a.attisdropped;
    IF FOUND THEN
        EXECUTE format('ALTER TABLE %s DROP COLUMN %I', rel::regclass, col);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._drop_kept_column(oid, integer) FROM PUBLIC;

-- Rename an object to op<id>_<n>_<name> and move it into softguard_quarantine. Returns [step].
-- An operator cannot be renamed (decision 0036): it moves under its own name into a schema
-- of its own, softguard_q<id>_pg_<n> (`qname` of its step), which names the operation
-- holding it as a DROP SCHEMA's renamed schemas do; no renamed schema can have that name
-- (PostgreSQL reserves the prefix pg_ for schema names). Purge drops that schema.
-- A foreign server or a language is in no schema: it is renamed softguard_q<id>_<name>,
-- which names the operation holding it as a renamed schema's name does (_holder reads its
-- identity, the bare name), and stays where it is; `schema` of its step is NULL.
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
    IF p_classid = 'pg_operator'::regclass THEN
        qn := format('softguard_q%s_pg_%s', op_id, n);
        EXECUTE format('CREATE SCHEMA %I', qn);   -- no privilege for anyone but its owner
        -- what a non-superuser gives a role must be where that role may create (_disown)
        EXECUTE format('GRANT CREATE ON SCHEMA %I TO softguard_keeper', qn);
        EXECUTE format('ALTER OPERATOR %s SET SCHEMA %I', k.ident, qn);
    ELSIF p_classid IN ('pg_foreign_server'::regclass, 'pg_language'::regclass) THEN
        qn := softguard._qname(format('softguard_q%s_', op_id), k.name);
        EXECUTE format('ALTER %s %s RENAME TO %I', k.keyword, k.ident, qn);
    ELSE
        qn := softguard._qname(format('op%s_%s_', op_id, n), k.name);
        EXECUTE format('ALTER %s %s RENAME TO %I', k.keyword, k.ident, qn);
        k.ident := (softguard._kw(p_classid, p_objid)).ident;
        EXECUTE format('ALTER %s %s SET SCHEMA softguard_quarantine', k.keyword, k.ident);
    END IF;
    RETURN jsonb_build_array(jsonb_build_object(
        'step', 'move', 'class', CASE p_classid WHEN 'pg_class'::regclass THEN 'relation'
            WHEN 'pg_proc'::regclass THEN 'routine' WHEN 'pg_type'::regclass THEN 'type'
            WHEN 'pg_collation'::regclass THEN 'collation'
            WHEN 'pg_ts_config'::regclass THEN 'text search configuration'
            WHEN 'pg_ts_dict'::regclass THEN 'text search dictionary'
            WHEN 'pg_operator'::regclass THEN 'operator'
            WHEN 'pg_opfamily'::regclass THEN 'operator family'
            WHEN 'pg_opclass'::regclass THEN 'operator class'
            WHEN 'pg_foreign_server'::regclass THEN 'server'
            WHEN 'pg_language'::regclass THEN 'language'
            ELSE 'statistics' END,
        'classid', p_classid, 'keyword', k.keyword, 'oid', p_objid,
        'schema', k.nsp::regnamespace::text, 'schema_oid', k.nsp, 'name', k.name, 'qname', qn,
        'original', p_original));
END $$;
REVOKE ALL ON FUNCTION softguard._move(bigint, integer, oid, oid, boolean) FROM PUBLIC;

-- The role kept objects belong to (_disown): a role with no privileges and no login, so
-- that what PostgreSQL runs as a table's owner (ANALYZE of an expression index, whose
-- function its former owner can still replace) runs with no rights, never as the
-- installing superuser. Cluster-wide, shared by every protected database; the installer
-- must be a member to give it objects (a superuser need not be).
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
-- what a non-superuser gives a role must be where that role may create
GRANT CREATE ON SCHEMA softguard_quarantine TO softguard_keeper;

-- The owner of any object whose catalog has an owner column (relowner, oprowner,
-- collowner, cfgowner, ...), found in pg_attribute: NULL for kinds without an owner
-- (text search parsers and templates).
CREATE FUNCTION softguard._catalog_owner(p_classid oid, p_objid oid) RETURNS oid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col name;
    own oid;
BEGIN
    SELECT a.attname INTO col FROM pg_attribute a
     WHERE a.attrelid = p_classid AND a.attnum > 0 AND a.attname ~ 'owner$'
       AND a.atttypid = 'oid'::regtype;
    IF col IS NOT NULL THEN
        EXECUTE format('SELECT %I FROM %s WHERE oid = $1', col, p_classid::regclass)
           INTO own USING p_objid;
    END IF;
    RETURN own;
END $$;
REVOKE ALL ON FUNCTION softguard._catalog_owner(oid, oid) FROM PUBLIC;

-- Every object with an owner in schema `nsp` but its relations, routines and types (which
-- _quarantine lists with the rules of who follows whom): statistics objects, operators,
-- operator classes and families, collations, conversions, text search configurations and
-- dictionaries, and any kind a later PostgreSQL adds. The kinds come from the catalogs
-- themselves (each system catalog with a *namespace and an *owner column), not from a
-- list kept here. Extensions are not objects in the schema (and a DROP that takes one is
-- not kept).
CREATE FUNCTION softguard._schema_objects(nsp oid) RETURNS TABLE (classid oid, objid oid)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cat record;
BEGIN
    FOR cat IN SELECT c.oid, n.attname AS nspcol
                 FROM pg_class c
                 JOIN pg_attribute n ON n.attrelid = c.oid AND n.attnum > 0
                                    AND n.attname ~ 'namespace$' AND n.atttypid = 'oid'::regtype
                WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r'
                  AND c.oid NOT IN ('pg_class'::regclass, 'pg_proc'::regclass,
                                    'pg_type'::regclass, 'pg_extension'::regclass)
                  AND EXISTS (SELECT FROM pg_attribute o
                               WHERE o.attrelid = c.oid AND o.attnum > 0
                                 AND o.attname ~ 'owner$' AND o.atttypid = 'oid'::regtype)
                ORDER BY c.oid LOOP
        RETURN QUERY EXECUTE format('SELECT %s::oid, x.oid FROM %s x WHERE x.%I = $1 ORDER BY 2',
                                    cat.oid, cat.oid::regclass, cat.nspcol) USING nsp;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._schema_objects(oid) FROM PUBLIC;

-- The ACLs of an object (col NULL) and of its columns (those that have one), with the
-- kind acldefault() takes for them. PL/pgSQL, one query per catalog: as one SQL UNION it
-- was planned again on each call (~0.3 ms per kept object, decision 0041).
CREATE FUNCTION softguard._acls(p_classid oid, p_objid oid)
RETURNS TABLE (col name, acl aclitem[], kind "char")
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_classid = 'pg_class'::regclass THEN
        RETURN QUERY
        SELECT NULL::name, c.relacl, CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char"
          FROM pg_class c WHERE c.oid = p_objid;
        RETURN QUERY
        SELECT t.attname, t.attacl, 'c'::"char" FROM pg_attribute t
         WHERE t.attrelid = p_objid AND t.attnum > 0 AND NOT t.attisdropped
           AND t.attacl IS NOT NULL;
    ELSIF p_classid = 'pg_proc'::regclass THEN
        RETURN QUERY SELECT NULL::name, p.proacl, 'f'::"char" FROM pg_proc p WHERE p.oid = p_objid;
    ELSIF p_classid = 'pg_type'::regclass THEN
        RETURN QUERY SELECT NULL::name, t.typacl, 'T'::"char" FROM pg_type t WHERE t.oid = p_objid;
    ELSIF p_classid = 'pg_namespace'::regclass THEN
        RETURN QUERY
        SELECT NULL::name, n.nspacl, 'n'::"char" FROM pg_namespace n WHERE n.oid = p_objid;
    ELSIF p_classid = 'pg_foreign_server'::regclass THEN
        RETURN QUERY
        SELECT NULL::name, s.srvacl, 'S'::"char" FROM pg_foreign_server s WHERE s.oid = p_objid;
    ELSIF p_classid = 'pg_language'::regclass THEN
        -- not an untrusted language's: only superusers use one, no GRANT there
        RETURN QUERY
        SELECT NULL::name, l.lanacl, 'l'::"char" FROM pg_language l
         WHERE l.oid = p_objid AND l.lanpltrusted;
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._acls(oid, oid) FROM PUBLIC;

-- What else ties roles to a kept object (pg_shdepend), so that DROP ROLE and DROP OWNED
-- BY would still reach into the quarantine: the roles a table's policies apply to, and a
-- schema's default privileges (for objects a role creates in it, granted to roles).
-- Removes them (a kept table's policies then apply to PUBLIC: no role but softguard's may
-- read the table anyway) and returns what undo (_retie) puts back:
--   {"policies": [{"name", "roles": [{"role", "oid"}]}],
--    "default_acls": [{"role", "role_oid", "objtype", "keyword",
--                      "acl": [{"grantee", "grantee_oid", "privilege", "grantable"}]}]}
-- A default ACL of a role the installer is not a member of (managed) stays as it is.
CREATE FUNCTION softguard._untie(p_classid oid, p_objid oid, ident text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pols jsonb := '[]';
    defacls jsonb := '[]';
    x record;
    g record;
BEGIN
    FOR x IN SELECT p.polname, p.polroles FROM pg_policy p
              WHERE p_classid = 'pg_class'::regclass AND p.polrelid = p_objid
                AND p.polroles <> '{0}' ORDER BY p.polname LOOP
        pols := pols || jsonb_build_array(jsonb_build_object('name', x.polname, 'roles',
            (SELECT jsonb_agg(jsonb_build_object(
                        'role', CASE WHEN r = 0 THEN 'PUBLIC' ELSE r::regrole::text END,
                        'oid', r) ORDER BY o)
               FROM unnest(x.polroles) WITH ORDINALITY AS u (r, o))));
        EXECUTE format('ALTER POLICY %I ON %s TO PUBLIC', x.polname, ident);
    END LOOP;
    FOR x IN SELECT d.defaclrole, d.defaclobjtype, d.defaclacl,
                    CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
                         WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' END AS keyword
               FROM pg_default_acl d
              WHERE p_classid = 'pg_namespace'::regclass AND d.defaclnamespace = p_objid
                AND pg_has_role(current_user, d.defaclrole, 'MEMBER')
              ORDER BY d.defaclrole, d.defaclobjtype LOOP
        defacls := defacls || jsonb_build_array(jsonb_build_object(
            'role', x.defaclrole::regrole::text, 'role_oid', x.defaclrole,
            'objtype', x.defaclobjtype, 'keyword', x.keyword,
            'acl', (SELECT jsonb_agg(jsonb_build_object(
                        'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                        ELSE a.grantee::regrole::text END,
                        'grantee_oid', a.grantee, 'privilege', a.privilege_type,
                        'grantable', a.is_grantable) ORDER BY a.grantee, a.privilege_type)
                      FROM aclexplode(x.defaclacl) a)));
        FOR g IN SELECT DISTINCT a.grantee FROM aclexplode(x.defaclacl) a LOOP
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %s REVOKE ALL ON %s '
                           'FROM %s CASCADE', x.defaclrole::regrole, ident, x.keyword,
                           CASE WHEN g.grantee = 0 THEN 'PUBLIC'
                                ELSE quote_ident(g.grantee::regrole::text) END);
        END LOOP;
    END LOOP;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'policies', nullif(pols, '[]'), 'default_acls', nullif(defacls, '[]')));
END $$;
REVOKE ALL ON FUNCTION softguard._untie(oid, oid, text) FROM PUBLIC;

-- A kept object belongs to softguard (role softguard_keeper) while it is kept, with no
-- privileges for any role or PUBLIC: so that the role that owned it, or a role it was
-- granted to, can be dropped (DROP ROLE, DROP OWNED BY and REASSIGN OWNED BY do not reach
-- into the quarantine, and their errors name no kept object), and so that no role finds
-- it in the information_schema (which lists what a role owns or has a privilege on).
-- Returns the steps that give both back at undo, this object's and those of the
-- sequences linked to a table ([] when there is nothing to give back). Objects that follow
-- another's owner (an index, an array type, a relation's row type, a sequence linked to a
-- table, a range's constructors) keep their owner; their privileges are taken all the same
-- where they have their own.
CREATE FUNCTION softguard._disown(p_classid oid, p_objid oid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    own oid := coalesce(softguard._owner(p_classid, p_objid),
                        softguard._catalog_owner(p_classid, p_objid));
    keeper oid := to_regrole('softguard_keeper');
    keyword text;
    ident text;
    grant_kw text;
    acl jsonb;
    exact jsonb;            -- each ACL as it was ('' the object's, else a column's)
    grantees text;
    follows boolean;
    movable boolean;        -- the owner goes to softguard_keeper
    linked oid;
    ties jsonb;             -- policies' roles, default privileges (_untie)
    steps jsonb := '[]';
BEGIN
    IF p_classid = 'pg_namespace'::regclass THEN
        SELECT 'SCHEMA', quote_ident(n.nspname) INTO keyword, ident
          FROM pg_namespace n WHERE n.oid = p_objid;
    ELSE
        SELECT k.keyword, k.ident INTO keyword, ident FROM softguard._kw(p_classid, p_objid) k;
    END IF;
    IF keyword IS NULL THEN  -- an operator, a collation, ...: ALTER <its type> <identity>
        SELECT upper(i.type), i.identity INTO keyword, ident
          FROM pg_identify_object(p_classid, p_objid, 0) i;
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
    -- a sequence linked to a table, a range's constructor: their owner follows (not a
    -- statistics object's, nor an operator class's, though they depend on a table or a
    -- family: ALTER TABLE / OPERATOR FAMILY ... OWNER leaves them to their owner)
    follows := (p_classid = 'pg_class'::regclass AND EXISTS (
                    SELECT FROM pg_depend d WHERE d.classid = p_classid AND d.objid = p_objid
                       AND d.deptype IN ('a', 'i') AND d.refclassid <> 'pg_type'::regclass))
               OR (p_classid = 'pg_proc'::regclass AND EXISTS (
                       SELECT FROM pg_depend d WHERE d.classid = p_classid AND d.objid = p_objid
                          AND d.deptype = 'i'));
    -- PostgreSQL lets a non-superuser give a foreign server only to a role that may use
    -- its wrapper: where softguard_keeper may not (a managed install), the kept server
    -- keeps its owner, tied to it until undo or purge (README limits), rather than the
    -- DROP failing where a direct one succeeds.
    movable := NOT follows AND own <> keeper
               AND (p_classid <> 'pg_foreign_server'::regclass
                    OR (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user)
                    OR has_foreign_data_wrapper_privilege(keeper, (
                           SELECT s.srvfdw FROM pg_foreign_server s WHERE s.oid = p_objid),
                           'USAGE'));
    grant_kw := CASE WHEN keyword IN ('TABLE', 'VIEW', 'MATERIALIZED VIEW', 'FOREIGN TABLE')
                     THEN 'TABLE'
                     WHEN keyword IN ('FUNCTION', 'PROCEDURE', 'AGGREGATE') THEN 'ROUTINE'
                     WHEN keyword = 'SERVER' THEN 'FOREIGN SERVER'
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
    IF movable THEN
        EXECUTE format('ALTER %s %s OWNER TO softguard_keeper', keyword, ident);
    END IF;
    ties := softguard._untie(p_classid, p_objid, ident);
    IF grantees IS NOT NULL OR movable OR ties <> '{}' THEN
        steps := jsonb_build_array(jsonb_build_object(
            'step', 'owner', 'classid', p_classid, 'oid', p_objid, 'keyword', keyword,
            'grant_keyword', grant_kw, 'identity', ident, 'owner', own::regrole::text,
            'owner_oid', own, 'owner_changed', movable, 'acl', acl,
            'exact', exact) || ties);
    END IF;
    IF p_classid = 'pg_class'::regclass THEN
        FOR linked IN SELECT d.objid FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
                       WHERE d.classid = 'pg_class'::regclass AND d.refobjid = p_objid
                         AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                         AND c.relkind = 'S' ORDER BY 1 LOOP
            steps := steps || softguard._disown('pg_class'::regclass, linked);
        END LOOP;
    END IF;
    -- a range's multirange: ALTER TYPE of the range gives it along only on some
    -- PostgreSQL versions (not 15); where it stayed with the owner, give it on its own
    FOR linked IN SELECT rg.rngmultitypid FROM pg_range rg
                    JOIN pg_type m ON m.oid = rg.rngmultitypid
                   WHERE p_classid = 'pg_type'::regclass AND rg.rngtypid = p_objid
                     AND m.typowner <> keeper AND m.typowner = own AND NOT follows LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO softguard_keeper', linked::regtype);
        steps := steps || jsonb_build_array(jsonb_build_object(
            'step', 'owner', 'classid', p_classid, 'oid', linked, 'keyword', 'TYPE',
            'grant_keyword', 'TYPE', 'identity', linked::regtype::text,
            'owner', own::regrole::text, 'owner_oid', own, 'owner_changed', true,
            'acl', '[]'::jsonb));
    END LOOP;
    RETURN steps;
END $$;
REVOKE ALL ON FUNCTION softguard._disown(oid, oid) FROM PUBLIC;

-- The user mappings of a foreign server the DROP keeps (decision 0043): a direct DROP
-- SERVER ... CASCADE drops them, and with them their users' ties to the server (DROP ROLE,
-- DROP OWNED BY of a mapped user then succeed). Each one softguard can make again is
-- recorded in softguard.kept_mappings (options there, never in the plan: they can hold a
-- password) and dropped; the step in the plan names it only. Called before the server is
-- renamed (the sql_drop guard refuses a DROP of a mapping on a softguard_q server).
-- A mapping stays on the kept server, tied to its user until undo or purge, as before,
-- when the ledger's owner (a non-superuser, on managed PostgreSQL) cannot read its options
-- through pg_user_mappings (another role's mapping: only that role and superusers see
-- them) or cannot drop and make it again (not a member of the server's owner): recording
-- it without its options would lose them.
CREATE FUNCTION softguard._keep_mappings(op_id bigint, srv oid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m record;
    steps jsonb := '[]';
    is_super boolean := (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user);
BEGIN
    -- the view (pg_user_mapping is superuser-only); its options are NULL where hidden,
    -- which is told apart from "no options" by the view's own rule for who sees them
    FOR m IN SELECT um.umid, um.umuser, um.usename, um.umoptions, um.srvname, s.srvowner
               FROM pg_user_mappings um JOIN pg_foreign_server s ON s.oid = um.srvid
              WHERE um.srvid = srv ORDER BY um.umuser LOOP
        CONTINUE WHEN NOT pg_has_role(current_user, m.srvowner, 'MEMBER');
        CONTINUE WHEN m.umoptions IS NULL AND NOT (
            is_super
            OR (m.umuser = 0 AND pg_has_role(m.srvowner, 'USAGE'))
            OR (m.umuser <> 0 AND m.usename = current_user
                AND (pg_has_role(m.srvowner, 'USAGE') OR has_server_privilege(srv, 'USAGE'))));
        INSERT INTO softguard.kept_mappings (op_id, server, umuser, user_name, options)
        VALUES (op_id, srv, m.umuser, m.usename, m.umoptions);
        steps := steps || jsonb_build_array(jsonb_build_object(
            'step', 'user_mapping', 'server', srv, 'server_name', m.srvname,
            'user_oid', m.umuser, 'user', m.usename));
        EXECUTE format('DROP USER MAPPING FOR %s SERVER %I',
                       CASE WHEN m.umuser = 0 THEN 'PUBLIC' ELSE quote_ident(m.usename) END,
                       m.srvname);
    END LOOP;
    RETURN steps;
END $$;
REVOKE ALL ON FUNCTION softguard._keep_mappings(bigint, oid) FROM PUBLIC;

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
            -- Not views: LOCK TABLE on a view locks (and needs rights on) every relation
            -- it reads, system catalogs included, which DROP VIEW never does. The advisory
            -- lock serialises softguard's own DROPs; the move itself locks the view.
            -- Nor what an earlier operation keeps (a foreign table in a renamed schema that
            -- a kept server's DROP lists): no role may use its schema, the DROP leaves it
            -- where it is, and only undo and purge, which lock it, move it.
            IF FOUND AND r.relkind IN ('r', 'p', 'f')
               AND NOT softguard._is_quarantine_schema(r.nspname) THEN
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

-- Whether two probe lists name the same objects. PL/pgSQL: planned once per session.
CREATE FUNCTION softguard._same_objects(a jsonb, b jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT array_agg(k ORDER BY k)
              FROM (SELECT x->>'classid' || '/' || (x->>'objid') || '/' || (x->>'objsubid') AS k
                      FROM jsonb_array_elements(a) x) s)
           IS NOT DISTINCT FROM
           (SELECT array_agg(k ORDER BY k)
              FROM (SELECT x->>'classid' || '/' || (x->>'objid') || '/' || (x->>'objsubid') AS k
                      FROM jsonb_array_elements(b) x) s);
END $$;
GRANT EXECUTE ON FUNCTION softguard._same_objects(jsonb, jsonb) TO PUBLIC;

-- The shell type _drop_shell is dropping now, per backend: the sql_drop backstop
-- (85_backstop.sql) lets a statement pass that drops this type and nothing else. A row,
-- not the PL/pgSQL context stack: a client can write text that reads like any frame of
-- that stack into its own dynamic SQL (a comment), not a row here.
CREATE TABLE softguard.shell_drops (
    pid     integer NOT NULL,
    xid     xid8 NOT NULL,
    type    oid NOT NULL
);
REVOKE ALL ON softguard.shell_drops FROM PUBLIC;
COMMENT ON TABLE softguard.shell_drops IS
    'the shell type _drop_shell is dropping, which the sql_drop backstop lets pass';

-- Mark `p_oid` as the shell type this backend drops next (`dropping`), or clear the mark.
-- True when marked: only a shell type (nothing to keep) is, so a client that calls this
-- itself gains nothing but dropping a shell type of its own.
CREATE FUNCTION softguard._shell_drop_mark(p_oid oid, dropping boolean) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM softguard.shell_drops s WHERE s.pid = pg_backend_pid();
    IF dropping AND EXISTS (SELECT FROM pg_type t
                             WHERE t.oid = p_oid AND t.typtype = 'p' AND NOT t.typisdefined) THEN
        INSERT INTO softguard.shell_drops (pid, xid, type)
        VALUES (pg_backend_pid(), pg_current_xact_id(), p_oid);
        RETURN true;
    END IF;
    RETURN false;
END $$;
REVOKE ALL ON FUNCTION softguard._shell_drop_mark(oid, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._shell_drop_mark(oid, boolean) TO PUBLIC;

-- A shell type (CREATE TYPE name, not defined yet) holds nothing and can be neither
-- renamed nor moved: a DROP that removes only shell types removes them for real,
-- unrecorded, as PostgreSQL does. Drops nothing but a shell type (marked for the backstop
-- while it drops it); runs as the caller, who must own it.
CREATE FUNCTION softguard._drop_shell(p_oid oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ident text;
BEGIN
    SELECT format('%I.%I', n.nspname, t.typname) INTO ident
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.oid = p_oid AND t.typtype = 'p' AND NOT t.typisdefined;
    IF ident IS NOT NULL AND softguard._shell_drop_mark(p_oid, true) THEN
        EXECUTE format('DROP TYPE %s', ident);
        PERFORM softguard._shell_drop_mark(p_oid, false);
    END IF;
END $$;
GRANT EXECUTE ON FUNCTION softguard._drop_shell(oid) TO PUBLIC;

-- Temporary objects cannot be moved and vanish with the session anyway. In a DROP that
-- also names permanent objects (or cascades to temporary ones, e.g. a temporary view over
-- a dropped table), they are dropped for real, unrecorded, before the permanent ones go
-- to quarantine. Drops nothing but objects in a temporary schema; runs as the caller.
CREATE FUNCTION softguard._drop_temporary(list jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e jsonb;
    kw text;
    ident text;
BEGIN
    FOR e IN SELECT x FROM jsonb_array_elements(list) WITH ORDINALITY AS t (x, o)
              WHERE (x->>'is_temporary')::boolean AND (x->>'objsubid')::integer = 0
              ORDER BY o LOOP
        kw := NULL;
        IF (e->>'classid')::oid = 'pg_class'::regclass THEN
            SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                        WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                        WHEN 'i' THEN 'INDEX' WHEN 'I' THEN 'INDEX'
                        WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'TABLE' END,
                   format('%I.%I', n.nspname, c.relname)
              INTO kw, ident
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = (e->>'objid')::oid AND c.relpersistence = 't';
        ELSIF (e->>'classid')::oid = 'pg_proc'::regclass THEN
            SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE'
                        ELSE 'FUNCTION' END, p.oid::regprocedure::text
              INTO kw, ident
              FROM pg_proc p
             WHERE p.oid = (e->>'objid')::oid AND p.pronamespace = pg_my_temp_schema();
        ELSIF (e->>'classid')::oid = 'pg_type'::regclass THEN
            -- row and array types go with their relation or element type
            SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
                   format('%I.%I', n.nspname, t.typname)
              INTO kw, ident
              FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE t.oid = (e->>'objid')::oid AND t.typnamespace = pg_my_temp_schema()
               AND t.typrelid = 0 AND t.typcategory <> 'A';
        END IF;
        IF kw IS NOT NULL THEN
            EXECUTE format('DROP %s IF EXISTS %s CASCADE', kw, ident);
        END IF;
    END LOOP;
END $$;
GRANT EXECUTE ON FUNCTION softguard._drop_temporary(jsonb) TO PUBLIC;

CREATE PROCEDURE softguard.drop_op(stmt text, stmt_cascade text, ctx jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    saved text := pg_catalog.current_setting('client_min_messages');
    list jsonb;
    clist jsonb;
    msg text;
    n_all integer;
    n_temp integer;
    n_shell integer;
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
    SELECT pg_catalog.count(*) INTO n_shell
      FROM pg_catalog.jsonb_array_elements(list) e
      JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) (e->>'objid')::oid
     WHERE (e->>'classid')::oid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass
       AND NOT t.typisdefined;
    IF n_all > 0 AND n_shell = n_all THEN
        PERFORM softguard._drop_shell((e->>'objid')::oid)
           FROM pg_catalog.jsonb_array_elements(list) e;
    ELSIF n_all > 0 AND n_temp = n_all THEN
        -- Temporary objects cannot be moved and vanish with the session anyway: drop them
        -- for real, unrecorded (notices were already sent by the probe).
        IF saved NOT IN ('error', 'fatal', 'panic') THEN
            PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
        END IF;
        EXECUTE stmt;
        PERFORM pg_catalog.set_config('client_min_messages', saved, true);
    ELSIF n_all > 0 THEN
        PERFORM softguard._limit_drop(list);   -- max_table_bytes, before anything moves
        IF n_temp > 0 THEN
            IF saved NOT IN ('error', 'fatal', 'panic') THEN
                PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
            END IF;
            PERFORM softguard._drop_temporary(list);
            PERFORM pg_catalog.set_config('client_min_messages', saved, true);
            -- what is left: not temporary and not gone with them (e.g. their rules)
            SELECT pg_catalog.jsonb_agg(e ORDER BY o) INTO list
              FROM pg_catalog.jsonb_array_elements(list) WITH ORDINALITY AS t (e, o)
             WHERE NOT coalesce((e->>'is_temporary')::boolean, false)
               AND (pg_catalog.pg_identify_object((e->>'classid')::oid, (e->>'objid')::oid,
                                                  (e->>'objsubid')::integer)).identity
                   IS NOT NULL;
        END IF;
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
