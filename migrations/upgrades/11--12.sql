-- Version 12 (section fidmat, decision 0035): DROP TYPE/DOMAIN/SCHEMA ... CASCADE that
-- drops a column of a live table stays reversible when it also reaches materialized views
-- (recorded and dropped, re-made and refreshed by undo: _remake_step, _undo_remake), rules
-- reading the column (links, as before) or views and materialized views standing in a
-- schema the statement drops (kept as the others): _quarantine (with _column_readers,
-- replacing _column_views), the backstop lets such a matview's DROP pass (_backstop_drop).
--
-- Version 12 (section ties, decision 0036): DROP OPERATOR is a reversible kind. A kept
-- operator cannot be renamed, so _move puts it under its own name in a schema of its own,
-- softguard_q<id>_pg_<n> (_kw, _owner, _quarantine); undo moves it back and drops that
-- schema (_name_taken, _undo_one), purge drops the schema. Undo refuses (55006) to give back
-- an object whose constraints, indexes or rules use what a later operation holds.
--
-- Version 12 (section langsrv, decision 0036 since then): DROP SERVER and DROP LANGUAGE are
-- reversible, the object renamed softguard_q<id>_<name> in place (_kw, _owner, _move, _acls,
-- _disown, _held_objects, _undo_rename_global, the sql_drop guard); purge locks no foreign table.
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

-- section: fidmat --------------------------------------------------------------------

DROP FUNCTION softguard._column_views(jsonb, jsonb);

CREATE OR REPLACE FUNCTION softguard._is_reader(readers jsonb, rel oid, kind "char") RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM jsonb_to_recordset(readers) AS r(oid oid, relkind "char")
                    WHERE r.oid = rel AND (kind IS NULL OR r.relkind = kind))
$$;
REVOKE ALL ON FUNCTION softguard._is_reader(jsonb, oid, "char") FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._column_readers(cols jsonb, list jsonb) RETURNS jsonb
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

CREATE OR REPLACE FUNCTION softguard._without_deps(steps jsonb, readers jsonb) RETURNS jsonb
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

