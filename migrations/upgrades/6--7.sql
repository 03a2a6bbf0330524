-- Version 7: columns of tables without a key and identity columns kept (decision 0022,
-- "Since then"); every object of a kept schema belongs to softguard_keeper while kept,
-- kept tables' policies and kept schemas' default privileges untied (decision 0027,
-- "Since then").
--
-- As in 5--6.sql: softguard's event triggers are off while the sections run, every
-- function a section (re)defines has its final definition.

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

-- section: keyless ---------------------------------------------------------------------
-- Rows without a key found by their row image; identity columns kept (decision 0022).
-- _capture_column gains `excluded` (the other columns the statement drops or retypes).
DROP FUNCTION softguard._capture_column(bigint, oid, integer);

CREATE OR REPLACE FUNCTION softguard._keep_key(rel oid, col text, excluded text[], OUT key text[],
                                    OUT image boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    key := softguard._row_key(rel, excluded || col);
    image := key IS NULL;
    IF image THEN
        key := ARRAY(SELECT a.attname::text FROM pg_attribute a
                      WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                        AND a.attgenerated = '' AND a.attname::text <> col
                        AND a.attname::text <> ALL (excluded)
                      ORDER BY a.attnum);
    END IF;
END $$;
CREATE OR REPLACE FUNCTION softguard._capture_row(key text[], col text, ord boolean) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'ROW(' || array_to_string(
               ARRAY(SELECT format('t.%I', k) FROM unnest(key) WITH ORDINALITY x(k, o) ORDER BY o)
               || CASE WHEN ord THEN ARRAY['row_number() OVER (ORDER BY t.tableoid, t.ctid)']
                       ELSE '{}'::text[] END
               || format('t.%I', col), ', ') || ')::text'
$$;
CREATE OR REPLACE FUNCTION softguard._capture_column(op bigint, rel oid, attnum integer,
                                          excluded text[] DEFAULT '{}')
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    o softguard.operations;
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
                       cid, softguard._capture_row(key, a.attname, false), rel::regclass);
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
REVOKE ALL ON FUNCTION softguard._keep_key(oid, text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._capture_row(text[], text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._capture_column(bigint, oid, integer, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._capture_column(bigint, oid, integer, text[]) TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._capture_type(op bigint, rel oid, attnum integer, changed text[])
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    a record;
    key text[];
    image boolean;
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
    SELECT k.key, k.image INTO key, image FROM softguard._keep_key(rel, a.attname, changed) k;
    IF cardinality(key) = 0 THEN
        -- nothing the statement leaves alone tells the rows apart: old and new values
        -- could not be paired
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard cannot keep the values of %s.%I across its type change: %s',
                             ident, a.attname,
                             CASE WHEN softguard._row_key(rel) IS NULL
                                  THEN 'the table has no primary key or unique NOT NULL key'
                                  ELSE 'every primary key or unique NOT NULL key of the table has '
                                       'a column that this statement changes' END
                             || ', and the statement changes every other column'),
            HINT = 'Add a primary key first, or change the types in separate statements, or '
                   'give the role running it alter = "allow" in softguard''s policy (the change '
                   'is then not reversible).';
    END IF;
    IF a.attidentity <> '' OR a.attgenerated <> '' THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard cannot yet keep identity or generated column %s.%I', ident, a.attname),
            HINT = 'Give the role running it alter = "allow" in softguard''s policy (the change '
                   'is then not reversible), or run the statement without softguard.';
    END IF;
    cid := nextval(pg_get_serial_sequence('softguard.captures', 'id')::regclass);
    EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                   ' SELECT %s, %s FROM %s t',
                   cid, softguard._capture_row(key, a.attname, image), rel::regclass);
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns, info)
    VALUES (cid, op, rel, ident, 'column', n,
            (SELECT jsonb_agg(jsonb_build_array(k, format_type(at.atttypid, at.atttypmod)) ORDER BY x.ord)
               FROM unnest(key) WITH ORDINALITY x(k, ord)
               JOIN pg_attribute at ON at.attrelid = rel AND at.attname = x.k)
            || CASE WHEN image THEN '[["sg_ord", "bigint"]]'::jsonb ELSE '[]' END
            || jsonb_build_array(jsonb_build_array('sg_value', a.typ)),
            jsonb_build_object('kind', 'type', 'name', a.attname, 'attnum', a.attnum,
                               'type', a.typ, 'not_null', a.attnotnull, 'default', a.def,
                               'collation', a.coll, 'key', to_jsonb(key), 'image', image,
                               'excluded', to_jsonb(changed),
                               -- every column's type before the statement, of the table
                               -- and of its children and partitions ("relid.name"): the
                               -- rewrite backstop (85_backstop.sql) tells from it which changed
                               'types', (WITH RECURSIVE down(r) AS (
                                             SELECT rel
                                             UNION
                                             SELECT i.inhrelid FROM pg_inherits i JOIN down ON i.inhparent = down.r)
                                         SELECT jsonb_object_agg(t.attrelid::text || '.' || t.attname,
                                                                 format_type(t.atttypid, t.atttypmod))
                                           FROM pg_attribute t
                                          WHERE t.attrelid IN (SELECT r FROM down) AND t.attnum > 0
                                            AND NOT t.attisdropped),
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
                   ' SELECT %s, %s FROM %s t',
                   cn, softguard._capture_row(key, a.attname, coalesce((c.info->>'image')::boolean, false)),
                   c.relid::regclass);
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
CREATE OR REPLACE FUNCTION softguard._alter_changing(list jsonb, retypes jsonb, rel oid) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT DISTINCT x.name FROM (
        SELECT a.attname::text AS name
          FROM jsonb_array_elements(list) e
          JOIN pg_attribute a ON a.attrelid = (e->>'objid')::oid
                             AND a.attnum = (e->>'objsubid')::integer AND a.attnum > 0
         WHERE e->>'object_type' = 'table column' AND (e->>'objid')::oid = rel
        UNION ALL
        SELECT jsonb_array_elements_text(e->'names')
          FROM jsonb_array_elements(retypes) e WHERE (e->>'rel')::oid = rel) x ORDER BY 1)
