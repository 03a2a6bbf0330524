-- Version 9: enum and reg* values captured by what rows held and put back by identity
-- (decision 0022, "Restore forms"); DROP TYPE / DOMAIN ... CASCADE keeps the columns it
-- takes (decision 0029); the soft-delete setting checked against the transition tables, a
-- category denied outright refused in opaque code (decisions 0008, 0021, "Since then");
-- alter_op marks compared as hashes (decision 0028, "Since then").
--
-- As in 7--8.sql: softguard's event triggers are off while the sections run (those the
-- installer may alter), every function a section (re)defines has its final definition,
-- and each function is defined once (in the first section that changes it).
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

-- section: restore ------------------------------------------------
-- Captured enum / reg* values put back as the values the rows held (decision 0022, "Since
-- then: restore forms"). Captures taken before this version keep their text.
-- Whether type `typ` holds an enum or reg* value, at any depth (deeper than 32: treated as
-- holding).
CREATE OR REPLACE FUNCTION softguard._restore_unstable(typ oid, depth integer DEFAULT 0) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN softguard._type_holds(typ, softguard._image_oid_types(), depth);   -- 50_alter.sql
END $$;
REVOKE ALL ON FUNCTION softguard._restore_unstable(oid, integer) FROM PUBLIC;

-- Whether `typ` is one of the types initdb pins (oids below 10000, the same in every
-- version) that hold no enum or reg* value: all but the reg* types, their arrays, and the
-- rowtypes of pg_type, pg_attribute, pg_proc, pg_class and their arrays. Answered without
-- a pg_type lookup (which costs more than the rest of _capture_columns); inlined (no SET).
CREATE OR REPLACE FUNCTION softguard._restore_pinned(typ oid) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT typ OPERATOR(pg_catalog.<) 10000::pg_catalog.oid
       AND typ OPERATOR(pg_catalog.<>) ALL ('{24,1008,2202,2207,2203,2208,2204,2209,2205,2210,2206,
           2211,3734,3735,3769,3770,4089,4090,4096,4097,4191,4192,71,210,75,270,81,272,83,273}'::pg_catalog.oid[])
$$;
REVOKE ALL ON FUNCTION softguard._restore_pinned(oid) FROM PUBLIC;

-- The columns a row capture of `rel` records (as _columns gives them), each column kept in
-- its restore form with a third element, its type's oid. One query; the recursive test
-- runs only for columns of types made after initdb's pinned ones, and the few pinned ones
-- that hold reg* values. Called once per captured statement: no SET (called from SET
-- functions).
CREATE OR REPLACE FUNCTION softguard._capture_columns(rel oid) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(pg_catalog.jsonb_agg(CASE
                       WHEN CASE WHEN softguard._restore_pinned(a.atttypid) THEN true
                                 ELSE NOT softguard._restore_unstable(a.atttypid) END
                       THEN pg_catalog.jsonb_build_array(a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod))
                       ELSE pg_catalog.jsonb_build_array(a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
                                                         a.atttypid::bigint) END ORDER BY a.attnum), '[]')
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped);
END $$;
REVOKE ALL ON FUNCTION softguard._capture_columns(oid) FROM PUBLIC;

-- An SQL expression (jsonb) giving the restore form of expression `e` of type `typ`:
-- enum: its pg_enum oid; reg*: its oid (a number; a string when it named no object already
-- at capture); domain: its base value; array: [dimensions, elements]; composite: [fields]
-- (JSON null for a NULL composite); range: [lower_inc, upper_inc, lower_inf, upper_inf,
-- lower, upper] or "empty"; multirange: [ranges]; anything else: its text in the fixed
-- formats the capture sets. SQL NULL for NULL.
CREATE OR REPLACE FUNCTION softguard._restore_form(typ oid, e text, depth integer DEFAULT 0) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t pg_type;
    sub oid;
    v text := 'sg_f' || depth;
    o text := 'sg_n' || depth;
BEGIN
    IF depth > 32 THEN
        RAISE EXCEPTION USING ERRCODE = '54001',
            MESSAGE = format('softguard: type %s nests too deeply to keep its values', typ::regtype);
    END IF;
    IF NOT softguard._restore_unstable(typ, depth) THEN
        RETURN format('pg_catalog.to_jsonb((%s)::pg_catalog.text)', e);
    END IF;
    SELECT * INTO t FROM pg_type WHERE oid = typ;
    IF t.typtype = 'e' THEN
        RETURN format('pg_catalog.to_jsonb((SELECT %1$s.oid::pg_catalog.int8 FROM pg_catalog.pg_enum %1$s'
                      ' WHERE %1$s.enumtypid = %2$s AND %1$s.enumlabel = (%3$s)::pg_catalog.text))',
                      v, typ, e);
    ELSIF typ = ANY (softguard._image_oid_types()) THEN
        -- an object that exists prints as a name, never as digits (names that could are quoted)
        RETURN format('CASE WHEN (%1$s)::pg_catalog.oid = 0 OR (%1$s)::pg_catalog.text !~ ''^[0-9]+$'''
                      ' THEN pg_catalog.to_jsonb((%1$s)::pg_catalog.oid::pg_catalog.int8)'
                      ' ELSE pg_catalog.to_jsonb((%1$s)::pg_catalog.oid::pg_catalog.text) END', e);
    ELSIF t.typtype = 'd' THEN
        RETURN softguard._restore_form(t.typbasetype,
                                       format('(%s)::%s', e, format_type(t.typbasetype, t.typtypmod)),
                                       depth + 1);
    ELSIF t.typelem <> 0 AND t.typsubscript = 'array_subscript_handler'::regproc THEN
        RETURN format('CASE WHEN (%1$s) IS NULL THEN NULL ELSE pg_catalog.jsonb_build_array('
                      'pg_catalog.array_dims(%1$s), pg_catalog.to_jsonb(ARRAY(SELECT %2$s FROM'
                      ' pg_catalog.unnest(%1$s) WITH ORDINALITY %3$s(%3$s, %4$s) ORDER BY %3$s.%4$s))) END',
                      e, softguard._restore_form(t.typelem, format('%1$s.%1$s', v), depth + 1), v, o);
    ELSIF t.typtype = 'c' THEN
        RETURN format('CASE WHEN pg_catalog.num_nulls(%s) = 1 THEN NULL ELSE pg_catalog.jsonb_build_array(%s) END',
                      e, (SELECT coalesce(string_agg(softguard._restore_form(a.atttypid,
                                                         format('(%s).%I', e, a.attname), depth + 1),
                                                     ', ' ORDER BY a.attnum), '')
                            FROM pg_attribute a
                           WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped));
    ELSIF t.typtype = 'r' THEN
        sub := (SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = typ);
        RETURN format('CASE WHEN (%1$s) IS NULL THEN NULL WHEN pg_catalog.isempty(%1$s) THEN ''"empty"''::pg_catalog.jsonb'
                      ' ELSE pg_catalog.jsonb_build_array(pg_catalog.lower_inc(%1$s), pg_catalog.upper_inc(%1$s),'
                      ' pg_catalog.lower_inf(%1$s), pg_catalog.upper_inf(%1$s), %2$s, %3$s) END',
                      e, softguard._restore_form(sub, format('pg_catalog.lower(%s)', e), depth + 1),
                      softguard._restore_form(sub, format('pg_catalog.upper(%s)', e), depth + 1));
    ELSIF t.typtype = 'm' THEN
        sub := (SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = typ);
        RETURN format('CASE WHEN (%1$s) IS NULL THEN NULL ELSE pg_catalog.to_jsonb(ARRAY(SELECT %2$s FROM'
                      ' pg_catalog.unnest(%1$s) WITH ORDINALITY %3$s(%3$s, %4$s) ORDER BY %3$s.%4$s)) END',
                      e, softguard._restore_form(sub, format('%1$s.%1$s', v), depth + 1), v, o);
    END IF;
    RAISE EXCEPTION USING ERRCODE = '0A000',
        MESSAGE = format('softguard: cannot keep a value of type %s', typ::regtype);
