-- softguard ledger, version 4: ALTER TABLE ... ALTER COLUMN ... TYPE is reversible.
--
-- Design: docs/decisions/0006-row-capture.md ("ALTER COLUMN ... TYPE").
--
-- What always holds:
-- * softguard.alter_op(stmt, ctx) keeps, besides the columns the statement drops (0002),
--   the columns whose type it changes. PostgreSQL's event triggers do not report type
--   changes and SQL is parsed only by the proxy: ctx->'columns' names them,
--   [{"schema" (null: unqualified), "table", "column"}, ...] (every ALTER COLUMN ... TYPE
--   subcommand of the statement). They are resolved as the caller sees them (its
--   search_path); a name that resolves to nothing is left to the statement's own error.
-- * For each such column of a protected table the caller owns: the table is locked
--   (ACCESS EXCLUSIVE, as the ALTER itself), then its values are copied BEFORE the
--   statement runs, keyed by a primary key or unique NOT NULL key that the statement
--   leaves unchanged (none: 0A000, nothing done), with the old type (format_type),
--   default and collation; AFTER the statement its new values are copied too (second
--   capture, info kind 'type_new'), so that undo can tell rows changed since.
-- * ctx->>'drop_column' = 'false' (the proxy: no DROP COLUMN subcommand) skips the probe of
--   0001, which would otherwise run the whole ALTER (a table rewrite) twice.
-- * Undo (softguard._undo_type, through _undo_rows -> _undo_column): the column must still
--   be there under its name with the type the operation left (else 55000; 55006 "held by
--   operation N" when a later active operation dropped it or changed its type again, so
--   that --cascade works). It is converted back to the old type (and collation) with
--   `USING` a per-row cast (explicit cast, else through text); then every row whose value
--   is still the one the ALTER produced gets its captured old value back, exactly (by key).
--   Rows added or changed since keep their value, converted back; when such a value does
--   not convert back, the undo is refused (55000, keys listed): undo never replaces a
--   write made since with NULL. The old default comes back; NOT NULL is kept.

-- ---------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------

-- alter_op runs as the caller: it checks tables with this (it reads only the catalog).
GRANT EXECUTE ON FUNCTION softguard._protected_table(oid) TO PUBLIC;

-- A key of a table that does not include any of the columns `changed` (their values are
-- about to change): the primary key first, else a unique index on NOT NULL columns (no
-- expressions, no predicate). NULL when there is none.
CREATE FUNCTION softguard._type_key(rel oid, changed text[]) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, o)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                  ORDER BY k.o)
      FROM pg_index i
     WHERE i.indrelid = rel AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
       AND i.indexprs IS NULL AND 0 <> ALL (i.indkey)
       AND NOT EXISTS (SELECT FROM unnest(i.indkey) k(attnum)
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                        WHERE NOT a.attnotnull OR a.attname::text = ANY (changed))
     ORDER BY i.indisprimary DESC, i.indnatts, i.indexrelid
     LIMIT 1
$$;
REVOKE ALL ON FUNCTION softguard._type_key(oid, text[]) FROM PUBLIC;

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
    key := softguard._type_key(rel, changed);
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
-- alter_op: DROP COLUMN (0002, unchanged) and ALTER COLUMN ... TYPE
--   stmt  the client's ALTER TABLE, verbatim
--   ctx   as truncate_op (action 'ALTER TABLE'), plus
--         "columns": [{"schema", "table", "column"}]  the ALTER COLUMN ... TYPE targets
--         "drop_column": false   the statement has no DROP COLUMN: no probe
-- NOTICE: 'softguard: ALTER TABLE DROP COLUMN <cols>[, ALTER COLUMN TYPE <cols>] is ...' or
-- 'softguard: ALTER TABLE ALTER COLUMN TYPE <cols> is reversible as operation N until D'.
-- ---------------------------------------------------------------------------------------

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

-- ---------------------------------------------------------------------------------------
-- Undo
-- ---------------------------------------------------------------------------------------

-- Undo of a type change: see the header. Called by _undo_column (below) from _undo_rows.
CREATE FUNCTION softguard._undo_type(op bigint, c softguard.captures) RETURNS text[]
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
    RETURN ARRAY[format('operation %s: column %s.%I back to %s, %s values restored%s', op, rel, col,
                        old_type, n,
                        CASE WHEN total > n
                             THEN format(' (%s added or changed since: converted back)',
                                         CASE WHEN total - n = 1 THEN '1 row'
                                              ELSE (total - n) || ' rows' END)
                             ELSE '' END)];
END $$;
REVOKE ALL ON FUNCTION softguard._undo_type(bigint, softguard.captures) FROM PUBLIC;

-- _undo_column of 0002 (DROP COLUMN) is renamed _undo_drop_column, unchanged; _undo_column
-- (called by _undo_rows for every 'column' capture) now dispatches on info->>'kind'.
ALTER FUNCTION softguard._undo_column(bigint, softguard.captures) RENAME TO _undo_drop_column;
COMMENT ON FUNCTION softguard._undo_drop_column(bigint, softguard.captures) IS
    '_undo_column of 0002, unchanged: undo of a dropped column';

CREATE FUNCTION softguard._undo_column(op bigint, c softguard.captures) RETURNS text[]
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