$$;
REVOKE ALL ON FUNCTION softguard._alter_changing(jsonb, jsonb, oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._alter_changing(jsonb, jsonb, oid) TO PUBLIC;  -- alter_op
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
    retypes jsonb;
    changing text[];
    action text := coalesce(ctx->>'action', 'ALTER TABLE');
    msg text;
    saved text := pg_catalog.current_setting('client_min_messages');
    saved_sync text := pg_catalog.current_setting('synchronize_seqscans');
BEGIN
    PERFORM softguard._notice(coalesce(ctx->>'offset', '0'), 'SGBEG');
    PERFORM softguard._machinery_check();
    IF probed THEN
        list := softguard._probe(stmt);
    END IF;

    -- ALTER COLUMN ... TYPE: the columns the proxy names, as the caller's search_path
    -- resolves them; tables the caller does not own are left to the statement's own error.
    SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'rel', g.rel::oid, 'attnums', g.attnums, 'names', g.names) ORDER BY g.first), '[]')
      INTO retypes
      FROM (SELECT s.rel, pg_catalog.array_agg(s.attnum ORDER BY s.ord) AS attnums,
                   pg_catalog.array_agg(s.attname ORDER BY s.ord) AS names,
                   pg_catalog.min(s.ord) AS first
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
             GROUP BY s.rel) g;

    -- DROP COLUMN: a column is kept by a key or row image without the columns this
    -- statement drops or retypes (they are not there, or not as they were, when undo
    -- puts it back).
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
        dropped := dropped || softguard._capture_column(op, r.rel, r.attnum,
                                                        softguard._alter_changing(list, retypes, r.rel));
    END LOOP;

    FOR r IN SELECT (e->>'rel')::oid AS rel,
                    ARRAY(SELECT pg_catalog.jsonb_array_elements_text(e->'attnums'))::integer[] AS attnums
               FROM pg_catalog.jsonb_array_elements(retypes) WITH ORDINALITY j(e, o) ORDER BY o LOOP
        -- rows written between the copy and the ALTER would be lost: lock as the ALTER does
        EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', r.rel::regclass);
        changing := softguard._alter_changing(list, retypes, r.rel);
        FOR i IN 1 .. pg_catalog.cardinality(r.attnums) LOOP
            IF op IS NULL THEN
                op := softguard._op_begin(stmt, ctx, 'ALTER TABLE');
            END IF;
            cid := softguard._capture_type(op, r.rel, r.attnums[i], changing);
            IF cid IS NOT NULL THEN
                cids := cids || cid;
            END IF;
        END LOOP;
    END LOOP;

    -- The probe already sent PostgreSQL's notices (IF EXISTS ... skipping): not twice.
    IF probed AND saved NOT IN ('error', 'fatal', 'panic') THEN
        PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
    END IF;
    -- A table rewrite keeps the rows in the order it reads them, from the first page when
    -- no synchronized scan starts it elsewhere: the captures before and after pair by it.
    IF pg_catalog.cardinality(cids) > 0 THEN
        PERFORM pg_catalog.set_config('synchronize_seqscans', 'off', true);
    END IF;
    EXECUTE stmt;
    PERFORM pg_catalog.set_config('client_min_messages', saved, true);
    PERFORM pg_catalog.set_config('synchronize_seqscans', saved_sync, true);
    FOREACH cid IN ARRAY cids LOOP
        retyped := retyped || softguard._capture_type_after(op, cid);
    END LOOP;
    IF pg_catalog.cardinality(dropped) > 0 THEN
        -- PostgreSQL cannot put a column back between others: undo adds it last
        msg := pg_catalog.array_to_string(dropped, ', ')
               || CASE WHEN pg_catalog.cardinality(dropped) = 1
                       THEN ' (restored as the last column)'
                       ELSE ' (restored as the last columns)' END;
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