END $$;
REVOKE ALL ON FUNCTION softguard._restore_form(oid, text, integer) FROM PUBLIC;

-- The row text a capture of `columns` (_capture_columns) keeps of alias `p`: ROW(...)::text
-- with the marked columns in their restore form (the same text as p::text otherwise).
CREATE OR REPLACE FUNCTION softguard._capture_expr(columns jsonb, p text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'ROW(' || string_agg(CASE WHEN jsonb_array_length(c) > 2
                                     THEN softguard._restore_form((c->>2)::oid, format('%I.%I', p, c->>0))
                                     ELSE format('%I.%I', p, c->>0) END, ', ' ORDER BY o)
           || ')::pg_catalog.text'
      FROM jsonb_array_elements(columns) WITH ORDINALITY x(c, o)
$$;
REVOKE ALL ON FUNCTION softguard._capture_expr(jsonb, text) FROM PUBLIC;

-- An SQL expression of type `typ` rebuilding the value whose restore form is jsonb
-- expression `j` (_restore_form), in the catalog of now; `col` names the column in a
-- refusal. Nested values are rebuilt through their text, read back in the same session.
CREATE OR REPLACE FUNCTION softguard._restore_value(typ oid, j text, col text, depth integer DEFAULT 0)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t pg_type;
    sub oid;
    fmt text;
    v text := 'sg_f' || depth;
    o text := 'sg_n' || depth;
BEGIN
    SELECT * INTO t FROM pg_type WHERE oid = typ;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('softguard: cannot put back column %s: its type (oid %s) no longer exists',
                             col, typ);
    END IF;
    IF depth > 32 THEN
        RAISE EXCEPTION USING ERRCODE = '54001',
            MESSAGE = format('softguard: type %s nests too deeply to put its values back', typ::regtype);
    END IF;
    fmt := format_type(typ, NULL);
    IF NOT softguard._restore_unstable(typ, depth) THEN
        RETURN format('((%s) OPERATOR(pg_catalog.#>>) ''{}'')::%s', j, fmt);
    ELSIF t.typtype = 'e' THEN
        RETURN format('softguard._restore_enum(%s, %s, %L)::%s', typ, j, col, fmt);
    ELSIF typ = ANY (softguard._image_oid_types()) THEN
        RETURN format('softguard._restore_reg(%s, %s, %L)::%s', typ, j, col, fmt);
    ELSIF t.typtype = 'd' THEN
        RETURN format('(%s)::%s', softguard._restore_value(t.typbasetype, j, col, depth + 1), fmt);
    ELSIF t.typelem <> 0 AND t.typsubscript = 'array_subscript_handler'::regproc THEN
        RETURN format('softguard._restore_array(%1$s, ARRAY(SELECT (%2$s)::pg_catalog.text FROM'
                      ' pg_catalog.jsonb_array_elements((%1$s) OPERATOR(pg_catalog.->) 1) WITH ORDINALITY'
                      ' %3$s(%3$s, %4$s) ORDER BY %3$s.%4$s), %5$L)::%6$s',
                      j, softguard._restore_value(t.typelem, format('%1$s.%1$s', v), col, depth + 1),
                      v, o, (SELECT e.typdelim FROM pg_type e WHERE e.oid = t.typelem), fmt);
    ELSIF t.typtype = 'c' THEN
        RETURN format('CASE WHEN pg_catalog.jsonb_typeof(%s) = ''array'' THEN ROW(%s)::%s END',
                      j, (SELECT coalesce(string_agg(softguard._restore_value(a.atttypid,
                                                         format('(%s) OPERATOR(pg_catalog.->) %s', j, a.o - 1),
                                                         col, depth + 1),
                                                     ', ' ORDER BY a.o), '')
                            FROM (SELECT f.atttypid, row_number() OVER (ORDER BY f.attnum) AS o
                                    FROM pg_attribute f
                                   WHERE f.attrelid = t.typrelid AND f.attnum > 0
                                     AND NOT f.attisdropped) a),
                      fmt);
    ELSIF t.typtype = 'r' THEN
        sub := (SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = typ);
        RETURN format('CASE pg_catalog.jsonb_typeof(%1$s) WHEN ''string'' THEN ''empty''::%2$s'
                      ' WHEN ''array'' THEN softguard._restore_range(%1$s, (%3$s)::pg_catalog.text,'
                      ' (%4$s)::pg_catalog.text)::%2$s END',
                      j, fmt,
                      softguard._restore_value(sub, format('(%s) OPERATOR(pg_catalog.->) 4', j), col, depth + 1),
                      softguard._restore_value(sub, format('(%s) OPERATOR(pg_catalog.->) 5', j), col, depth + 1));
    ELSIF t.typtype = 'm' THEN
        sub := (SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = typ);
        RETURN format('CASE WHEN pg_catalog.jsonb_typeof(%1$s) = ''array'' THEN'
                      ' pg_catalog.concat(''{'', pg_catalog.array_to_string(ARRAY(SELECT (%2$s)::pg_catalog.text'
                      ' FROM pg_catalog.jsonb_array_elements(%1$s) WITH ORDINALITY %3$s(%3$s, %4$s)'
                      ' ORDER BY %3$s.%4$s), '',''), ''}'')::%5$s END',
                      j, softguard._restore_value(sub, format('%1$s.%1$s', v), col, depth + 1), v, o, fmt);
    END IF;
    RAISE EXCEPTION USING ERRCODE = '0A000',
        MESSAGE = format('softguard: cannot put back a value of type %s', typ::regtype);
END $$;
REVOKE ALL ON FUNCTION softguard._restore_value(oid, text, text, integer) FROM PUBLIC;

-- The current label of the member of enum `typ` that restore form `j` names.
CREATE OR REPLACE FUNCTION softguard._restore_enum(typ oid, j jsonb, col text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    label text;
BEGIN
    IF j IS NULL OR jsonb_typeof(j) = 'null' THEN
        RETURN NULL;
    END IF;
    SELECT e.enumlabel INTO label FROM pg_enum e
     WHERE e.oid = (j #>> '{}')::oid AND e.enumtypid = typ;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('softguard: cannot put back column %s: the value of enum %s it held'
                             ' no longer exists', col, typ::regtype),
            HINT = 'Nothing was changed.';
    END IF;
    RETURN label;
END $$;
REVOKE ALL ON FUNCTION softguard._restore_enum(oid, jsonb, text) FROM PUBLIC;

-- The oid of reg* type `typ` that restore form `j` names, once it is checked to exist
-- (0 and an oid that named nothing already at capture come back as they were).
CREATE OR REPLACE FUNCTION softguard._restore_reg(typ oid, j jsonb, col text) RETURNS oid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id oid;
    found boolean;
BEGIN
    IF j IS NULL OR jsonb_typeof(j) = 'null' THEN
        RETURN NULL;
    END IF;
    id := (j #>> '{}')::oid;
    IF jsonb_typeof(j) = 'string' OR id = 0 THEN
        RETURN id;
    END IF;
    found := CASE typ
        WHEN 'regclass'::regtype THEN EXISTS (SELECT FROM pg_class WHERE oid = id)
        WHEN 'regtype'::regtype THEN EXISTS (SELECT FROM pg_type WHERE oid = id)
        WHEN 'regproc'::regtype THEN EXISTS (SELECT FROM pg_proc WHERE oid = id)
        WHEN 'regprocedure'::regtype THEN EXISTS (SELECT FROM pg_proc WHERE oid = id)
        WHEN 'regoper'::regtype THEN EXISTS (SELECT FROM pg_operator WHERE oid = id)
        WHEN 'regoperator'::regtype THEN EXISTS (SELECT FROM pg_operator WHERE oid = id)
        WHEN 'regnamespace'::regtype THEN EXISTS (SELECT FROM pg_namespace WHERE oid = id)
        WHEN 'regrole'::regtype THEN EXISTS (SELECT FROM pg_roles WHERE oid = id)
        WHEN 'regconfig'::regtype THEN EXISTS (SELECT FROM pg_ts_config WHERE oid = id)
        WHEN 'regdictionary'::regtype THEN EXISTS (SELECT FROM pg_ts_dict WHERE oid = id)
        WHEN 'regcollation'::regtype THEN EXISTS (SELECT FROM pg_collation WHERE oid = id)
        ELSE false END;
    IF NOT found THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('softguard: cannot put back column %s: the object (%s %s) it held'
                             ' no longer exists', col, typ::regtype, id),
            HINT = 'Nothing was changed.';
    END IF;
    RETURN id;
END $$;
REVOKE ALL ON FUNCTION softguard._restore_reg(oid, jsonb, text) FROM PUBLIC;

-- An element or bound in array / range input syntax: double-quoted, \ and " escaped.
CREATE OR REPLACE FUNCTION softguard._restore_quote(x text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN x IS NULL THEN 'NULL'
                ELSE '"' || pg_catalog.replace(pg_catalog.replace(x, '\', '\\'), '"', '\"') || '"' END
$$;
REVOKE ALL ON FUNCTION softguard._restore_quote(text) FROM PUBLIC;

-- Array input text for restore form `j` ([dimensions, elements]) with the elements' text
-- `elems` (storage order) and delimiter `delim`: dimensions and bounds as they were.
CREATE OR REPLACE FUNCTION softguard._restore_array(j jsonb, elems text[], delim text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dims text := j->>0;
    lens integer[];
    parts text[];
    size integer;
    d integer;
BEGIN
    IF j IS NULL OR jsonb_typeof(j) <> 'array' THEN
        RETURN NULL;
    END IF;
    IF dims IS NULL THEN
        RETURN '{}';
    END IF;
    lens := ARRAY(SELECT m[2]::integer - m[1]::integer + 1
                    FROM regexp_matches(dims, '\[(-?[0-9]+):(-?[0-9]+)\]', 'g') m);
    parts := ARRAY(SELECT softguard._restore_quote(x) FROM unnest(elems) x);
    -- innermost dimension first: group `size` parts into one braced part
    FOR d IN REVERSE cardinality(lens)..1 LOOP
        size := lens[d];
        parts := ARRAY(SELECT '{' || array_to_string(parts[(g - 1) * size + 1 : g * size], delim, 'NULL') || '}'
                         FROM generate_series(1, cardinality(parts) / size) g ORDER BY g);
    END LOOP;
    RETURN dims || '=' || parts[1];
END $$;
REVOKE ALL ON FUNCTION softguard._restore_array(jsonb, text[], text) FROM PUBLIC;

-- Range input text for restore form `j` with its bounds' text `lo` and `hi`.
CREATE OR REPLACE FUNCTION softguard._restore_range(j jsonb, lo text, hi text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN (j->>0)::boolean THEN '[' ELSE '(' END
           || CASE WHEN (j->>2)::boolean THEN '' ELSE softguard._restore_quote(lo) END || ','
           || CASE WHEN (j->>3)::boolean THEN '' ELSE softguard._restore_quote(hi) END
           || CASE WHEN (j->>1)::boolean THEN ']' ELSE ')' END
$$;
REVOKE ALL ON FUNCTION softguard._restore_range(jsonb, text, text) FROM PUBLIC;

-- The select list reading captured rows through row type alias `p` (p.x, of _row_type over
-- `columns`): (p.x).* when no column is in its restore form, else each column, the marked
-- ones rebuilt (_restore_value) and named as they were. A refusal names column `rel`.col,
-- or for a column capture's value (sg_value) `rel`.`col`.
CREATE OR REPLACE FUNCTION softguard._restored_cols(columns jsonb, p text, rel text, col text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM jsonb_array_elements(columns) c WHERE jsonb_array_length(c) > 2) THEN
        RETURN format('(%I.x).*', p);
    END IF;
    RETURN (SELECT string_agg(CASE WHEN jsonb_array_length(c) > 2
                                   THEN format('%s AS %I', softguard._restore_value(
                                            (c->>2)::oid, format('(%I.x).%I', p, c->>0),
                                            format('%s.%I', rel, CASE WHEN col IS NOT NULL AND c->>0 = 'sg_value'
                                                                      THEN col ELSE c->>0 END)), c->>0)
                                   ELSE format('(%I.x).%I', p, c->>0) END, ', ' ORDER BY o)
              FROM jsonb_array_elements(columns) WITH ORDINALITY x(c, o));
END $$;
REVOKE ALL ON FUNCTION softguard._restored_cols(jsonb, text, text, text) FROM PUBLIC;

-- The rows of capture `cid` read back through row type `rtype` (_row_type over `columns`),
-- as a query: _captured_src, with the columns kept in their restore form rebuilt
-- (_restored_cols names `rel` and `col` in a refusal).
CREATE OR REPLACE FUNCTION softguard._restored_src(columns jsonb, rtype text, cid bigint, rel text,
                                        col text DEFAULT NULL)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.format('SELECT %s FROM (SELECT r."row"::%s AS x'
                             ' FROM softguard.captured_rows r WHERE r.capture_id = %s OFFSET 0) p',
                             softguard._restored_cols(columns, 'p', rel, col), rtype, cid)
$$;
REVOKE ALL ON FUNCTION softguard._restored_src(jsonb, text, bigint, text, text) FROM PUBLIC;

-- What a column capture keeps of column `col` of `rel` over alias `p` (_capture_row): its
-- restore form when its type holds an enum or reg* value, else the value itself.
CREATE OR REPLACE FUNCTION softguard._restore_col(rel oid, col text, p text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT softguard._restore_form(a.atttypid, format('%I.%I', p, col))
                       FROM pg_attribute a
                      WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0
                        AND NOT a.attisdropped AND softguard._restore_unstable(a.atttypid)),
                    format('%I.%I', p, col))
$$;
REVOKE ALL ON FUNCTION softguard._restore_col(oid, text, text) FROM PUBLIC;

-- The mark a capture's columns give column `col` of `rel` kept by _restore_col: [its type's
-- oid] (a third element, _row_type reads it as jsonb), or [] when kept as itself.
CREATE OR REPLACE FUNCTION softguard._restore_mark(rel oid, col text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT jsonb_build_array(a.atttypid::bigint) FROM pg_attribute a
                      WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0
                        AND NOT a.attisdropped AND softguard._restore_unstable(a.atttypid)), '[]')
$$;
REVOKE ALL ON FUNCTION softguard._restore_mark(oid, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._type_holds(typ oid, leaves oid[], depth integer DEFAULT 0) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t pg_type;
BEGIN
    SELECT * INTO t FROM pg_type WHERE oid = typ;
    IF NOT FOUND OR depth > 32 THEN
        RETURN true;
    END IF;
    RETURN t.typtype = 'e'
        OR typ = ANY (leaves)
        OR (t.typtype = 'd' AND softguard._type_holds(t.typbasetype, leaves, depth + 1))
        OR (t.typelem <> 0 AND t.typsubscript = 'array_subscript_handler'::regproc
            AND softguard._type_holds(t.typelem, leaves, depth + 1))
        OR (t.typtype = 'c' AND EXISTS (SELECT FROM pg_attribute a
                                         WHERE a.attrelid = t.typrelid AND a.attnum > 0
                                           AND NOT a.attisdropped
                                           AND softguard._type_holds(a.atttypid, leaves, depth + 1)))
        OR (t.typtype = 'r' AND softguard._type_holds(
                (SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = typ), leaves, depth + 1))
        OR (t.typtype = 'm' AND softguard._type_holds(
                (SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = typ), leaves, depth + 1));
END $$;
REVOKE ALL ON FUNCTION softguard._type_holds(oid, oid[], integer) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._image_unstable(typ oid, depth integer DEFAULT 0) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT softguard._type_holds(typ, softguard._image_oid_types()
                                      || ARRAY['aclitem'::regtype, 'timestamptz'::regtype]::oid[], depth)
$$;
CREATE OR REPLACE FUNCTION softguard._row_type(columns jsonb, tag text) RETURNS text
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
CREATE OR REPLACE FUNCTION softguard._capture_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    cap text := current_setting('softguard.capture', true);
    ev text := lower(TG_OP);
    events text[];
    reg softguard.sessions;
    event text;                            -- what is recorded: ev, or 'soft_delete'
    k text;
    cur text;
    op bigint;
    op_kind text;
    cid bigint;
    n bigint;
    need bigint;                           -- bytes a small capture keeps (the budget)
    kept bigint;                           -- what the statement keeps in all (_budget_take)
    ident text;
    expires timestamptz;
    first_word text;
    sd text;
    sdi jsonb;
    sd_exact boolean;                      -- the soft-delete setting told the truth
    inh jsonb;                             -- inheritance children's rows (_inherited_claim)
    shape record;
    cols jsonb;
    info jsonb;
    stmt text;
    msg text;                              -- the operation NOTICE
    obj jsonb;
    reg_capture text[];
    lim bigint;                            -- the registration's max_rows (88_limits.sql)
    lim_by text;
    denied jsonb;                          -- tables its rules deny (88_limits.sql)
BEGIN
    -- What this session captures: its registration, plus what its setting adds (G6). The
    -- setting, written by the proxy at startup, is the fast path; a session whose setting
    -- does not name the event asks its registration, which the client cannot change. The
    -- registration also carries the session's row limit, whatever its setting says.
    events := string_to_array(replace(lower(coalesce(cap, '')), ' ', ''), ',');
    -- softguard._session(false), inlined: this runs for every uncaptured UPDATE; the row is
    -- kept for the operation's retention and address (verified there, read once)
    SELECT * INTO reg FROM softguard.sessions s WHERE s.pid = pg_backend_pid();
    IF FOUND THEN
        reg_capture := reg.capture;
        lim := reg.max_rows;
        lim_by := reg.max_rows_by;
        denied := reg.denied_tables;
    ELSE  -- behind a transaction pooler: the login role's (05_sessions.sql)
        SELECT p.capture, p.max_rows, p.max_rows_by, p.denied_tables
          INTO reg_capture, lim, lim_by, denied
          FROM softguard.pooled_roles p WHERE p.role = session_user;
    END IF;
    IF denied <> '[]' THEN
        -- an UPDATE claiming to be a soft delete (its setting, below) is the session's
        -- DELETE; it is an UPDATE too unless the transition tables prove the claim
        sd := CASE WHEN ev = 'update' AND pg_trigger_depth() = 1
                   THEN current_setting('softguard.sd_' || TG_RELID::text, true) END;
        PERFORM softguard._table_denied(denied, TG_TABLE_SCHEMA, TG_TABLE_NAME,
                                        CASE WHEN sd <> '' THEN 'delete' ELSE ev END,
                                        CASE WHEN sd <> '' THEN 'DELETE' ELSE TG_OP END);
    END IF;
    IF NOT (ev = ANY (events)) THEN
        events := events || coalesce(reg_capture, '{}');
        IF NOT (events && ARRAY['delete', 'update']) AND (lim IS NULL OR ev <> 'delete') THEN
            IF sd <> '' THEN             -- not proven here
                PERFORM softguard._table_denied(denied, TG_TABLE_SCHEMA, TG_TABLE_NAME,
                                                'update', TG_OP);
            END IF;
            RETURN NULL;
        END IF;
    END IF;
    k := (extract(epoch FROM statement_timestamp()) * 1000000)::bigint::text;
    cur := current_setting('softguard.cur_op', true);
    IF cur IS NOT NULL AND split_part(cur, '/', 1) = k THEN
        -- only an operation this transaction opened (the setting is the session's to change)
        SELECT o.id, o.kind INTO op, op_kind FROM softguard.operations o
         WHERE split_part(cur, '/', 2) ~ '^[0-9]{1,18}$'
           AND o.id = split_part(cur, '/', 2)::bigint AND o.txid = pg_current_xact_id()
           AND o.state = 'active';
    END IF;
    ident := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);

    IF ev = 'update' AND pg_trigger_depth() = 1 THEN
        IF left(current_query(), 20) = '/*softguard:delete*/' THEN
            PERFORM softguard._notice('DELETE', 'SGTAG');
        END IF;
        sd := current_setting('softguard.sd_' || TG_RELID::text, true);
        IF sd IS NOT NULL AND sd <> '' THEN
            PERFORM set_config('softguard.sd_' || TG_RELID::text, '', true);
            sdi := sd::jsonb;
            shape := softguard._sd_shape(TG_RELID, sdi);
            IF shape.key IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('softguard: cannot soft-delete from %s: it has no primary key'
                                     ' or unique NOT NULL key to find the rows by', ident);
            END IF;
            -- the session can write the setting: a statement that did more than mark rows
            -- is the UPDATE it is, captured whole whatever the session captures ...
            EXECUTE shape.exact INTO sd_exact;
            IF denied <> '[]' AND NOT sd_exact THEN
                PERFORM softguard._table_denied(denied, TG_TABLE_SCHEMA, TG_TABLE_NAME,
                                                'update', TG_OP);
            END IF;
            -- ... except a MERGE's own UPDATE actions where the session may run UPDATEs
            -- uncaptured: its marked rows are captured, the rest as any UPDATE of it
            sd_exact := sd_exact OR ((sdi->>'verify')::boolean AND NOT ('update' = ANY (events)));
        END IF;
        IF sd_exact THEN
            -- A soft delete softguard rewrote: capture what it marked, nothing else.
            cid := nextval('softguard.captures_id_seq'::regclass);
            EXECUTE shape.capture USING cid;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = 0 THEN
                RETURN NULL;
            END IF;
            IF lim IS NOT NULL THEN        -- the rows this soft delete marked, 88_limits.sql
                PERFORM softguard._limit_rows(k, n, lim, lim_by, ident);
            END IF;
            event := 'soft_delete';
            cols := shape.columns;
            info := (sdi - 'statement') || jsonb_build_object('key', to_jsonb(shape.key));
            stmt := sdi->>'statement';
        END IF;
    END IF;

    IF event IS NULL THEN
        IF NOT (ev = ANY (events)) AND sd_exact IS NULL THEN
            -- Not captured by this session, except what a DELETE changes on other tables
            -- (ON DELETE SET NULL / SET DEFAULT): part of the DELETE's effect.
            IF ev <> 'update' OR op IS NULL OR op_kind NOT IN ('DELETE', 'MERGE') THEN
                IF lim IS NOT NULL AND ev = 'delete' THEN
                    -- a DELETE the session may run uncaptured still counts (88_limits.sql)
                    SELECT count(*) INTO n FROM sg_old;
                    PERFORM softguard._limit_rows(k, n, lim, lim_by, ident);
                END IF;
                RETURN NULL;
            END IF;
        END IF;
        IF lim IS NOT NULL THEN
            -- the row limit (88_limits.sql), exact, before anything is copied
            SELECT count(*) INTO n FROM sg_old;
            PERFORM softguard._limit_rows(k, n, lim, lim_by, ident);
        END IF;
        -- the capture budget (07_settings.sql), before anything is copied: a few rows are
        -- measured (cheaper than the table's size, which stats its files: decision 0024);
        -- more, from a table that fits whole, need no measuring
        SELECT count(*), coalesce(sum(pg_column_size(s.o)), 0) INTO n, need
          FROM (SELECT o FROM sg_old o LIMIT 64) s;
        IF n < 64 THEN
            IF n > 0 THEN                  -- an assignment: as cur_op's below
                kept := softguard._budget_take(k, need, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
                                                                   ELSE 'UPDATE' END, ident);
            END IF;
        ELSIF NOT softguard._budget_fits(k, TG_RELID) THEN
            SELECT coalesce(sum(pg_column_size(o)), 0) INTO n FROM sg_old o;
            PERFORM softguard._budget_take(k, n, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
                                                                ELSE 'UPDATE' END, ident);
        END IF;
        cid := nextval('softguard.captures_id_seq'::regclass);
        IF ev = 'delete' AND EXISTS (SELECT FROM pg_inherits i
                                      WHERE i.inhparent = TG_RELID OR i.inhrelid = TG_RELID) THEN
            inh := softguard._inherited_claim(TG_RELID, ev);   -- no call for a plain table
        END IF;
        -- columns holding enum / reg* values are kept in their restore form (46_restore.sql)
        cols := softguard._capture_columns(TG_RELID);
        IF inh IS NULL AND NOT cols @? '$[*][2]' THEN
        INSERT INTO softguard.captured_rows (capture_id, "row") SELECT cid, o::text FROM sg_old o;
        ELSIF inh IS NULL THEN
            EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                           ' SELECT $1, %s FROM sg_old o', softguard._capture_expr(cols, 'o')) USING cid;
        ELSE cols := softguard._columns(TG_RELID);     -- inherited rows: as their text
            EXECUTE softguard._inherited_sql(TG_RELID, inh) USING cid; END IF;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 AND inh IS NULL THEN
            RETURN NULL;                   -- removed nothing: records nothing
        END IF;
        IF ev = 'update' THEN EXECUTE softguard._key_change_sql(TG_RELID, true) INTO info;
            IF info IS NOT NULL THEN EXECUTE softguard._key_change_sql(TG_RELID, false) INTO info; END IF; END IF;
        event := ev;
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
            stmt := current_query();
            IF left(stmt, 17) = '/*softguard:text=' THEN   -- else it is its own text: no call
                stmt := softguard._client_text(stmt);
            END IF;
            first_word := upper(substring(stmt FROM '^\s*([A-Za-z]+)'));
            op_kind := CASE WHEN first_word = 'MERGE' THEN 'MERGE' ELSE TG_OP END;
        END IF;
        IF reg.pid IS NULL OR NOT coalesce(softguard._session_verified(reg), false) THEN
            reg := softguard._session(true);   -- not this backend's row, or pooled
        END IF;
        expires := now() + softguard._retention(
            reg, nullif(current_setting('softguard.retention', true), '')::integer);
        INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                          client_addr, statement, kind, objects, row_counts,
                                          restore)
        VALUES (expires, session_user, softguard._client_role(),
                current_setting('application_name', true),
                softguard._client_addr(reg),
                coalesce(stmt, ''), op_kind,
                jsonb_build_array(obj),
                jsonb_build_object('estimate', false, 'tables', jsonb_build_object(ident, n)),
                '[]')
        RETURNING id INTO op;
        -- an assignment, not PERFORM (an expression: no executor run, decision 0024)
        cur := set_config('softguard.cur_op', format('%s/%s/%s', k, op, op_kind), true);
        -- no row count: later statements of the same query string may join it
        msg := softguard._op_notice(
            CASE op_kind WHEN 'DELETE' THEN 'DELETE FROM' WHEN 'MERGE' THEN 'MERGE INTO'
                         ELSE 'UPDATE' END,
            ident || CASE WHEN event = 'soft_delete'
                          THEN format(' (soft delete: %s set)', quote_ident(sdi->>'column'))
                          ELSE '' END,
            op, expires);
        IF current_setting('client_min_messages') IN ('notice', 'log', 'debug1', 'debug2',
                                                      'debug3', 'debug4', 'debug5') THEN
            RAISE NOTICE USING MESSAGE = msg;       -- _notice's fast path, without its call
        ELSE
            PERFORM softguard._notice(msg);
        END IF;
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
    IF info ? 'appeared' OR inh IS NOT NULL THEN
        PERFORM softguard._capture_more(op, cid, TG_RELID, info, inh);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION softguard._capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    op bigint := nullif(current_setting('softguard.truncate_op', true), '')::bigint;
    cols jsonb;
    cid bigint;
    n bigint;
    ident text;
    s record;
    st record;
    size bigint;
    nested boolean := false;
BEGIN
    -- the session's max_table_bytes (88_limits.sql), before anything is copied, whether or
    -- not the TRUNCATE is captured
    PERFORM softguard._limit_table(TG_RELID, 'TRUNCATE');
    PERFORM softguard._table_denied((softguard._session(false)).denied_tables,
                                    TG_TABLE_SCHEMA, TG_TABLE_NAME, 'truncate', 'TRUNCATE');
    -- the operation truncate_op opened in this transaction; for any other TRUNCATE of a
    -- protected session (a DO block, function, procedure) the backstop opens one
    -- (85_backstop.sql), or it is not captured (NULL: a session that is not protected)
    PERFORM FROM softguard.operations o
      WHERE o.id = op AND o.kind = 'TRUNCATE' AND o.txid = pg_current_xact_id();
    IF NOT FOUND THEN
        op := softguard._backstop_truncate(TG_RELID::regclass);
        IF op IS NULL THEN
            RETURN NULL;
        END IF;
        nested := true;
    END IF;
    -- the capture budget (07_settings.sql): the first table's trigger measures them all
    PERFORM softguard._budget_truncate(op, TG_RELID);
    size := pg_table_size(TG_RELID);
    ident := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    cid := nextval(pg_get_serial_sequence('softguard.captures', 'id')::regclass);
    -- columns holding enum / reg* values are kept in their restore form (46_restore.sql)
    cols := softguard._capture_columns(TG_RELID);
    EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                   ' SELECT %s, %s FROM ONLY %s t', cid,
                   CASE WHEN cols @? '$[*][2]' THEN softguard._capture_expr(cols, 't') ELSE 't::text' END,
                   TG_RELID::regclass);
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns)
    VALUES (cid, op, TG_RELID, ident, 'truncate', n, cols);
    PERFORM softguard._budget_take('op' || op, size, true, 'TRUNCATE of', ident);
    IF nested THEN
        PERFORM softguard._backstop_truncated(op, TG_RELID, ident, n);
    END IF;
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
CREATE OR REPLACE FUNCTION softguard._capture_row(rel oid, key text[], col text, ord boolean,
                                       image boolean DEFAULT false, compared boolean DEFAULT false)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'ROW(' || array_to_string(
               ARRAY(SELECT softguard._image_col(rel, k, 't')
                       FROM unnest(key) WITH ORDINALITY x(k, o) ORDER BY o)
               || CASE WHEN ord THEN ARRAY['row_number() OVER (ORDER BY t.tableoid, t.ctid)']
                       ELSE '{}'::text[] END
               || CASE WHEN image AND compared THEN softguard._image_col(rel, col, 't')
                       WHEN compared THEN format('t.%I', col)
                       -- an old value, put back by undo: its restore form (46_restore.sql)
                       ELSE softguard._restore_col(rel, col, 't') END, ', ') || ')::text'
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
    PERFORM softguard._alter_window(op, 'capture', true);
    PERFORM FROM softguard.operations
     WHERE id = op AND kind = 'ALTER TABLE' AND txid = pg_current_xact_id() AND state = 'active';
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'softguard: not an open ALTER TABLE operation';
    END IF;
    IF NOT softguard._protected_table(rel)
       OR NOT pg_has_role(softguard._client_role(), (SELECT relowner FROM pg_class WHERE oid = rel), 'USAGE') THEN
        PERFORM softguard._alter_window(op, 'capture', false);
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
        PERFORM softguard._alter_window(op, 'capture', false);
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
                   cid, softguard._capture_row(rel, key, a.attname, image, image), rel::regclass);
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns, info)
    VALUES (cid, op, rel, ident, 'column', n,
            (SELECT jsonb_agg(jsonb_build_array(k, format_type(at.atttypid, at.atttypmod)) ORDER BY x.ord)
               FROM unnest(key) WITH ORDINALITY x(k, ord)
               JOIN pg_attribute at ON at.attrelid = rel AND at.attname = x.k)
            || CASE WHEN image THEN '[["sg_ord", "bigint"]]'::jsonb ELSE '[]' END
            || jsonb_build_array(jsonb_build_array('sg_value', a.typ)
                                 || softguard._restore_mark(rel, a.attname)),
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
    PERFORM softguard._alter_window(op, 'capture', false);
    RETURN cid;
END $$;
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
            src := format('SELECT %s FROM (SELECT r."row"::%s AS x FROM softguard.captured_rows r'
                          ' WHERE r.capture_id = ANY (%L::bigint[]) OFFSET 0) q',
                          softguard._restored_cols(g.columns, 'q', rel::regclass::text), rtype, g.ids);
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
        src := format('SELECT DISTINCT ON (%s) * FROM (SELECT %s, p.sg_cid FROM'
                      ' (SELECT r."row"::%s AS x, r.capture_id AS sg_cid FROM softguard.captured_rows r'
                      ' WHERE r.capture_id = ANY (%L::bigint[]) OFFSET 0) p) q ORDER BY %s, q.sg_cid',
                      (SELECT string_agg(format('q.%I', x), ', ') FROM unnest(key) x),
                      softguard._restored_cols(g.columns, 'p', g.relid::regclass::text), rtype, g.ids,
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
CREATE OR REPLACE FUNCTION softguard._undo_changed(op bigint, rel oid, on_conflict text)
RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c softguard.captures;
    key text[];
    cols text[];
    ucols text[];
    rtype text;
    ktype text;
    src text;
    app text;
    gone text;
    match text;
    gmatch text;
    n_app bigint;
    n_found bigint;
    nbad bigint;
    bad text;
    ins bigint;
    upd bigint;
    inplace bigint;
    done bigint := 0;
    missing bigint := 0;
    overriding text;
    ins_sql text;     -- 'INSERT INTO rel (cols) ... FROM (': a source and ') s' follow
BEGIN
    FOR c IN SELECT * FROM softguard.captures x
              WHERE x.op_id = op AND x.relid = rel AND x.event = 'update' AND x.n_rows > 0
              ORDER BY x.id DESC LOOP
        rtype := softguard._row_type(c.columns, c.id::text);
        cols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                         AND a.attgenerated = ''
                         AND a.attname IN (SELECT x->>0 FROM jsonb_array_elements(c.columns) x)
                       ORDER BY a.attnum);
        ucols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                        WHERE a.attrelid = rel AND a.attname = ANY (cols) AND a.attidentity <> 'a'
                        ORDER BY a.attnum);
        overriding := CASE WHEN EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = rel
                                         AND a.attidentity = 'a' AND a.attname = ANY (cols))
                           THEN 'OVERRIDING SYSTEM VALUE' ELSE '' END;
        src := softguard._restored_src(c.columns, rtype, c.id, rel::regclass::text);
        ins_sql := format('INSERT INTO %s (%s) %s SELECT %s FROM (', rel::regclass,
                          (SELECT string_agg(format('%I', x), ', ') FROM unnest(cols) x),
                          overriding,
                          (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(cols) x));
        IF c.info->'key' = 'null' THEN
            -- no key: the rows it left (as many of each as it left) must still be there
            EXECUTE format(
                'WITH want AS (SELECT r."row" AS x, count(*) AS m FROM softguard.captured_rows r'
                ' WHERE r.capture_id = %s GROUP BY 1),'
                ' have AS (SELECT t.tableoid AS o, t.ctid AS tid, row_number() OVER (PARTITION BY w.x) AS i,'
                ' w.m FROM %s t JOIN want w ON w.x = ROW(%s)::text),'
                ' del AS (DELETE FROM %s t USING have h WHERE h.i <= h.m AND t.tableoid = h.o'
                ' AND t.ctid = h.tid RETURNING 1)'
                ' SELECT (SELECT coalesce(sum(m), 0) FROM want), (SELECT count(*) FROM del)',
                c.info->>'appeared', rel::regclass,
                (SELECT string_agg(format('t.%I', x->>0), ', ' ORDER BY o)
                   FROM jsonb_array_elements(c.columns) WITH ORDINALITY y(x, o)),
                rel::regclass)
              INTO n_app, n_found;
            IF n_found < n_app THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s of the %s rows it changed in %s'
                                     ' (a table without a key) are not as it left them',
                                     op, n_app - n_found, n_app, rel::regclass),
                    HINT = 'Undo the later operations that changed or deleted them first.';
            END IF;
            -- the rows gone are kept as their text (_key_change_sql): read by plain columns
            ktype := softguard._row_type((SELECT k.columns FROM softguard.captures k
                                           WHERE k.id = (c.info->>'gone')::bigint), c.id || '_g');
            EXECUTE ins_sql || softguard._captured_src(ktype, (c.info->>'gone')::bigint) || ') s';
            GET DIAGNOSTICS ins = ROW_COUNT;
            PERFORM softguard._check_fks(op, rel, softguard._captured_src(ktype, (c.info->>'gone')::bigint));
            done := done + ins;
            CONTINUE;
        END IF;
        key := CASE WHEN c.info ? 'key' THEN ARRAY(SELECT jsonb_array_elements_text(c.info->'key'))
                    ELSE softguard._row_key(rel) END;
        IF key IS NULL OR cardinality(key) = 0 THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('cannot undo operation %s: %s has no primary key to find the changed rows by',
                                 op, rel::regclass);
        END IF;
        match := (SELECT string_agg(format('t.%I = s.%I', x, x), ' AND ') FROM unnest(key) x);
        gone := NULL;
        ins := 0;
        IF c.info->>'appeared' IS NOT NULL THEN
            ktype := softguard._row_type((SELECT k.columns FROM softguard.captures k
                                           WHERE k.id = (c.info->>'appeared')::bigint), c.id || '_k');
            app := softguard._captured_src(ktype, (c.info->>'appeared')::bigint);
            gone := softguard._captured_src(ktype, (c.info->>'gone')::bigint);
            gmatch := (SELECT string_agg(format('g.%I = s.%I', x, x), ' AND ') FROM unnest(key) x);
            EXECUTE format('SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT FROM %s t WHERE %s))'
                           ' FROM (%s) s', rel::regclass, match, app)
              INTO n_app, n_found;
            IF n_found < n_app THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s of the %s rows of %s whose key it'
                                     ' changed no longer have that key (deleted or changed since)',
                                     op, n_app - n_found, n_app, rel::regclass),
                    HINT = 'Undo the later operations that changed or deleted them first.';
            END IF;
            EXECUTE format('SELECT count(*), string_agg(k, '', '') FILTER (WHERE n <= 5)'
                           ' FROM (SELECT format(%L, %s) AS k, row_number() OVER () AS n'
                           ' FROM (%s) s WHERE EXISTS (SELECT FROM %s t WHERE %s)) x',
                           '(' || array_to_string(key, ', ') || ')=(' ||
                               array_to_string(array_fill('%s'::text, ARRAY[cardinality(key)]), ', ') || ')',
                           (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(key) x),
                           gone, rel::regclass, match)
              INTO nbad, bad;
            IF nbad > 0 THEN
                RAISE EXCEPTION USING ERRCODE = '23505',
                    MESSAGE = format('cannot undo operation %s: %s of %s re-used since: %s%s',
                                     op, CASE WHEN nbad = 1 THEN '1 key' ELSE nbad || ' keys' END,
                                     rel::regclass, bad, CASE WHEN nbad > 5 THEN ', ...' ELSE '' END),
                    HINT = 'The operation changed these keys, so --on-conflict skip cannot leave'
                           ' their rows out: delete or re-key the rows that hold them now first.';
            END IF;
            EXECUTE format('DELETE FROM %s t USING (%s) s WHERE %s', rel::regclass, app, match);
            EXECUTE ins_sql || src || format(') s WHERE EXISTS (SELECT FROM (%s) g WHERE %s)', gone, gmatch);
            GET DIAGNOSTICS ins = ROW_COUNT;
        END IF;
        EXECUTE format('SELECT count(*) FROM (%s) s%s', src,
                       CASE WHEN gone IS NULL THEN ''
                            ELSE format(' WHERE NOT EXISTS (SELECT FROM (%s) g WHERE %s)', gone, gmatch) END)
          INTO inplace;
        EXECUTE format('UPDATE %s t SET (%s) = ROW(%s) FROM (%s) s WHERE %s%s',
                       rel::regclass,
                       (SELECT string_agg(format('%I', x), ', ') FROM unnest(ucols) x),
                       (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(ucols) x),
                       src, match,
                       CASE WHEN gone IS NULL THEN ''
                            ELSE format(' AND NOT EXISTS (SELECT FROM (%s) g WHERE %s)', gone, gmatch) END);
        GET DIAGNOSTICS upd = ROW_COUNT;
        PERFORM softguard._check_fks(op, rel, src);
        done := done + ins + upd;
        missing := missing + inplace - upd;
    END LOOP;
    RETURN ARRAY[softguard._step(op, 'restored', rel::regclass::text,
                 format('restored old values of %s rows of %s%s', done, rel::regclass,
                        CASE WHEN missing > 0 THEN format(' (%s no longer exist)', missing)
                             ELSE '' END), done)];