CREATE OR REPLACE FUNCTION softguard._remake_step(op_id bigint, rel oid, readers jsonb) RETURNS jsonb
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
        IF r.home = ANY (dropped_schemas) THEN                 -- stays in its renamed schema
            IF r.classid = 'pg_class'::regclass AND r.objsubid = 0 THEN
                in_schema := in_schema || jsonb_build_array(to_jsonb(r));  -- unless it reads
            END IF;                                                        -- a kept column
            CONTINUE;
        END IF;
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
        -- a user mapping stays on its server, which is kept by a rename (_move)
        CONTINUE WHEN r.object_type = 'user mapping'
                  -- (the view: pg_user_mapping is superuser-only, the ledger owner may not be)
                  AND EXISTS (SELECT FROM pg_user_mappings um
                                JOIN softguard._list(list) sv
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
    readers := softguard._column_readers(cols, list);
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

CREATE OR REPLACE FUNCTION softguard._undo_remake(op bigint, s jsonb) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp_name name;
    rel oid;
    d jsonb;
    e jsonb;
    what text := 'materialized view ' || (s->>'name');
    lines softguard.undo_step[] := '{}';
BEGIN
    FOR d IN SELECT x FROM jsonb_array_elements(s->'deps') x LOOP
        PERFORM softguard._need_live(op, (d->>'classid')::oid, (d->>'objid')::oid, what,
                                     d->>'identity');
    END LOOP;
    SELECT n.nspname INTO nsp_name FROM pg_namespace n WHERE n.oid = (s->>'schema_oid')::oid;
    IF nsp_name IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: schema %s no longer exists', op,
                             s->>'schema'),
            HINT = format('CREATE SCHEMA %I first.', s->>'schema');
    END IF;
    PERFORM softguard._need_live(op, 'pg_namespace'::regclass, (s->>'schema_oid')::oid, what);
    IF to_regclass(format('%I.%I', nsp_name, s->>'relname')) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42P07',
            MESSAGE = format('cannot undo operation %s: relation %I.%I already exists (created '
                             'after the DROP)', op, nsp_name, s->>'relname');
    END IF;
    EXECUTE format('CREATE MATERIALIZED VIEW %I.%I USING %I%s%s AS %s WITH NO DATA', nsp_name,
                   s->>'relname', s->>'am',
                   (SELECT ' WITH (' || string_agg(x, ', ' ORDER BY i) || ')'
                      FROM jsonb_array_elements_text(CASE jsonb_typeof(s->'options')
                                                         WHEN 'array' THEN s->'options'
                                                         ELSE '[]' END)
                           WITH ORDINALITY AS t(x, i)),
                   coalesce(' TABLESPACE ' || quote_ident(s->>'tablespace'), ''), s->>'def');
    rel := to_regclass(format('%I.%I', nsp_name, s->>'relname'));
    IF s->>'comment' IS NOT NULL THEN
        EXECUTE format('COMMENT ON MATERIALIZED VIEW %s IS %L', rel::regclass, s->>'comment');
    END IF;
    FOR e IN SELECT x FROM jsonb_array_elements(s->'columns') x LOOP
        IF e->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', rel::regclass, e->>'name',
                           e->>'comment');
        END IF;
        IF e->>'stattarget' IS NOT NULL THEN
            EXECUTE format('ALTER MATERIALIZED VIEW %s ALTER COLUMN %I SET STATISTICS %s',
                           rel::regclass, e->>'name', (e->>'stattarget')::integer);
        END IF;
        IF e->>'storage' IS NOT NULL THEN
            EXECUTE format('ALTER MATERIALIZED VIEW %s ALTER COLUMN %I SET STORAGE %s',
                           rel::regclass, e->>'name', CASE e->>'storage' WHEN 'p' THEN 'PLAIN'
                               WHEN 'e' THEN 'EXTERNAL' WHEN 'm' THEN 'MAIN' ELSE 'EXTENDED' END);
        END IF;
        IF e->>'compression' IS NOT NULL THEN
            EXECUTE format('ALTER MATERIALIZED VIEW %s ALTER COLUMN %I SET COMPRESSION %s',
                           rel::regclass, e->>'name', CASE e->>'compression' WHEN 'l' THEN 'lz4'
                                                           ELSE 'pglz' END);
        END IF;
    END LOOP;
    -- its owner before its indexes: an index expression is checked as the table's owner
    FOR e IN SELECT x FROM jsonb_array_elements(s->'owner') x LOOP
        lines := lines || softguard._undo_owner(op, e || jsonb_build_object('oid', rel));
    END LOOP;
    FOR e IN SELECT x FROM jsonb_array_elements(s->'indexes') x LOOP
        EXECUTE e->>'def';
        IF e->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON INDEX %I.%I IS %L', nsp_name, e->>'name', e->>'comment');
        END IF;
        IF (e->>'clustered')::boolean THEN
            EXECUTE format('ALTER MATERIALIZED VIEW %s CLUSTER ON %I', rel::regclass, e->>'name');
        END IF;
    END LOOP;
    FOR e IN SELECT x FROM jsonb_array_elements(s->'statistics') x LOOP
        EXECUTE e->>'def';
        IF to_regrole(e->>'owner') IS NOT NULL THEN
            EXECUTE format('ALTER STATISTICS %s OWNER TO %s', e->>'name', e->>'owner');
        END IF;
        IF e->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON STATISTICS %s IS %L', e->>'name', e->>'comment');
        END IF;
    END LOOP;
    IF (s->>'populated')::boolean THEN
        EXECUTE format('REFRESH MATERIALIZED VIEW %s', rel::regclass);
    END IF;
    RETURN lines || softguard._step(op, 're-made', rel::regclass::text,
        format('re-made materialized view %s%s', rel::regclass,
               CASE WHEN (s->>'populated')::boolean THEN ' (refreshed: its rows are those of now)'
                    ELSE ' (not populated, as it was)' END));