CREATE OR REPLACE FUNCTION softguard._column_holder(op bigint, rel oid, col text, OUT later bigint,
                                         OUT later_stmt text, OUT later_kind text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT cp.op_id, o.statement, coalesce(cp.info->>'kind', 'drop')
      FROM softguard.captures cp JOIN softguard.operations o ON o.id = cp.op_id
     WHERE cp.relid = rel AND cp.event = 'column' AND cp.info->>'name' = col
       AND coalesce(cp.info->>'kind', 'drop') IN ('drop', 'type') AND cp.op_id > op
       AND o.state = 'active'
     ORDER BY cp.op_id DESC LIMIT 1
$$;
REVOKE ALL ON FUNCTION softguard._column_holder(bigint, oid, text) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._undo_key_check(op bigint, c softguard.captures) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k record;
    later bigint;
    later_stmt text;
    bad text;
BEGIN
    -- the key's columns lead c.columns, in order; what follows them is the capture's own
    -- (sg_value, sg_ord, ...), which a live column of the same name must not be read as
    FOR k IN SELECT x->>0 AS name, x->>1 AS typ,
                    (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                      WHERE a.attrelid = c.relid AND a.attname = x->>0 AND a.attnum > 0
                        AND NOT a.attisdropped) AS now
               FROM jsonb_array_elements(c.columns) WITH ORDINALITY e(x, ord)
              WHERE e.ord <= jsonb_array_length(coalesce(c.info->'key', '[]'))
                AND x->>0 IN (SELECT jsonb_array_elements_text(c.info->'key')) LOOP
        -- a key compares by value (its type may have changed since); an image as text
        CONTINUE WHEN k.now IS NOT NULL AND (k.now = k.typ OR NOT coalesce((c.info->>'image')::boolean, false));
        SELECT h.later, h.later_stmt INTO later, later_stmt
          FROM softguard._column_holder(op, c.relid, k.name) h;
        IF later IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '55006',
                MESSAGE = format('cannot undo operation %s: column %s.%I, which finds its rows, was %s since, held by operation %s (%s)',
                                 op, c.relid::regclass, k.name,
                                 CASE WHEN k.now IS NULL THEN 'dropped' ELSE 'changed' END,
                                 later, later_stmt),
                DETAIL = softguard._blocked_detail(later),
                HINT = format('Undo operation %s first, or use --cascade.', later);
        END IF;
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: column %s.%I, which finds its rows, %s',
                             op, c.relid::regclass, k.name,
                             CASE WHEN k.now IS NULL THEN 'is not there any more'
                                  ELSE format('is of type %s now, not %s', k.now, k.typ) END),
            HINT = 'Put the column back as it was, then undo again.';
    END LOOP;
    IF coalesce((c.info->>'image')::boolean, false) THEN
        SELECT string_agg(format('%I', x.name), ', ') INTO bad
          FROM jsonb_array_elements_text(coalesce(c.info->'excluded', '[]')) x(name)
         WHERE x.name <> c.info->>'name'
           AND NOT EXISTS (SELECT FROM softguard.captures cp
                            WHERE cp.op_id = op AND cp.relid = c.relid AND cp.event = 'column'
                              AND cp.info->>'name' = x.name
                              AND coalesce(cp.info->>'kind', 'drop') IN ('drop', 'type'));
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('cannot undo operation %s: its rows of %s.%I were kept without columns'
                                 ' it neither dropped nor retyped (%s), so they cannot be told apart',
                                 op, c.relid::regclass, c.info->>'name', bad);
        END IF;
    END IF;