END $$;
CREATE OR REPLACE FUNCTION softguard._image_src(c softguard.captures) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nkey integer := jsonb_array_length(c.info->'key');
    cols jsonb;
BEGIN
    IF c.info->>'kind' = 'type_new' THEN
        nkey := jsonb_array_length(c.columns) - 2;
    END IF;
    cols := (SELECT jsonb_agg(CASE WHEN o <= nkey THEN jsonb_build_array('k' || o, x->1)
                                   ELSE x END ORDER BY o)
               FROM jsonb_array_elements(softguard._kept_columns(c)) WITH ORDINALITY y(x, o));
    -- an old value kept in its restore form comes out rebuilt (46_restore.sql)
    RETURN softguard._restored_src(cols, softguard._row_type(cols, 'img_' || c.id), c.id,
                                   c.relid::regclass::text, c.info->>'name');
END $$;
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
                       rel, i->>'name', softguard._image_text('t', key, c), rel,
                       softguard._image_text('s', softguard._image_keys(cardinality(key))), softguard._image_src(c));
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
    ELSIF i->>'generated' IS NULL THEN
        rtype := softguard._row_type(softguard._kept_columns(c), c.id::text);
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE %s t SET %I = s.sg_value FROM (SELECT %s FROM (SELECT r."row"::%s AS x'
                       ' FROM softguard.captured_rows r WHERE r.capture_id = %s OFFSET 0) p) s WHERE %s',
                       rel, i->>'name', softguard._restored_cols(softguard._kept_columns(c), 'p', rel::text,
                                                c.info->>'name'),
                       rtype, c.id, softguard._key_match(c, 't', 's'));
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
                       tmp_name, softguard._image_text('t', key || col, c), rel,
                       softguard._image_text('w', softguard._image_keys(nk) || 'sg_new'::text),
                       softguard._image_text('o', softguard._image_keys(nk)), softguard._image_text('o', softguard._image_keys(nk)), src_old,
                       softguard._image_text('w', softguard._image_keys(nk)), softguard._image_text('w', softguard._image_keys(nk)), src_new);
        EXECUTE format('CREATE INDEX ON %s (tid)', tmp);
    ELSE
        rt_old := softguard._row_type(softguard._kept_columns(c), c.id::text);
        rt_new := softguard._row_type(softguard._kept_columns(cn), cn.id::text);
        EXECUTE format('CREATE TEMP TABLE %I AS SELECT %s, o.sg_value'
                       ' FROM (SELECT %s FROM (SELECT r."row"::%s AS x FROM softguard.captured_rows r'
                       ' WHERE r.capture_id = %s OFFSET 0) p) o'
                       ' JOIN (SELECT (p.x).* FROM (SELECT r."row"::%s AS x FROM softguard.captured_rows r'
                       ' WHERE r.capture_id = %s OFFSET 0) p) w ON %s'
                       ' JOIN %s t ON %s'
                       ' WHERE t.%I::text IS NOT DISTINCT FROM w.sg_new::text',
                       tmp_name,
                       (SELECT string_agg(format('o.%I', k), ', ') FROM unnest(key) k),
                       softguard._restored_cols(softguard._kept_columns(c), 'p', rel::text,
                                                c.info->>'name'),
                       rt_old, c.id, rt_new, cn.id,
                       (SELECT string_agg(format('w.%I = o.%I', k, k), ' AND ') FROM unnest(key) k),
                       rel, softguard._key_match(c, 't', 'o'), col);
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
                        ELSE softguard._key_match(c, 't', 's') END)
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
                       softguard._key_match(c, 't', 's'));
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

