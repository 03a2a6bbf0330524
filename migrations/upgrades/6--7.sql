-- Version 7: <leave this line as is>

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', e.evtname);
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
    FOR k IN SELECT x->>0 AS name, x->>1 AS typ,
                    (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                      WHERE a.attrelid = c.relid AND a.attname = x->>0 AND a.attnum > 0
                        AND NOT a.attisdropped) AS now
               FROM jsonb_array_elements(c.columns) x
              WHERE x->>0 IN (SELECT jsonb_array_elements_text(c.info->'key')) LOOP
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
CREATE OR REPLACE FUNCTION softguard._image_text(p text, n integer, last text DEFAULT NULL) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'ROW(' || array_to_string(ARRAY(SELECT format('%I.%I', p, 'k' || i)
                                             FROM generate_series(1, n) i ORDER BY i)
                                     || CASE WHEN last IS NULL THEN '{}'::text[]
                                             ELSE ARRAY[format('%I.%I', p, last)] END, ', ')
           || ')::text COLLATE "C"'
$$;
CREATE OR REPLACE FUNCTION softguard._live_image_text(key text[], last text DEFAULT NULL) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'ROW(' || array_to_string(ARRAY(SELECT format('t.%I', k)
                                             FROM unnest(key) WITH ORDINALITY x(k, o) ORDER BY o)
                                     || CASE WHEN last IS NULL THEN '{}'::text[]
                                             ELSE ARRAY[format('t.%I', last)] END, ', ')
           || ')::text COLLATE "C"'
$$;
REVOKE ALL ON FUNCTION softguard._undo_key_check(bigint, softguard.captures) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._image_src(softguard.captures) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._image_text(text, integer, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION softguard._live_image_text(text[], text) FROM PUBLIC;
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
                       rel, i->>'name', softguard._live_image_text(key), rel,
                       softguard._image_text('s', cardinality(key)), softguard._image_src(c));
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
                       tmp_name, softguard._live_image_text(key, col), rel,
                       softguard._image_text('w', nk, 'sg_new'),
                       softguard._image_text('o', nk), softguard._image_text('o', nk), src_old,
                       softguard._image_text('w', nk), softguard._image_text('w', nk), src_new);
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

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
END $$;