END $$;
CREATE OR REPLACE FUNCTION softguard._image_src(c softguard.captures) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nkey integer := jsonb_array_length(c.info->'key');
BEGIN
    IF c.info->>'kind' = 'type_new' THEN
        nkey := jsonb_array_length(c.columns) - 2;
    END IF;
    RETURN softguard._captured_src(
        softguard._row_type((SELECT jsonb_agg(CASE WHEN o <= nkey THEN jsonb_build_array('k' || o, x->1)
                                                   ELSE x END ORDER BY o)
                               FROM jsonb_array_elements(c.columns) WITH ORDINALITY y(x, o)),
                            'img_' || c.id),
        c.id);
END $$;
CREATE OR REPLACE FUNCTION softguard._image_text(p text, cols text[]) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'ROW(' || array_to_string(ARRAY(SELECT format('%I.%I', p, c)
                                             FROM unnest(cols) WITH ORDINALITY x(c, o) ORDER BY o),
                                     ', ')
           || ')::text COLLATE "C"'
$$;
REVOKE ALL ON FUNCTION softguard._image_text(text, text[]) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._image_keys(n integer) RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT 'k' || i FROM generate_series(1, n) i ORDER BY i)
$$;
REVOKE ALL ON FUNCTION softguard._image_keys(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._undo_key_check(bigint, softguard.captures) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._image_src(softguard.captures) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._undo_drop_column(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i jsonb := c.info;
    rel regclass := c.relid::regclass;
    rtype text;
    key text[] := ARRAY(SELECT jsonb_array_elements_text(c.info->'key'));
    image boolean := coalesce((c.info->>'image')::boolean, false);
    idn jsonb := nullif(c.info->'identity', 'null');
    x jsonb;
    n bigint;
    total bigint;
    nnew bigint := 0;
    tseq text := format('pg_temp.%I', 'sg_identity_' || c.id);
    st record;
    via_parent boolean;
    saved_srr text := current_setting('session_replication_role');
BEGIN
    PERFORM softguard._undo_key_check(op, c);
    -- A partition or inheritance child: re-adding the column to its parent (a capture of
    -- the same operation, undone first) added it here too; only its values remain to do.
    via_parent := EXISTS (
        SELECT FROM pg_attribute a WHERE a.attrelid = c.relid AND a.attname = i->>'name'
           AND a.attnum > 0 AND NOT a.attisdropped AND NOT a.attislocal
           AND format_type(a.atttypid, a.atttypmod) = i->>'type'
           AND EXISTS (SELECT FROM pg_inherits h JOIN softguard.captures pc ON pc.relid = h.inhparent
                        WHERE h.inhrelid = c.relid AND pc.op_id = op AND pc.event = 'column'
                          AND pc.info->>'kind' IS NULL AND pc.info->>'name' = i->>'name'));
    IF NOT via_parent AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = c.relid AND attname = i->>'name'
                AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION USING ERRCODE = '42701',
            MESSAGE = format('cannot undo operation %s: column %I of %s exists again (added after the DROP)',
                             op, i->>'name', rel);
    END IF;
    IF via_parent THEN
        NULL;
    ELSIF i->>'generated' IS NOT NULL THEN
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
    IF i->>'generated' IS NULL AND image THEN
        -- ctid names a row for the length of this statement (ADD COLUMN did not rewrite)
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE ONLY %s t SET %I = m.sg_value FROM ('
                       'SELECT l.tid, s.sg_value'
                       ' FROM (SELECT t.tid, t.k, row_number() OVER (PARTITION BY t.k) AS rn'
                       ' FROM (SELECT t.ctid AS tid, %s AS k FROM ONLY %s t) t) l'
                       ' JOIN (SELECT s.sg_value, s.k, row_number() OVER (PARTITION BY s.k) AS rn'
                       ' FROM (SELECT s.sg_value, %s AS k FROM (%s) s) s) s'
                       ' ON s.k = l.k AND s.rn = l.rn) m WHERE t.ctid = m.tid',
                       rel, i->>'name', softguard._image_text('t', key), rel,
                       softguard._image_text('s', softguard._image_keys(cardinality(key))), softguard._image_src(c));
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
    ELSIF i->>'generated' IS NULL THEN
        rtype := softguard._row_type(c.columns, c.id::text);
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE %s t SET %I = s.sg_value FROM (SELECT (p.x).* FROM (SELECT r."row"::%s AS x'
                       ' FROM softguard.captured_rows r WHERE r.capture_id = %s OFFSET 0) p) s WHERE %s',
                       rel, i->>'name', rtype, c.id,
                       (SELECT string_agg(format('t.%I = s.%I', k, k), ' AND ') FROM unnest(key) k));
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
    END IF;
    IF idn IS NOT NULL THEN
        -- rows without a captured value: the values the sequence gives next (a temporary
        -- sequence at the recorded state; the identity's own needs NOT NULL first)
        EXECUTE format('DROP SEQUENCE IF EXISTS %s', tseq);
        EXECUTE format('CREATE TEMP SEQUENCE %I AS %s INCREMENT BY %s MINVALUE %s MAXVALUE %s START WITH %s %s',
                       'sg_identity_' || c.id, idn->>'type', idn->>'increment', idn->>'min',
                       idn->>'max', idn->>'start', CASE WHEN (idn->>'cycle')::boolean THEN 'CYCLE' ELSE 'NO CYCLE' END);
        PERFORM setval(tseq::regclass, (idn->>'last_value')::bigint, (idn->>'is_called')::boolean);
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE ONLY %s SET %I = nextval(%L::regclass) WHERE %I IS NULL',
                       rel, i->>'name', tseq, i->>'name');
        GET DIAGNOSTICS nnew = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
        EXECUTE format('SELECT last_value, is_called FROM %s', tseq) INTO st;
        EXECUTE format('DROP SEQUENCE %s', tseq);
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', rel, i->>'name');
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I ADD GENERATED %s AS IDENTITY (%s INCREMENT BY %s'
                       ' MINVALUE %s MAXVALUE %s START WITH %s CACHE %s %s)',
                       rel, i->>'name', idn->>'kind',
                       CASE WHEN to_regclass(idn->>'sequence') IS NULL
                            THEN 'SEQUENCE NAME ' || (idn->>'sequence') ELSE '' END,
                       idn->>'increment', idn->>'min', idn->>'max', idn->>'start', idn->>'cache',
                       CASE WHEN (idn->>'cycle')::boolean THEN 'CYCLE' ELSE 'NO CYCLE' END);
        PERFORM setval(pg_get_serial_sequence(rel::text, i->>'name')::regclass, st.last_value, st.is_called);
    END IF;
    IF i->>'default' IS NOT NULL AND i->>'generated' IS NULL THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', rel, i->>'name', i->>'default');
    END IF;
    IF (i->>'not_null')::boolean THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', rel, i->>'name');
    END IF;
    FOR x IN SELECT e FROM jsonb_array_elements(i->'constraints') e LOOP
        CONTINUE WHEN via_parent AND EXISTS (SELECT FROM pg_constraint co WHERE co.conrelid = c.relid
                                                AND co.conname = x->>'name');
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', rel, x->>'name', x->>'def');
        IF x->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON CONSTRAINT %I ON %s IS %L', x->>'name', rel, x->>'comment');
        END IF;
    END LOOP;
    FOR x IN SELECT e FROM jsonb_array_elements(i->'indexes') e LOOP
        -- the parent's partitioned index made this partition's again
        CONTINUE WHEN via_parent AND EXISTS (SELECT FROM pg_class ic WHERE ic.relname = x->>'name'
                                                AND ic.relnamespace = (SELECT relnamespace FROM pg_class
                                                                        WHERE oid = c.relid));
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
    IF image OR idn IS NOT NULL THEN
        EXECUTE format('SELECT count(*) FROM ONLY %s', rel) INTO total;
    END IF;
    RETURN ARRAY[softguard._step(op, 're-added', format('%s.%I', rel, i->>'name'),
                                 format('re-added column %s.%I with %s values%s', rel, i->>'name', n,
                                        CASE WHEN total > n THEN format(
                                            ' (%s changed or added since: %s)',
                                            CASE WHEN total - n = 1 THEN '1 row' ELSE (total - n) || ' rows' END,
                                            CASE WHEN idn IS NOT NULL THEN 'new identity values'
                                                 ELSE 'NULL' END)
                                             ELSE '' END), n)];
END $$;
CREATE OR REPLACE FUNCTION softguard._undo_type(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i jsonb := c.info;
    rel regclass := c.relid::regclass;
    col text := c.info->>'name';
    old_type text := c.info->>'type';
    key text[] := ARRAY(SELECT jsonb_array_elements_text(c.info->'key'));
    image boolean := coalesce((c.info->>'image')::boolean, false);
    nk integer := jsonb_array_length(c.info->'key');
    pick text := format('pg_temp.%I', 'sg_type_pick_' || c.id);
    src_old text;
    src_new text;
    using_expr text;
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
    SELECT h.later, h.later_stmt, h.later_kind INTO later, later_stmt, later_kind
      FROM softguard._column_holder(op, c.relid, col) h;
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
    PERFORM softguard._undo_key_check(op, c);

    -- 1. the rows to restore: captured, and still holding the value the ALTER gave them
    --    (compared as text of the current type, read back in this session)
    EXECUTE format('DROP TABLE IF EXISTS %s', tmp);
    IF image THEN
        src_old := softguard._image_src(c);
        src_new := softguard._image_src(cn);
        EXECUTE format('CREATE TEMP TABLE %I AS SELECT l.toid, l.tid, p.sg_value'
                       ' FROM (SELECT t.toid, t.tid, t.k,'
                       ' row_number() OVER (PARTITION BY t.k ORDER BY t.toid, t.tid) AS rn'
                       ' FROM (SELECT t.tableoid AS toid, t.ctid AS tid, %s AS k FROM %s t) t) l'
                       ' JOIN (SELECT p.k, p.sg_value, row_number() OVER (PARTITION BY p.k ORDER BY p.sg_ord) AS rn'
                       ' FROM (SELECT %s AS k, w.sg_ord, o.sg_value'
                       ' FROM (SELECT o.*, %s AS img, row_number() OVER (PARTITION BY %s ORDER BY o.sg_ord) AS r'
                       ' FROM (%s) o) o'
                       ' JOIN (SELECT w.*, %s AS img, row_number() OVER (PARTITION BY %s ORDER BY w.sg_ord) AS r'
                       ' FROM (%s) w) w ON w.img = o.img AND w.r = o.r) p) p'
                       ' ON p.k = l.k AND p.rn = l.rn',
                       tmp_name, softguard._image_text('t', key || col), rel,
                       softguard._image_text('w', softguard._image_keys(nk) || 'sg_new'::text),
                       softguard._image_text('o', softguard._image_keys(nk)), softguard._image_text('o', softguard._image_keys(nk)), src_old,
                       softguard._image_text('w', softguard._image_keys(nk)), softguard._image_text('w', softguard._image_keys(nk)), src_new);
        EXECUTE format('CREATE INDEX ON %s (tid)', tmp);
    ELSE
        rt_old := softguard._row_type(c.columns, c.id::text);
        rt_new := softguard._row_type(cn.columns, cn.id::text);
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
    END IF;

    -- 2. a per-row conversion back: explicit cast, else through text, else NULL
    EXECUTE format('DROP FUNCTION IF EXISTS %s(%s)', fn, a.typ);
    EXECUTE format('CREATE FUNCTION %s(v %s) RETURNS %s LANGUAGE plpgsql AS %L', fn, a.typ, old_type,
                   format('BEGIN RETURN v::%s; EXCEPTION WHEN OTHERS THEN BEGIN RETURN v::text::%s;'
                          ' EXCEPTION WHEN OTHERS THEN RETURN NULL; END; END', old_type, old_type));

    -- 3. rows added or changed since must convert back: a write made since is never lost
    --    (rows listed by key, or by image and value)
    EXECUTE format('SELECT count(*), string_agg(k, '', '') FILTER (WHERE n <= 5)'
                   ' FROM (SELECT format(%L, %s) AS k, row_number() OVER () AS n FROM %s t'
                   ' WHERE t.%I IS NOT NULL AND %s(t.%I) IS NULL'
                   ' AND NOT EXISTS (SELECT FROM %s s WHERE %s)) x',
                   '(' || array_to_string(ARRAY(SELECT format('%I', k) FROM unnest(
                              key || CASE WHEN image THEN ARRAY[col] ELSE '{}' END) k), ', ') || ')=(' ||
                       array_to_string(array_fill('%s'::text,
                           ARRAY[cardinality(key) + CASE WHEN image THEN 1 ELSE 0 END]), ', ') || ')',
                   (SELECT string_agg(format('t.%I', k), ', ')
                      FROM unnest(key || CASE WHEN image THEN ARRAY[col] ELSE '{}' END) k),
                   rel, col, fn, col, tmp,
                   CASE WHEN image THEN 's.toid = t.tableoid AND s.tid = t.ctid'
                        ELSE (SELECT string_agg(format('s.%I = t.%I', k, k), ' AND ') FROM unnest(key) k) END)
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
    using_expr := format('%s(%I)', fn, col);
    IF image THEN
        -- the rows to restore get their captured value in the conversion (by the ctid they
        -- have before it), the others their value converted back
        EXECUTE format('DROP FUNCTION IF EXISTS %s(oid, tid, %s)', pick, a.typ);
        EXECUTE format('CREATE FUNCTION %s(o oid, r tid, v %s) RETURNS %s LANGUAGE plpgsql AS %L',
                       pick, a.typ, old_type,
                       format('DECLARE x %s; BEGIN SELECT s.sg_value INTO x FROM %s s'
                              ' WHERE s.tid = r AND s.toid = o; IF FOUND THEN RETURN x; END IF;'
                              ' RETURN %s(v); END', old_type, tmp, fn));
        using_expr := format('%s(tableoid, ctid, %I)', pick, col);
    END IF;
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s%s USING %s', rel, col, old_type,
                   CASE WHEN i->>'collation' IS NOT NULL THEN ' COLLATE ' || (i->>'collation') ELSE '' END,
                   using_expr);

    -- 5. the captured values back, by key (user triggers off, as for the other undos)
    IF image THEN
        EXECUTE format('SELECT count(*) FROM %s', tmp) INTO n;
        EXECUTE format('DROP FUNCTION %s(oid, tid, %s)', pick, a.typ);
    ELSE
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE %s t SET %I = s.sg_value FROM %s s WHERE %s', rel, col, tmp,
                       (SELECT string_agg(format('t.%I = s.%I', k, k), ' AND ') FROM unnest(key) k));
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
    END IF;
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
-- column captures undone in capture order: a parent's column before its children's
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
    FOR cap IN SELECT * FROM softguard.captures WHERE op_id = op AND event = 'column' ORDER BY id LOOP
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
-- end section: keyless -----------------------------------------------------------------

-- section: keeper2 ----------------------------------------------------------------------
-- Kept schemas: every object with an owner in them belongs to softguard while kept, of
-- whatever kind (operators, collations, text search objects, ...); kept tables' policies
-- and kept schemas' default privileges name no role while kept; undo gives all back
-- (decision 0027, "Since then").
CREATE OR REPLACE FUNCTION softguard._catalog_owner(p_classid oid, p_objid oid) RETURNS oid
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
CREATE OR REPLACE FUNCTION softguard._schema_objects(nsp oid) RETURNS TABLE (classid oid, objid oid)
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
CREATE OR REPLACE FUNCTION softguard._untie(p_classid oid, p_objid oid, ident text) RETURNS jsonb
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
CREATE OR REPLACE FUNCTION softguard._retie(op bigint, s jsonb, ident text) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e jsonb;
    a jsonb;
    roles text;
    gone text;
    who name;
    grantee text;
    lines softguard.undo_step[] := '{}';
BEGIN
    FOR e IN SELECT x FROM jsonb_array_elements(coalesce(s->'policies', '[]')) x LOOP
        SELECT string_agg(CASE WHEN (y.v->>'oid')::oid = 0 THEN 'PUBLIC'
                               ELSE quote_ident(r.rolname) END, ', ' ORDER BY y.o) INTO roles
          FROM jsonb_array_elements(e->'roles') WITH ORDINALITY AS y (v, o)
          LEFT JOIN pg_roles r ON r.oid = (y.v->>'oid')::oid
         WHERE (y.v->>'oid')::oid = 0 OR r.oid IS NOT NULL;
        SELECT string_agg(y->>'role', ', ') INTO gone
          FROM jsonb_array_elements(e->'roles') y
         WHERE (y->>'oid')::oid <> 0
           AND NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = (y->>'oid')::oid);
        IF roles IS NULL THEN
            EXECUTE format('DROP POLICY %I ON %s', e->>'name', ident);
        ELSE
            EXECUTE format('ALTER POLICY %I ON %s TO %s', e->>'name', ident, roles);
        END IF;
        IF gone IS NOT NULL THEN
            lines := lines || softguard._step(op, 'skipped', s->>'identity',
                format('policy %I on %s %s: role %s no longer exists%s', e->>'name',
                       lower(s->>'keyword'), s->>'identity', gone,
                       CASE WHEN roles IS NULL THEN ', policy dropped' ELSE '' END));
        END IF;
    END LOOP;
    FOR e IN SELECT x FROM jsonb_array_elements(coalesce(s->'default_acls', '[]')) x LOOP
        SELECT r.rolname INTO who FROM pg_roles r WHERE r.oid = (e->>'role_oid')::oid;
        FOR a IN SELECT x FROM jsonb_array_elements(e->'acl') x LOOP
            grantee := CASE WHEN a->>'grantee' = 'PUBLIC' THEN 'PUBLIC'
                            ELSE (SELECT quote_ident(r.rolname) FROM pg_roles r
                                   WHERE r.oid = (a->>'grantee_oid')::oid) END;
            IF who IS NULL OR grantee IS NULL THEN
                lines := lines || softguard._step(op, 'skipped', s->>'identity',
                    format('default privilege %s on %s in schema %s for role %s to %s not '
                           'given back: role %s no longer exists', a->>'privilege',
                           lower(e->>'keyword'), s->>'identity', e->>'role', a->>'grantee',
                           CASE WHEN who IS NULL THEN e->>'role' ELSE a->>'grantee' END));
                CONTINUE;
            END IF;
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %s GRANT %s ON %s '
                           'TO %s%s', who, ident, a->>'privilege', e->>'keyword', grantee,
                           CASE WHEN (a->>'grantable')::boolean THEN ' WITH GRANT OPTION'
                                ELSE '' END);
        END LOOP;
    END LOOP;
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._retie(bigint, jsonb, text) FROM PUBLIC;
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
    ELSE  -- an operator, a collation, ... (30_drop.sql _schema_objects): its identity
        ident := coalesce((softguard._kw(cls, obj)).ident,
                          (pg_identify_object(cls, obj, 0)).identity);
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
    lines := lines || softguard._retie(op, s, ident);
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
-- end section: keeper2 ------------------------------------------------------------------

