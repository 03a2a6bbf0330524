-- Restore forms: captured values put back as the values the rows held, not as text the
-- catalog can change in between (decision 0022, "Since then: restore forms").
--
-- What always holds:
-- * A column whose type holds an enum or a reg* value, at any depth (in a domain, array,
--   composite, range or multirange), is captured in its restore form (_restore_form): a
--   jsonb built from what the value holds (an enum member or an object by its oid), and
--   marked in the capture's columns by a third element, the column type's oid
--   (_capture_columns). Every other column is kept as before, as its own text.
-- * Undo rebuilds the value from the restore form in the catalog of undo time
--   (_restore_value): the same enum member or object under its current label or name, or
--   a refusal (42704) naming the column when it no longer exists. Never another value.
-- * A table without such columns pays one catalog query per captured statement and no
--   per-row cost (its rows are captured as before, `o::text`).

-- Whether type `typ` holds an enum or reg* value, at any depth (deeper than 32: treated as
-- holding).
CREATE FUNCTION softguard._restore_unstable(typ oid, depth integer DEFAULT 0) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN softguard._type_holds(typ, softguard._image_oid_types(), depth);   -- 50_alter.sql
END $$;
REVOKE ALL ON FUNCTION softguard._restore_unstable(oid, integer) FROM PUBLIC;

-- Whether `typ` is one of the types initdb pins (oids below 10000, the same in every
-- version) that hold no enum or reg* value: all but the reg* types, their arrays, and the
-- rowtypes of pg_type, pg_attribute, pg_proc, pg_class and their arrays. Answered without
-- a pg_type lookup (which costs more than the rest of _capture_columns); inlined (no SET).
CREATE FUNCTION softguard._restore_pinned(typ oid) RETURNS boolean
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
CREATE FUNCTION softguard._capture_columns(rel oid) RETURNS jsonb
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
CREATE FUNCTION softguard._restore_form(typ oid, e text, depth integer DEFAULT 0) RETURNS text
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
CREATE FUNCTION softguard._capture_expr(columns jsonb, p text) RETURNS text
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
CREATE FUNCTION softguard._restore_value(typ oid, j text, col text, depth integer DEFAULT 0)
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
CREATE FUNCTION softguard._restore_enum(typ oid, j jsonb, col text) RETURNS text
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
CREATE FUNCTION softguard._restore_reg(typ oid, j jsonb, col text) RETURNS oid
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
CREATE FUNCTION softguard._restore_quote(x text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN x IS NULL THEN 'NULL'
                ELSE '"' || pg_catalog.replace(pg_catalog.replace(x, '\', '\\'), '"', '\"') || '"' END
$$;
REVOKE ALL ON FUNCTION softguard._restore_quote(text) FROM PUBLIC;

-- Array input text for restore form `j` ([dimensions, elements]) with the elements' text
-- `elems` (storage order) and delimiter `delim`: dimensions and bounds as they were.
CREATE FUNCTION softguard._restore_array(j jsonb, elems text[], delim text) RETURNS text
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
CREATE FUNCTION softguard._restore_range(j jsonb, lo text, hi text) RETURNS text
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
CREATE FUNCTION softguard._restored_cols(columns jsonb, p text, rel text, col text DEFAULT NULL)
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
CREATE FUNCTION softguard._restored_src(columns jsonb, rtype text, cid bigint, rel text,
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
CREATE FUNCTION softguard._restore_col(rel oid, col text, p text) RETURNS text
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
CREATE FUNCTION softguard._restore_mark(rel oid, col text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT jsonb_build_array(a.atttypid::bigint) FROM pg_attribute a
                      WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0
                        AND NOT a.attisdropped AND softguard._restore_unstable(a.atttypid)), '[]')
$$;
REVOKE ALL ON FUNCTION softguard._restore_mark(oid, text) FROM PUBLIC;