END $$;
REVOKE ALL ON FUNCTION softguard._undo_remake(bigint, jsonb) FROM PUBLIC;

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
            IF s->>'class' IN ('server', 'language') THEN  -- in no schema: a rename only
                lines := lines || softguard._undo_rename_global(op, s, k.name, rename_to);
                CONTINUE;
            END IF;
            -- an operator is kept under its name in a schema of its own (_move)
            IF k.keyword IS NULL
               OR (s->>'class' = 'operator'
                   AND (k.name <> s->>'name'
                        OR k.nsp IS DISTINCT FROM to_regnamespace(quote_ident(s->>'qname'))))
               OR (s->>'class' <> 'operator'
                   AND (k.name <> s->>'qname' OR k.nsp <> 'softguard_quarantine'::regnamespace))
            THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s %s.%s is no longer where it was '
                                     'kept (%s)', op, lower(s->>'keyword'), s->>'schema',
                                     s->>'name', CASE WHEN s->>'class' = 'operator'
                                         THEN 'schema ' || (s->>'qname')
                                         ELSE 'softguard_quarantine.' || (s->>'qname') END);
            END IF;
            IF s->>'class' = 'operator' AND (s->>'original')::boolean
               AND rename_to IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = '0A000',
                    MESSAGE = format('cannot undo operation %s under another name: an operator '
                                     'cannot be renamed', op);
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
                    HINT = CASE WHEN s->>'class' = 'operator'   -- no --rename-to for it
                                THEN 'drop the new operator first'
                                ELSE 'use --rename-to NEW_NAME' END;
            END IF;
            IF s->>'class' = 'operator' THEN
                EXECUTE format('ALTER OPERATOR %s SET SCHEMA %I', k.ident, nsp_name);
                EXECUTE format('DROP SCHEMA %I', s->>'qname');   -- empty now: it held only it
            ELSE
                EXECUTE format('ALTER %s %s RENAME TO %I', s->>'keyword', k.ident, target);
                k := softguard._kw((s->>'classid')::oid, (s->>'oid')::oid);
                EXECUTE format('ALTER %s %s SET SCHEMA %I', s->>'keyword', k.ident, nsp_name);
            END IF;
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
        WHEN 'remake_matview' THEN
            lines := lines || softguard._undo_remake(op, s);
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
    -- never uses a kept object, which that operation's purge could then not drop; and
    -- what goes with an object (a table's constraints, indexes, rules, triggers, defaults;
    -- a constraint's index), which may use an operator, an operator class, a function
    -- (decision 0036).
    FOR e IN SELECT x FROM jsonb_array_elements(o.objects) x
              WHERE x->>'held_by' IS NULL AND x->>'quarantined_as' IS NOT NULL LOOP
        FOR k IN WITH RECURSIVE part(classid, objid, sub, depth) AS (
                     SELECT (e->>'classid')::oid, (e->>'objid')::oid,
                            (e->>'objsubid')::integer, 0
                     UNION ALL
                     SELECT d.classid, d.objid, d.objsubid, p.depth + 1
                       FROM part p JOIN pg_depend d
                         ON d.refclassid = p.classid AND d.refobjid = p.objid
                        AND (p.sub = 0 OR d.refobjsubid = p.sub)
                      WHERE d.deptype IN ('a', 'i') AND p.depth < 2)
                 SELECT DISTINCT dp.refclassid, dp.refobjid FROM part p JOIN pg_depend dp
                     ON dp.classid = p.classid AND dp.objid = p.objid
                    AND (dp.objsubid = p.sub OR p.sub = 0)
                  WHERE dp.deptype IN ('n', 'a')
                  ORDER BY 1, 2 LOOP
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

CREATE OR REPLACE FUNCTION softguard._backstop_drop() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events text[] := (softguard._session(false)).capture;
    d record;
    stack text;
    by_alter boolean;   -- the statement itself dropped a column or an attribute
    ext boolean;        -- it dropped an extension, whose members go with it
    by_type boolean;    -- it dropped an attribute of a composite type (ALTER TYPE)
    cause text;         -- what the statement named
    governs text;
    denied jsonb := (softguard._session(false)).denied_tables;
BEGIN
    IF denied <> '[]' THEN
        -- tables a rule denies dropping (88_limits.sql), whatever dropped them
        PERFORM softguard._table_denied(denied, o.schema_name, o.object_name, 'drop', 'DROP')
           FROM pg_event_trigger_dropped_objects() o
          WHERE o.object_type IN ('table', 'materialized view') AND NOT o.is_temporary;
    END IF;
    IF events IS NULL OR NOT (events && ARRAY['drop', 'alter']) THEN
        RETURN;
    END IF;
    SELECT coalesce(bool_or(o.objsubid <> 0), false),
           coalesce(bool_or(o.object_type = 'extension'), false),
           coalesce(bool_or(o.object_type = 'composite type column'), false),
           string_agg(CASE WHEN o.object_type = 'composite type column'
                           THEN 'attribute ' ELSE o.object_type || ' ' END
                      || o.object_identity, ', ')
      INTO by_alter, ext, by_type, cause
      FROM pg_event_trigger_dropped_objects() o WHERE o.original;
    FOR d IN SELECT * FROM pg_event_trigger_dropped_objects() o
              WHERE NOT o.is_temporary AND (o.original OR o.normal) LOOP
        IF d.object_type IN ('table column', 'composite type column') THEN
            governs := CASE WHEN by_alter THEN 'alter' ELSE 'drop' END;
        ELSIF d.object_type IN ('table', 'materialized view', 'sequence') THEN
            governs := 'drop';
        ELSIF d.object_type IN ('schema', 'view', 'function', 'procedure', 'aggregate', 'type',
                                'domain')
              AND NOT (ext AND NOT d.original) THEN
            -- an extension's members report as normal dependents: its own functions and
            -- types cannot be told from others defined over them, so they pass with it
            governs := 'drop';
        ELSE
            CONTINUE;
        END IF;
        CONTINUE WHEN NOT governs = ANY (events);
        IF d.object_type = 'composite type column' THEN
            -- its values live on in columns of the type (typed tables report their own
            -- 'table column'): lost only where such columns exist
            CONTINUE WHEN NOT EXISTS (
                SELECT FROM pg_class r
                  JOIN pg_type t ON t.oid = r.reltype
                  JOIN pg_type u ON u.oid IN (t.oid, t.typarray)
                                 OR (u.typtype = 'd' AND u.typbasetype IN (t.oid, t.typarray))
                  JOIN pg_attribute a ON a.atttypid = u.oid AND a.attnum > 0
                                     AND NOT a.attisdropped
                  JOIN pg_class c ON c.oid = a.attrelid AND c.relkind IN ('r', 'p', 'm')
                 WHERE r.oid = d.objid);
        ELSIF d.object_type = 'type' THEN
            -- drop_op removes shell types (nothing to keep) for real, through _drop_shell:
            -- the statement drops the one shell type marked (30_drop.sql) and nothing else
            CONTINUE WHEN NOT EXISTS (
                SELECT FROM pg_event_trigger_dropped_objects() o
                 WHERE NOT EXISTS (SELECT FROM softguard.shell_drops s
                                    WHERE s.pid = pg_backend_pid()
                                      AND s.xid = pg_current_xact_id()
                                      AND s.type = o.objid AND o.object_type = 'type'));
        ELSIF d.object_type = 'materialized view' THEN
            -- one that a DROP ... CASCADE of this transaction recorded to re-make at undo,
            -- before dropping it (30_drop.sql _quarantine, 3a; decision 0035): a row of
            -- softguard's own, which the client can neither write nor keep
            CONTINUE WHEN EXISTS (
                SELECT FROM softguard.operations o, jsonb_array_elements(o.restore) s
                 WHERE o.txid = pg_current_xact_id() AND o.state = 'active'
                   AND o.kind LIKE 'DROP %' AND s->>'step' = 'remake_matview'
                   AND (s->>'oid')::oid = d.objid);
        ELSIF d.object_type = 'table column' AND by_alter THEN
            -- alter_op captured every column its statement drops before running it (it
            -- probes that very statement); a column dropped anywhere else is lost, as is
            -- one that code of the client's drops while alter_op runs its statement (not
            -- kept by the operation of that call, decision 0028).
            GET DIAGNOSTICS stack = PG_CONTEXT;
            CONTINUE WHEN stack ~ '(^|\n)PL/pgSQL function softguard\.alter_op\(text,jsonb,text\) line [0-9]+ at EXECUTE'
                      AND (NOT softguard._protected_table(d.objid)  -- a foreign child's
                           OR EXISTS (SELECT FROM softguard.captures c
                                       WHERE c.op_id = softguard._alter_executing()
                                         AND c.relid = d.objid AND c.event = 'column'
                                         AND c.info->>'kind' IS NULL
                                         AND (c.info->>'attnum')::integer = d.objsubid));
            -- a column a DROP ... CASCADE took, kept by drop_op before it dropped it
            -- (_quarantine, decision 0029)
            CONTINUE WHEN stack ~ '(^|\n)PL/pgSQL function softguard\._drop_kept_column\(oid,integer\) line [0-9]+ at EXECUTE'
                      AND (NOT softguard._protected_table(d.objid)
                           OR EXISTS (SELECT FROM softguard.captures c
                                        JOIN softguard.operations o ON o.id = c.op_id
                                       WHERE o.txid = pg_current_xact_id() AND o.state = 'active'
                                         AND o.kind LIKE 'DROP %'
                                         AND c.relid = d.objid AND c.event = 'column'
                                         AND c.info->>'kind' IS NULL
                                         AND (c.info->>'attnum')::integer = d.objsubid));
        END IF;
        IF d.original AND NOT by_type THEN
            PERFORM softguard._backstop_refuse(format(
                CASE WHEN d.object_type = 'table column' THEN 'ALTER TABLE DROP COLUMN %2$s'
                     ELSE 'DROP %1$s %2$s' END, upper(d.object_type), d.object_identity));
        END IF;
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard: dropping %s would take %s with it, which cannot be '
                             'made reversible here', cause,
                             CASE WHEN d.object_type = 'composite type column'
                                  THEN 'its values in the columns of that type'
                                  ELSE d.object_type || ' ' || d.object_identity END),
            DETAIL = 'softguard keeps tables, columns and definitions only when they are '
                     'dropped by a statement of their own kind that comes through softguard.',
            HINT = CASE WHEN d.object_type IN ('table column', 'composite type column')
                        THEN 'Drop the dependent columns first (ALTER TABLE ... DROP COLUMN '
                             'through softguard keeps them), then run this statement again.'
                        ELSE format('Drop the dependent %s first (through softguard, which '
                                    'keeps it), then run this statement again.', d.object_type)
                   END;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_drop() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._backstop_drop() TO PUBLIC;