-- end section: restore --------------------------------------------

-- section: mine ------------------------------------------------------------------------
-- Marks compared as hashes (decision 0028, "Since then").
CREATE OR REPLACE FUNCTION softguard._marked(stmt text, ctx jsonb, mark text) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k bytea;
BEGIN
    SELECT s.key INTO k FROM softguard.session_keys s
     WHERE s.pid = pg_backend_pid() AND s.backend_start = softguard._backend_start();
    IF k IS NULL THEN
        RETURN NULL;
    END IF;
    -- compared as hashes: how long a wrong mark takes to refuse says nothing of the right one
    RETURN mark IS NOT NULL
           AND sha256(convert_to(mark, 'UTF8'))
               = sha256(convert_to(encode(softguard._hmac(k, convert_to(stmt, 'UTF8') || '\x00'::bytea
                                                         || convert_to(ctx::text, 'UTF8')), 'hex'),
                                   'UTF8'));
END $$;
-- end section: mine --------------------------------------------------------------------

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
            || jsonb_build_array(jsonb_build_array('sg_value', a.typ)
                                 || softguard._restore_mark(rel, a.attname)),
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

-- section: residue ----------------------------------------------------------------------
-- The soft-delete setting is believed only as far as the transition tables bear it out
-- (decision 0008, "Since then"); a category the policy denies outright is refused by the
-- database in code the proxy cannot read (decision 0021, "Since then"). _capture_rows:
-- defined once, in section restore.
-- its result gains a column (exact): replaced, not redefined in place
DROP FUNCTION softguard._sd_shape(oid, jsonb);
CREATE OR REPLACE FUNCTION softguard._sd_shape(rel oid, info jsonb,
                                    OUT key text[], OUT columns jsonb, OUT capture text,
                                    OUT exact text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    col text := info->>'column';
    by_col text := info->>'by_column';
    others text[];
    marks text;
    unmarked text;                 -- o's row was not marked before the statement
BEGIN
    key := softguard._row_key(rel);
    IF key IS NULL THEN
        RETURN;
    END IF;
    others := ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                       AND a.attgenerated = '' AND a.attname::text IS DISTINCT FROM col
                       AND a.attname::text IS DISTINCT FROM by_col
                     ORDER BY a.attnum);
    marks := CASE WHEN by_col IS NULL THEN '%1$s.%2$I' ELSE '%1$s.%2$I, %1$s.%3$I' END;
    unmarked := CASE info->>'mark_kind'
        WHEN 'boolean' THEN pg_catalog.format('o.%I IS NOT TRUE', col)
        WHEN 'expression' THEN pg_catalog.format('o.%I IS DISTINCT FROM %L::%s', col,
            info->>'mark', softguard._sd_type(rel, col))
        ELSE pg_catalog.format('o.%I IS NULL', col) END;
    exact := pg_catalog.format(
        -- a count, not NOT EXISTS: EXISTS plans for the first row, a nested loop over
        -- the transition tables (minutes for 20,000 rows)
        'SELECT count(*) FILTER (WHERE n.%2$I IS NULL%3$s'
        ' OR NOT CASE WHEN %4$s THEN n.%5$I IS NOT DISTINCT FROM %6$L::%7$s'
        ' ELSE pg_catalog.record_image_eq(ROW(%8$s), ROW(%9$s)) END) = 0'
        ' FROM sg_old o LEFT JOIN sg_new n ON %1$s',
        (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I = n.%I', c, c), ' AND ')
           FROM unnest(key) c),
        key[1],
        CASE WHEN cardinality(others) > 0 THEN pg_catalog.format(
            ' OR NOT pg_catalog.record_image_eq(ROW(%s), ROW(%s))',
            (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I', c), ', ') FROM unnest(others) c),
            (SELECT pg_catalog.string_agg(pg_catalog.format('n.%I', c), ', ') FROM unnest(others) c))
        ELSE '' END,
        unmarked, col, info->>'mark', softguard._sd_type(rel, col),
        pg_catalog.format(marks, 'o', col, by_col), pg_catalog.format(marks, 'n', col, by_col));
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
        unmarked,
        CASE WHEN (info->>'verify')::boolean THEN pg_catalog.format(
            ' AND t.%I IS NOT DISTINCT FROM %L::%s', col, info->>'mark', softguard._sd_type(rel, col))
             ELSE '' END);
END $$;
REVOKE ALL ON FUNCTION softguard._sd_shape(oid, jsonb) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._table_denied(denied jsonb, nsp text, rel_name text, category text,
                                        verb text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e jsonb;
BEGIN
    SELECT x INTO e FROM jsonb_array_elements(denied) x
     WHERE x->>'category' = category AND (nsp || '.' || rel_name) LIKE (x->>'pattern')
       -- a category denied outright: the proxy refused it, and a person may approve it
       AND NOT (x ? 'approvable' AND softguard._approved_here())
     LIMIT 1;
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: %s %I.%I is refused by policy (%s on tables %s);'
                             ' decided by %s', verb, nsp, rel_name, category,
                             e->>'shown', coalesce(e->>'by', 'the policy')),
            DETAIL = 'The statement was rolled back: nothing was changed.',
            HINT = format('This session may not %s tables matching %s; work on other tables,'
                          ' or ask an operator.', category, e->>'shown');
    END IF;
END $$;
-- end section: residue ------------------------------------------------------------------

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
