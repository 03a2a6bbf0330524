-- Version 9: <leave this line as is>
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

-- section: cascade -----------------------------------------------------------------------
-- DROP TYPE / DROP DOMAIN ... CASCADE that takes columns of live tables is reversible
-- (decision 0029): _quarantine keeps each such column as ALTER TABLE ... DROP COLUMN keeps
-- it (_keep_column, split out of _capture_column) and drops it (_drop_kept_column, which
-- the backstop lets be); undo re-adds the columns after their type (restore step
-- drop_columns); verify_operation checks that a DROP's kept columns are gone.
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
    ELSIF o.kind = 'ALTER TABLE' OR o.kind LIKE 'DROP %' THEN
        -- DROP: the columns its CASCADE took (decision 0029)
        SELECT format('column %s is still there', c.table_identity || '.' || (c.info->>'name'))
          INTO bad
          FROM softguard.captures c
         WHERE c.op_id = o.id AND c.event = 'column' AND c.info->>'kind' IS NULL
           AND EXISTS (SELECT FROM pg_attribute a
                        WHERE a.attrelid = c.relid AND a.attnum = (c.info->>'attnum')::integer
                          AND NOT a.attisdropped)
         LIMIT 1;
        IF bad IS NULL AND o.kind = 'ALTER TABLE' THEN
            SELECT format('the type change of %s was not completed',
                          c.table_identity || '.' || (c.info->>'name'))
              INTO bad
              FROM softguard.captures c
             WHERE c.op_id = o.id AND c.event = 'column' AND c.info->>'kind' = 'type'
               AND NOT c.info ? 'new_capture'
             LIMIT 1;
        END IF;
        IF bad IS NULL AND o.kind = 'ALTER TABLE'
           AND NOT EXISTS (SELECT FROM softguard.captures c WHERE c.op_id = o.id) THEN
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
CREATE OR REPLACE FUNCTION softguard._keep_column(op bigint, rel oid, attnum integer, excluded text[])
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    a record;
    key text[];
    image boolean;
    cid bigint;
    n bigint;
    info jsonb;
    ident text;
    idn jsonb;
    s record;
    seq regclass;