-- end section: fidmat ----------------------------------------------------------------

-- section: ties -------------------------------------------------------------------

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
        WHEN 'pg_operator'::regclass THEN (SELECT oprowner FROM pg_operator WHERE oid = p_objid)
        WHEN 'pg_opfamily'::regclass THEN (SELECT opfowner FROM pg_opfamily WHERE oid = p_objid)
        WHEN 'pg_opclass'::regclass THEN (SELECT opcowner FROM pg_opclass WHERE oid = p_objid)
        WHEN 'pg_foreign_server'::regclass
            THEN (SELECT srvowner FROM pg_foreign_server WHERE oid = p_objid)
        WHEN 'pg_language'::regclass THEN (SELECT lanowner FROM pg_language WHERE oid = p_objid)
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
        WHEN 'operator' THEN EXISTS (   -- the same name and argument types
            SELECT FROM pg_operator o, pg_operator me
             WHERE me.oid = p_objid AND o.oprnamespace = nsp AND o.oprname = name
               AND o.oprleft = me.oprleft AND o.oprright = me.oprright AND o.oid <> p_objid)
        WHEN 'operator family' THEN EXISTS (   -- of the same access method
            SELECT FROM pg_opfamily f, pg_opfamily me
             WHERE me.oid = p_objid AND f.opfnamespace = nsp AND f.opfname = name
               AND f.opfmethod = me.opfmethod AND f.oid <> p_objid)
        WHEN 'operator class' THEN EXISTS (
            SELECT FROM pg_opclass c, pg_opclass me
             WHERE me.oid = p_objid AND c.opcnamespace = nsp AND c.opcname = name
               AND c.opcmethod = me.opcmethod AND c.oid <> p_objid)
        WHEN 'server' THEN EXISTS (
            SELECT FROM pg_foreign_server s WHERE s.srvname = name AND s.oid <> p_objid)
        WHEN 'language' THEN EXISTS (
            SELECT FROM pg_language l WHERE l.lanname = name AND l.oid <> p_objid)
        ELSE EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = nsp AND c.relname = name)
          OR EXISTS (SELECT FROM pg_type t WHERE t.typnamespace = nsp AND t.typname = name)
    END