-- section: rewrite ---------------------------------------------------------------------
-- A column type change by a protected session outside alter_op is refused (85_backstop.sql,
-- table_rewrite); _capture_type (section keyless) records every column's type before the
-- statement.
CREATE OR REPLACE FUNCTION softguard._backstop_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid := pg_event_trigger_table_rewrite_oid();
    events text[];
    stack text;
    lost text;
BEGIN
    IF pg_event_trigger_table_rewrite_reason() & 4 = 0 THEN
        RETURN;                            -- persistence, a default, an access method
    END IF;
    events := (softguard._session(false)).capture;
    IF events IS NULL OR NOT ('alter' = ANY (events)) OR NOT softguard._protected_table(rel) THEN
        RETURN;
    END IF;
    GET DIAGNOSTICS stack = PG_CONTEXT;
    IF stack ~ '(^|\n)PL/pgSQL function softguard\._probe\(text\) line [0-9]+ at EXECUTE' THEN
        RETURN;                            -- the probe never keeps what it runs (20_catalog.sql)
    END IF;
    IF stack ~ '(^|\n)PL/pgSQL function softguard\.alter_op\(text,jsonb\) line [0-9]+ at EXECUTE' THEN
        WITH RECURSIVE up(r) AS (
            SELECT rel
            UNION
            SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.r
        ), caps AS (
            SELECT c.info FROM softguard.captures c
              JOIN softguard.operations o ON o.id = c.op_id
             WHERE o.txid = pg_current_xact_id() AND o.state = 'active'
               AND o.kind = 'ALTER TABLE' AND c.event = 'column'
               AND c.info->>'kind' = 'type' AND c.relid IN (SELECT r FROM up)
        )
        SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum) INTO lost
          FROM pg_attribute a
         WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
           AND NOT EXISTS (SELECT FROM caps WHERE caps.info->>'name' = a.attname)
           AND NOT EXISTS (SELECT FROM caps
                            WHERE caps.info->'types'->>(rel::text || '.' || a.attname)
                                  = format_type(a.atttypid, a.atttypmod));
        IF lost IS NULL THEN
            RETURN;
        END IF;
    ELSE
        lost := NULL;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '0A000',
        MESSAGE = format('softguard: changing the type of %s%s cannot be made reversible here',
                         CASE WHEN lost IS NULL THEN 'a column of ' ELSE 'column(s) ' || lost || ' of ' END,
                         rel::regclass),
        DETAIL = 'softguard keeps a column''s values across a type change only when the ALTER '
                 'TABLE comes through softguard on its own, not from a function, procedure or '
                 'DO block.',
        HINT = 'Run the ALTER TABLE ... ALTER COLUMN ... TYPE as its own statement.';
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_rewrite() FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._event_trigger_names() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['softguard_capture_ddl_end', 'softguard_capture_install',
                 'softguard_capture_sql_drop', 'softguard_capture_tamper_ddl',
                 'softguard_capture_tamper_drop', 'softguard_capture_inherit',
                 'softguard_capture_remote', 'softguard_capture_definitions',
                 'softguard_capture_definitions_drop', 'softguard_capture_sequences_start',
                 'softguard_capture_sequences_end', 'softguard_mode_guard',
                 'softguard_backstop_rewrite']
$$;
DO $$
BEGIN
    IF coalesce((SELECT s.event_triggers FROM softguard.settings s), true)
       AND NOT EXISTS (SELECT FROM pg_event_trigger WHERE evtname = 'softguard_backstop_rewrite') THEN
        PERFORM softguard._create_event_trigger('softguard_backstop_rewrite', $e$ON table_rewrite
    EXECUTE FUNCTION softguard._backstop_rewrite()$e$);
    END IF;
END $$;
-- end section: rewrite -----------------------------------------------------------------

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