BEGIN
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
     WHERE at.attrelid = rel AND at.attnum = _keep_column.attnum;
    ident := format('%I.%I', (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = rel),
                    (SELECT relname FROM pg_class WHERE oid = rel));
    -- A generated column's values follow from the others: undo adds it again with its
    -- expression, so nothing is copied and no key is needed.
    IF a.attgenerated <> '' THEN
        key := '{}';
        image := false;
    ELSE
        SELECT k.key, k.image INTO key, image FROM softguard._keep_key(rel, a.attname, excluded) k;
    END IF;
    -- An identity column: its sequence goes with it; undo makes a new one like it, at the
    -- same place (options from pg_sequence, state read from the sequence itself).
    IF a.attidentity <> '' THEN
        SELECT d.objid::regclass INTO seq
          FROM pg_depend d JOIN pg_class sc ON sc.oid = d.objid AND sc.relkind = 'S'
         WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
           AND d.refobjid = rel AND d.refobjsubid = a.attnum AND d.deptype = 'i';
        EXECUTE format('SELECT last_value, is_called FROM %s', seq) INTO s;
        SELECT jsonb_build_object(
                   'kind', CASE a.attidentity WHEN 'a' THEN 'ALWAYS' ELSE 'BY DEFAULT' END,
                   'sequence', format('%I.%I', sn.nspname, sc.relname),
                   'type', format_type(ps.seqtypid, NULL), 'start', ps.seqstart,
                   'increment', ps.seqincrement, 'min', ps.seqmin, 'max', ps.seqmax,
                   'cache', ps.seqcache, 'cycle', ps.seqcycle,
                   'last_value', s.last_value, 'is_called', s.is_called)
          INTO idn
          FROM pg_sequence ps JOIN pg_class sc ON sc.oid = ps.seqrelid
          JOIN pg_namespace sn ON sn.oid = sc.relnamespace
         WHERE ps.seqrelid = seq;
    END IF;
    info := jsonb_build_object(
        'name', a.attname, 'type', a.typ, 'not_null', a.attnotnull, 'default', a.def,
        'collation', a.coll, 'comment', a.cmt, 'key', to_jsonb(key), 'attnum', a.attnum,
        'generated', CASE a.attgenerated WHEN 's' THEN 'STORED' WHEN 'v' THEN 'VIRTUAL' END,
        'image', image, 'excluded', to_jsonb(excluded), 'identity', idn,
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
    n := 0;
    IF a.attgenerated = '' THEN
        EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                       ' SELECT %s, %s FROM ONLY %s t',
                       cid, softguard._capture_row(rel, key, a.attname, false, image), rel::regclass);
        GET DIAGNOSTICS n = ROW_COUNT;
    END IF;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns, info)
    VALUES (cid, op, rel, ident, 'column', n,
            (SELECT coalesce(jsonb_agg(jsonb_build_array(k, format_type(at.atttypid, at.atttypmod))
                                       ORDER BY x.ord), '[]')
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
CREATE OR REPLACE FUNCTION softguard._capture_column(op bigint, rel oid, attnum integer,
                                          excluded text[] DEFAULT '{}')
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    o softguard.operations;
    ident text;
BEGIN
    PERFORM softguard._alter_window(op, 'capture', true);
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
                     AND (c.info->>'attnum')::integer = _capture_column.attnum)
       OR excluded IS NULL
       OR EXISTS (SELECT FROM unnest(excluded) x(name)
                   WHERE NOT EXISTS (SELECT FROM pg_attribute at WHERE at.attrelid = rel
                                        AND at.attname::text = x.name AND at.attnum > 0
                                        AND NOT at.attisdropped)) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: not a column this session can drop (%s, %s)', rel, attnum);
    END IF;
    ident := softguard._keep_column(op, rel, attnum, excluded);
    PERFORM softguard._alter_window(op, 'capture', false);
    RETURN ident;
END $$;
CREATE OR REPLACE FUNCTION softguard._with_columns(p_classid oid, p_objid oid, cols jsonb) RETURNS boolean
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
CREATE OR REPLACE FUNCTION softguard._kept_order(cols jsonb)
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
CREATE OR REPLACE FUNCTION softguard._drop_kept_column(rel oid, attnum integer) RETURNS void
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
            -- goes with its listed table (`owned` would also count a partition's column,
            -- whose table depends on its listed parent's)
            CONTINUE WHEN EXISTS (SELECT FROM softguard._list(list) t
                                   WHERE t.classid = r.classid AND t.objid = r.objid
                                     AND t.objsubid = 0);
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

    -- A view (or rule) reading a kept column would still hold it if moved: not kept yet.
    SELECT w.ev_class, w.rulename, k.object_identity INTO x
      FROM jsonb_to_recordset(cols) AS k(objid oid, objsubid integer, object_identity text)
      JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = k.objid
                      AND d.refobjsubid = k.objsubid AND d.classid = 'pg_rewrite'::regclass
      JOIN pg_rewrite w ON w.oid = d.objid
     ORDER BY 1, 2 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard cannot yet keep %s, which reads column %s (dropped by '
                             'this statement)', CASE WHEN x.rulename = '_RETURN'
                                 THEN 'view ' || x.ev_class::regclass::text
                                 ELSE format('rule %I on %s', x.rulename, x.ev_class::regclass) END,
                             x.object_identity),
            HINT = 'Drop the view first (DROP VIEW through softguard keeps it), then run this '
                   'statement again.';
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
            -- drop_op removes shell types (nothing to keep) for real, through _drop_shell
            GET DIAGNOSTICS stack = PG_CONTEXT;
            CONTINUE WHEN stack ~ '(^|\n)PL/pgSQL function softguard\._drop_shell\(oid\) line [0-9]+ at EXECUTE';
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
REVOKE ALL ON FUNCTION softguard._keep_column(bigint, oid, integer, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._with_columns(oid, oid, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._kept_order(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._drop_kept_column(oid, integer) FROM PUBLIC;
-- end section: cascade -------------------------------------------------------------------

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