$$;

CREATE OR REPLACE FUNCTION softguard._foreign_code(rel oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE tree(r) AS (
        SELECT rel
        UNION
        SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.r
    ), types(t) AS (
        SELECT a.atttypid FROM pg_attribute a
         WHERE a.attrelid IN (SELECT r FROM tree) AND a.attnum > 0 AND NOT a.attisdropped
        UNION
        SELECT u FROM types JOIN pg_type y ON y.oid = types.t,
               LATERAL (SELECT nullif(y.typbasetype, 0)
                        UNION ALL SELECT nullif(y.typelem, 0)
                        UNION ALL SELECT f.atttypid FROM pg_attribute f
                                   WHERE f.attrelid = y.typrelid AND f.attnum > 0
                                     AND NOT f.attisdropped
                        UNION ALL SELECT g.rngsubtype FROM pg_range g WHERE g.rngtypid = y.oid
                        UNION ALL SELECT g.rngtypid FROM pg_range g
                                   WHERE g.rngmultitypid = y.oid) v(u)
         WHERE u IS NOT NULL
    ), parts(classid, objid) AS (
        SELECT 'pg_class'::regclass::oid, i.indexrelid FROM pg_index i
         WHERE i.indrelid IN (SELECT r FROM tree)
        UNION ALL
        SELECT 'pg_constraint'::regclass::oid, k.oid FROM pg_constraint k
         WHERE k.conrelid IN (SELECT r FROM tree) OR k.contypid IN (SELECT t FROM types)
        UNION ALL
        SELECT 'pg_attrdef'::regclass::oid, d.oid FROM pg_attrdef d
         WHERE d.adrelid IN (SELECT r FROM tree)
        UNION ALL
        -- a domain's default (and any type's own functions)
        SELECT 'pg_type'::regclass::oid, t FROM types
        UNION ALL
        -- row-level security policies, where they apply to the role running undo (softguard's
        -- owner on a managed service may be neither superuser nor BYPASSRLS)
        SELECT 'pg_policy'::regclass::oid, pol.oid FROM pg_policy pol
          JOIN pg_class c ON c.oid = pol.polrelid AND c.relrowsecurity
         WHERE pol.polrelid IN (SELECT r FROM tree)
           AND NOT (SELECT o.rolsuper OR o.rolbypassrls FROM pg_roles o
                     WHERE o.rolname = current_user)
    ), used(classid, objid) AS (
        SELECT d.refclassid, d.refobjid FROM parts JOIN pg_depend d
            ON d.classid = parts.classid AND d.objid = parts.objid
        UNION
        -- what runs what it uses (decision 0036): an operator its function, an index's
        -- operator class the operators and support functions of its family
        SELECT x.classid, x.objid FROM used,
          LATERAL (SELECT 'pg_proc'::regclass::oid, o.oprcode::oid FROM pg_operator o
                    WHERE used.classid = 'pg_operator'::regclass AND o.oid = used.objid
                   UNION ALL
                   SELECT 'pg_opfamily'::regclass::oid, c.opcfamily FROM pg_opclass c
                    WHERE used.classid = 'pg_opclass'::regclass AND c.oid = used.objid
                   UNION ALL
                   SELECT 'pg_operator'::regclass::oid, a.amopopr FROM pg_amop a
                    WHERE used.classid = 'pg_opfamily'::regclass AND a.amopfamily = used.objid
                   UNION ALL
                   SELECT 'pg_proc'::regclass::oid, a.amproc::oid FROM pg_amproc a
                    WHERE used.classid = 'pg_opfamily'::regclass
                      AND a.amprocfamily = used.objid) x(classid, objid)
    )
    SELECT string_agg(DISTINCT format('%s (owned by %I)', p.oid::regprocedure, r.rolname), ', ')
      FROM used JOIN pg_proc p ON used.classid = 'pg_proc'::regclass AND p.oid = used.objid
      JOIN pg_roles r ON r.oid = p.proowner
     WHERE NOT r.rolsuper AND r.rolname <> current_user
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
    UNION ALL   -- its operator classes go with it
    SELECT 'pg_opfamily'::regclass::oid, f.oid, 'OPERATOR FAMILY',
           format('%I.%I USING %I', 'softguard_quarantine', f.opfname, a.amname)
      FROM pg_opfamily f JOIN pg_am a ON a.oid = f.opfmethod
     WHERE f.opfnamespace = 'softguard_quarantine'::regnamespace
       AND f.opfname ~ ('^op' || op || '_')
    UNION ALL   -- a foreign server, renamed in place (_move); its user mappings go with it
    SELECT 'pg_foreign_server'::regclass::oid, s.oid, 'SERVER', quote_ident(s.srvname)
      FROM pg_foreign_server s
     WHERE s.srvname ~ ('^softguard_q' || op || '_')
    UNION ALL   -- a language, renamed in place (_move)
    SELECT 'pg_language'::regclass::oid, l.oid, 'LANGUAGE', quote_ident(l.lanname)
      FROM pg_language l
     WHERE l.lanname ~ ('^softguard_q' || op || '_')
    UNION ALL
    SELECT 'pg_namespace'::regclass::oid, n.oid, 'SCHEMA', quote_ident(n.nspname)
      FROM pg_namespace n
     WHERE n.nspname ~ ('^softguard_q' || op || '_')
$$;

-- end section: ties ---------------------------------------------------------------

-- section: langsrv ------------------------------------------------------------------

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
    UNION ALL
    SELECT NULL, s.srvacl, 'S' FROM pg_foreign_server s
     WHERE p_classid = 'pg_foreign_server'::regclass AND s.oid = p_objid
    UNION ALL   -- not an untrusted language's: only superusers use one, no GRANT there
    SELECT NULL, l.lanacl, 'l' FROM pg_language l
     WHERE p_classid = 'pg_language'::regclass AND l.oid = p_objid AND l.lanpltrusted
$$;
REVOKE ALL ON FUNCTION softguard._acls(oid, oid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._disown(p_classid oid, p_objid oid) RETURNS jsonb
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
    IF NOT follows AND own <> keeper THEN
        EXECUTE format('ALTER %s %s OWNER TO softguard_keeper', keyword, ident);
    END IF;
    ties := softguard._untie(p_classid, p_objid, ident);
    IF grantees IS NOT NULL OR (NOT follows AND own <> keeper) OR ties <> '{}' THEN
        steps := jsonb_build_array(jsonb_build_object(
            'step', 'owner', 'classid', p_classid, 'oid', p_objid, 'keyword', keyword,
            'grant_keyword', grant_kw, 'identity', ident, 'owner', own::regrole::text,
            'owner_oid', own, 'owner_changed', NOT follows AND own <> keeper, 'acl', acl,
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
    ELSIF cls = 'pg_foreign_server'::regclass THEN
        UPDATE pg_foreign_server SET srvacl = was WHERE oid = obj;
    ELSIF cls = 'pg_language'::regclass THEN
        UPDATE pg_language SET lanacl = was WHERE oid = obj;
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._exact_acl(oid, oid, name, aclitem[], aclitem[], "char") FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._lock_listed(list jsonb) RETURNS void
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

CREATE OR REPLACE FUNCTION softguard._undo_rename_global(op bigint, s jsonb, now_name text,
                                              rename_to text)
RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target text := CASE WHEN (s->>'original')::boolean AND rename_to IS NOT NULL
                        THEN rename_to ELSE s->>'name' END;
BEGIN
    IF now_name IS DISTINCT FROM s->>'qname' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: %s %s is no longer kept as %s',
                             op, s->>'class', s->>'name', s->>'qname');
    END IF;
    IF softguard._name_taken(s->>'class', NULL, target, (s->>'oid')::oid) THEN
        RAISE EXCEPTION USING ERRCODE = '42710',
            MESSAGE = format('cannot undo operation %s: %s %I already exists (created '
                             'after the DROP)', op, s->>'class', target),
            HINT = 'use --rename-to NEW_NAME';
    END IF;
    EXECUTE format('ALTER %s %I RENAME TO %I', s->>'keyword', now_name, target);
    RETURN ARRAY[softguard._step(op, 'restored', quote_ident(target),
                                 format('restored %s %I', s->>'class', target))];
END $$;
REVOKE ALL ON FUNCTION softguard._undo_rename_global(bigint, jsonb, text, text) FROM PUBLIC;

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
    n_typed bigint := 0;
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
        --    kept view meanwhile anyway. Nor foreign tables: PostgreSQL cannot lock one
        --    (0A000 / 42809), and no role may reach a kept one either.
        FOR r IN SELECT h.relid FROM softguard.held_relations(op) h
                  WHERE h.relkind IN ('r', 'p') ORDER BY h.relid LOOP
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

    -- 3. Captured rows: typed captures' tables dropped (decision 0030: no other capture's
    --    rows read); the others released, deleted now when few.
    FOR r IN SELECT c.id, c.n_rows FROM softguard.captures c
              WHERE c.op_id = op AND c.info @> '{"typed": true}' AND c.released_at IS NULL
              ORDER BY c.id LOOP
        EXECUTE format('DROP TABLE IF EXISTS %s', softguard._typed_name(r.id));
        n_typed := n_typed + r.n_rows;
    END LOOP;
    UPDATE softguard.captures c SET released_at = now()
     WHERE c.op_id = op AND c.released_at IS NULL;
    SELECT coalesce(sum(c.n_rows), 0) INTO n_rows FROM softguard.captures c
     WHERE c.op_id = op AND NOT coalesce(c.info @> '{"typed": true}', false);
    IF n_rows <= inline_rows THEN
        DELETE FROM softguard.captured_rows cr
         WHERE cr.capture_id = ANY (ARRAY(SELECT c.id FROM softguard.captures c
                                           WHERE c.op_id = op));
        DELETE FROM softguard.captures c WHERE c.op_id = op;
        released := format('%s captured rows deleted', n_rows + n_typed);
    ELSE
        released := format('%s captured rows released (deleted in batches)', n_rows)
                    || CASE WHEN n_typed > 0 THEN format(', %s dropped', n_typed) ELSE '' END;
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
REVOKE ALL ON FUNCTION softguard.purge_op(bigint, text, text, bigint) FROM PUBLIC;

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
                             OR d.object_name ~ '^softguard_q[0-9]+_'))
                    -- a kept foreign server or language is in no schema: its name says
                    -- it is kept (and its user mappings', which DROP OWNED BY their user
                    -- would take)
                    OR (d.object_type IN ('server', 'language')
                        AND d.object_identity ~ '^"?softguard_q[0-9]+_')
                    OR (d.object_type = 'user mapping'
                        AND d.object_identity ~ ' on server "?softguard_q[0-9]+_'))
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
REVOKE ALL ON FUNCTION softguard._capture_sql_drop() FROM PUBLIC;

-- end section: langsrv --------------------------------------------------------------

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
