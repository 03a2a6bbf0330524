-- Version 8: row images and keys compared by what rows hold, not by text the catalog or the
-- session can change (decision 0022, "Stable images"); a captured DELETE with less
-- bookkeeping (decision 0024, "Since then"); softguard's alter_op calls marked with an HMAC
-- under a per-backend key, capture functions only inside alter_op's own window (decision
-- 0028).
--
-- As in 6--7.sql: softguard's event triggers are off while the sections run (those the
-- installer may alter; decision 0025, "Since then"), every function a section (re)defines
-- has its final definition.
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

-- section: image -----------------------------------------------------------------------
-- Row images compared by what the rows hold, not by text the catalog or the session can
-- change (decision 0022, "Stable images"). Captures taken before this version keep their
-- images as they were (_image_stable tells them by this script's applied_at).
DROP FUNCTION softguard._capture_row(text[], text, boolean);
DROP FUNCTION softguard._image_text(text, text[]);

CREATE OR REPLACE FUNCTION softguard._image_oid_types() RETURNS oid[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT t.oid FROM pg_type t
                  WHERE t.typnamespace = 'pg_catalog'::regnamespace
                    AND t.typname IN ('regclass', 'regtype', 'regproc', 'regprocedure', 'regoper',
                                      'regoperator', 'regnamespace', 'regrole', 'regconfig',
                                      'regdictionary', 'regcollation'))
$$;
REVOKE ALL ON FUNCTION softguard._image_oid_types() FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._image_unstable(typ oid, depth integer DEFAULT 0) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t pg_type;
BEGIN
    SELECT * INTO t FROM pg_type WHERE oid = typ;
    IF NOT FOUND OR depth > 32 THEN
        RETURN true;
    END IF;
    RETURN t.typtype = 'e'
        OR typ = ANY (softguard._image_oid_types())
        OR typ IN ('aclitem'::regtype, 'timestamptz'::regtype)
        OR (t.typtype = 'd' AND softguard._image_unstable(t.typbasetype, depth + 1))
        OR (t.typelem <> 0 AND t.typsubscript = 'array_subscript_handler'::regproc
            AND softguard._image_unstable(t.typelem, depth + 1))
        OR (t.typtype = 'c' AND EXISTS (SELECT FROM pg_attribute a
                                         WHERE a.attrelid = t.typrelid AND a.attnum > 0
                                           AND NOT a.attisdropped
                                           AND softguard._image_unstable(a.atttypid, depth + 1)))
        OR (t.typtype = 'r' AND softguard._image_unstable(
                (SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = typ), depth + 1))
        OR (t.typtype = 'm' AND softguard._image_unstable(
                (SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = typ), depth + 1));
END $$;
REVOKE ALL ON FUNCTION softguard._image_unstable(oid, integer) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._image_expr(typ oid, e text, depth integer DEFAULT 0) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t pg_type;
    sub oid;
    v text := 'sg_v' || depth;
    o text := 'sg_o' || depth;
BEGIN
    IF depth > 32 THEN
        RAISE EXCEPTION USING ERRCODE = '54001',
            MESSAGE = format('softguard: type %s nests too deeply to compare rows by it', typ::regtype);
    END IF;
    IF NOT softguard._image_unstable(typ, depth) THEN
        RETURN format('(%s)::pg_catalog.text', e);
    END IF;
    SELECT * INTO t FROM pg_type WHERE oid = typ;
    IF t.typtype = 'e' THEN
        -- labels are unique within the type at any moment: the label now names the row
        RETURN format('(SELECT %1$s.oid FROM pg_catalog.pg_enum %1$s WHERE %1$s.enumtypid = %2$s'
                      ' AND %1$s.enumlabel = (%3$s)::pg_catalog.text)::pg_catalog.text', v, typ, e);
    ELSIF typ = ANY (softguard._image_oid_types()) THEN
        RETURN format('(%s)::pg_catalog.oid::pg_catalog.text', e);
    ELSIF typ = 'aclitem'::regtype THEN
        RETURN format('CASE WHEN (%1$s) IS NULL THEN NULL ELSE pg_catalog.concat(''{'', (SELECT'
                      ' pg_catalog.string_agg(ROW(%2$s.grantor, %2$s.grantee, %2$s.privilege_type,'
                      ' %2$s.is_grantable)::pg_catalog.text, '','' ORDER BY %2$s.privilege_type)'
                      ' FROM pg_catalog.aclexplode(ARRAY[%1$s]) %2$s), ''}'') END', e, v);
    ELSIF typ = 'timestamptz'::regtype THEN
        -- numeric since PostgreSQL 14: exact to the microsecond, 'Infinity' for infinity
        RETURN format('EXTRACT(epoch FROM %s)::pg_catalog.text', e);
    ELSIF t.typtype = 'd' THEN
        -- read as its base type: a constraint added since (NOT VALID) is not checked here
        RETURN softguard._image_expr(t.typbasetype,
                                     format('(%s)::%s', e, format_type(t.typbasetype, t.typtypmod)),
                                     depth + 1);
    ELSIF t.typelem <> 0 AND t.typsubscript = 'array_subscript_handler'::regproc THEN
        -- the dimensions, then the elements in storage order
        RETURN format('CASE WHEN (%1$s) IS NULL THEN NULL ELSE pg_catalog.concat('
                      'pg_catalog.array_dims(%1$s), ARRAY(SELECT %2$s FROM (SELECT'
                      ' pg_catalog.unnest(%1$s) AS %3$s, pg_catalog.generate_series(1,'
                      ' pg_catalog.cardinality(%1$s)) AS %4$s) %3$s ORDER BY %3$s.%4$s)::pg_catalog.text) END',
                      e, softguard._image_expr(t.typelem, format('%1$s.%1$s', v), depth + 1), v, o);
    ELSIF t.typtype = 'c' THEN
        -- num_nulls tells a NULL composite from one whose fields are all NULL
        RETURN format('CASE WHEN pg_catalog.num_nulls(%s) = 1 THEN NULL ELSE ROW(%s)::pg_catalog.text END',
                      e, (SELECT coalesce(string_agg(softguard._image_expr(a.atttypid,
                                                         format('(%s).%I', e, a.attname), depth + 1),
                                                     ', ' ORDER BY a.attnum), '')
                            FROM pg_attribute a
                           WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped));
    ELSIF t.typtype = 'r' THEN
        sub := (SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = typ);
        RETURN format('CASE WHEN (%1$s) IS NULL THEN NULL WHEN pg_catalog.isempty(%1$s) THEN ''empty'''
                      ' ELSE ROW(pg_catalog.lower_inc(%1$s), pg_catalog.upper_inc(%1$s),'
                      ' pg_catalog.lower_inf(%1$s), pg_catalog.upper_inf(%1$s), %2$s, %3$s)::pg_catalog.text END',
                      e, softguard._image_expr(sub, format('pg_catalog.lower(%s)', e), depth + 1),
                      softguard._image_expr(sub, format('pg_catalog.upper(%s)', e), depth + 1));
    ELSIF t.typtype = 'm' THEN
        sub := (SELECT r.rngtypid FROM pg_range r WHERE r.rngmultitypid = typ);
        RETURN format('CASE WHEN (%1$s) IS NULL THEN NULL ELSE ARRAY(SELECT %2$s FROM'
                      ' pg_catalog.unnest(%1$s) WITH ORDINALITY %3$s(%3$s, %4$s) ORDER BY %3$s.%4$s)::pg_catalog.text END',
                      e, softguard._image_expr(sub, format('%1$s.%1$s', v), depth + 1), v, o);
    END IF;
    RAISE EXCEPTION USING ERRCODE = '0A000',
        MESSAGE = format('softguard: cannot compare rows by a value of type %s', typ::regtype);
END $$;
REVOKE ALL ON FUNCTION softguard._image_expr(oid, text, integer) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._image_col(rel oid, col text, p text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- a column not there is left to the statement's own error (never left out of the image)
    SELECT coalesce((SELECT softguard._image_expr(a.atttypid, format('%I.%I', p, col))
                       FROM pg_attribute a
                      WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0
                        AND NOT a.attisdropped AND softguard._image_unstable(a.atttypid)),
                    format('%I.%I', p, col))
$$;
REVOKE ALL ON FUNCTION softguard._image_col(oid, text, text) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._image_col_stable(rel oid, col text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT softguard._image_unstable(a.atttypid) FROM pg_attribute a
                      WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0
                        AND NOT a.attisdropped), false)
$$;
REVOKE ALL ON FUNCTION softguard._image_col_stable(oid, text) FROM PUBLIC;
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
                       ELSE format('t.%I', col) END, ', ') || ')::text'
$$;
REVOKE ALL ON FUNCTION softguard._capture_row(oid, text[], text, boolean, boolean, boolean) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._image_stable(c softguard.captures) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.created_at >= coalesce((SELECT min(m.applied_at) FROM softguard.migrations m
                                      WHERE m.version >= 8), '-infinity')
$$;
REVOKE ALL ON FUNCTION softguard._image_stable(softguard.captures) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._kept_columns(c softguard.captures) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p softguard.captures := c;
    n integer := jsonb_array_length(c.columns);
    nkey integer;
    image boolean;
BEGIN
    IF NOT softguard._image_stable(c) OR jsonb_typeof(c.columns) IS DISTINCT FROM 'array' THEN
        RETURN c.columns;
    END IF;
    IF c.info->>'kind' = 'type_new' THEN
        SELECT * INTO p FROM softguard.captures WHERE id = (c.info->>'of')::bigint;
    END IF;
    nkey := jsonb_array_length(coalesce(p.info->'key', '[]'));
    image := coalesce((p.info->>'image')::boolean, false);
    RETURN (SELECT jsonb_agg(CASE WHEN (o <= nkey AND (image OR softguard._image_col_stable(c.relid, x->>0)))
                                       OR (image AND c.info->>'kind' = 'type_new' AND o = n)
                                  THEN jsonb_build_array(x->0, 'text')
                                  ELSE x END ORDER BY o)
              FROM jsonb_array_elements(c.columns) WITH ORDINALITY y(x, o));
END $$;
REVOKE ALL ON FUNCTION softguard._kept_columns(softguard.captures) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._key_match(c softguard.captures, l text, r text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(format('%s = %I.%I',
                             CASE WHEN softguard._image_stable(_key_match.c)
                                  THEN softguard._image_col((_key_match.c).relid, x.k, l)
                                  ELSE format('%I.%I', l, x.k) END,
                             r, x.k), ' AND ' ORDER BY x.o)
      FROM jsonb_array_elements_text((_key_match.c).info->'key') WITH ORDINALITY x(k, o)
$$;
REVOKE ALL ON FUNCTION softguard._key_match(softguard.captures, text, text) FROM PUBLIC;
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
        -- a key compares by value (its type may have changed since); an image as text, and
        -- so does a key kept as stable text (_kept_columns), whose type must not change
        CONTINUE WHEN k.now IS NOT NULL
                  AND (k.now = k.typ
                       OR NOT coalesce((c.info->>'image')::boolean, false)
                          AND NOT (softguard._image_stable(c)
                                   AND (softguard._image_col_stable(c.relid, k.name)
                                        OR softguard._image_unstable(to_regtype(k.typ)))));
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
                               FROM jsonb_array_elements(softguard._kept_columns(c)) WITH ORDINALITY y(x, o)),
                            'img_' || c.id),
        c.id);
END $$;
CREATE OR REPLACE FUNCTION softguard._image_text(p text, cols text[], c softguard.captures DEFAULT NULL)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'ROW(' || array_to_string(ARRAY(SELECT CASE WHEN (_image_text.c).id IS NOT NULL
                                                           AND softguard._image_stable(_image_text.c)
                                                      THEN softguard._image_col((_image_text.c).relid, x.col, p)
                                                      ELSE format('%I.%I', p, x.col) END
                                             FROM unnest(cols) WITH ORDINALITY x(col, o) ORDER BY o),
                                     ', ')
           || ')::text COLLATE "C"'
$$;
REVOKE ALL ON FUNCTION softguard._image_text(text, text[], softguard.captures) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._undo_column(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dtype text;
    dom_schema text;
    dom text;
    con text;
    msg text;
BEGIN
    CASE coalesce(c.info->>'kind', 'drop')
        WHEN 'type' THEN
            RETURN softguard._undo_type(op, c);
        WHEN 'type_new' THEN
            RETURN '{}';  -- read by the undo of its 'type' capture
        ELSE
            RETURN softguard._undo_drop_column(op, c);
    END CASE;
EXCEPTION WHEN check_violation THEN
    GET STACKED DIAGNOSTICS dtype = PG_DATATYPE_NAME, dom_schema = SCHEMA_NAME,
                            con = CONSTRAINT_NAME, msg = MESSAGE_TEXT;
    IF dtype = '' THEN
        RAISE;
    END IF;
    dom := format('%I.%I', dom_schema, dtype);
    RAISE EXCEPTION USING ERRCODE = '23514',
        MESSAGE = format('cannot undo operation %s: a kept value of %s.%I breaks constraint %I of domain %s,'
                         ' which the rows held when they were kept did not have to pass (NOT VALID,'
                         ' or added since)', op, c.relid::regclass, c.info->>'name', con, dom),
        DETAIL = msg,
        HINT = format('Drop the constraint (ALTER DOMAIN %s DROP CONSTRAINT %I), undo again, then add'
                      ' it back with NOT VALID.', dom, con),
        SCHEMA = dom_schema, DATATYPE = dtype, CONSTRAINT = con;
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
        EXECUTE format('UPDATE %s t SET %I = s.sg_value FROM (SELECT (p.x).* FROM (SELECT r."row"::%s AS x'
                       ' FROM softguard.captured_rows r WHERE r.capture_id = %s OFFSET 0) p) s WHERE %s',
                       rel, i->>'name', rtype, c.id, softguard._key_match(c, 't', 's'));
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
-- end section: image -------------------------------------------------------------------

-- section: capture ----------------------------------------------------------------------
-- A captured single-row DELETE with less bookkeeping (decision 0024, "Since then"): the
-- registration is read once per capture and verified by the proof register_session told
-- the backend (no snapshot of every backend's status); the capture budget is read as an
-- expression; the client's text is decoded only when the proxy marked it; settings are
-- written in assignments, not PERFORMs (no executor run each).
ALTER TABLE softguard.sessions ADD COLUMN proof uuid;

CREATE OR REPLACE FUNCTION softguard._session_verified(r softguard.sessions) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN r.proof::text = pg_catalog.current_setting('softguard.session_proof', true)
                THEN true ELSE r.backend_start = softguard._backend_start() END
$$;
REVOKE ALL ON FUNCTION softguard._session_verified(softguard.sessions) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard.register_session(events text, retention integer, addr text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wanted text[];
    started timestamptz := softguard._backend_start();
    told uuid;
BEGIN
    wanted := softguard._categories(events);
    IF retention IS NULL OR retention < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('softguard: bad retention %s', coalesce(retention::text, 'NULL'));
    END IF;
    IF started IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = 'softguard: cannot identify this session (no backend start time)';
    END IF;
    -- Rows of sessions that have ended (or whose pid now belongs to another backend): the
    -- table stays as large as the live registered sessions.
    DELETE FROM softguard.sessions s
     WHERE NOT EXISTS (SELECT FROM pg_stat_get_activity(NULL) a
                        WHERE a.pid = s.pid AND a.backend_start = s.backend_start);
    INSERT INTO softguard.sessions AS s (pid, backend_start, capture, retention_seconds,
                                         client_addr, proof)
    VALUES (pg_backend_pid(), started, wanted, retention, nullif(addr, ''), gen_random_uuid())
    ON CONFLICT (pid) DO UPDATE SET
        capture = ARRAY(SELECT DISTINCT e FROM unnest(s.capture || excluded.capture) e
                         ORDER BY 1),
        retention_seconds = greatest(s.retention_seconds, excluded.retention_seconds),
        client_addr = coalesce(s.client_addr, excluded.client_addr),
        proof = coalesce(s.proof, excluded.proof)
    RETURNING s.proof INTO told;
    -- the session's own (not local: it outlives this transaction, and a rollback takes it
    -- back with the row)
    PERFORM set_config('softguard.session_proof', told::text, false);
    IF 'update' = ANY (wanted) THEN
        -- UPDATE capture triggers exist only while some session needs them (decision 0023)
        PERFORM softguard._set_capture_updates(true);
    END IF;
    IF 'read_only' = ANY (wanted) THEN
        -- Where a pooler dropped the proxy's startup setting (decision 0019); the proxy
        -- refuses statements that would set it back.
        PERFORM set_config('default_transaction_read_only', 'on', false);
    END IF;
END $$;
CREATE OR REPLACE FUNCTION softguard._pooled_session() RETURNS softguard.sessions
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r softguard.sessions;
BEGIN
    SELECT pg_backend_pid(), softguard._backend_start(), p.capture, p.retention_seconds,
           NULL, p.registered_at, p.max_rows, p.max_rows_by, p.max_table_bytes,
           p.max_table_bytes_by, p.denied_tables, NULL
      INTO r
      FROM softguard.pooled_roles p WHERE p.role = session_user;
    RETURN r;
END $$;
CREATE OR REPLACE FUNCTION softguard._session(verify boolean) RETURNS softguard.sessions
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r softguard.sessions;
BEGIN
    SELECT * INTO r FROM softguard.sessions s WHERE s.pid = pg_backend_pid();
    IF FOUND AND verify AND NOT coalesce(softguard._session_verified(r), false) THEN
        r := NULL;
    END IF;
    IF r.pid IS NULL THEN
        r := softguard._pooled_session();
    END IF;
    RETURN r;
END $$;
CREATE OR REPLACE FUNCTION softguard._capture_statement() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cur text;
BEGIN
    -- an assignment, not PERFORM: an expression, without an executor run (decision 0024)
    cur := pg_catalog.set_config('softguard.cur_op', '', true);
    RETURN NULL;
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
        PERFORM softguard._table_denied(denied, TG_TABLE_SCHEMA, TG_TABLE_NAME, ev, TG_OP);
    END IF;
    IF NOT (ev = ANY (events)) THEN
        events := events || coalesce(reg_capture, '{}');
        IF NOT (events && ARRAY['delete', 'update']) AND (lim IS NULL OR ev <> 'delete') THEN
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
            -- A soft delete softguard rewrote: capture what it marked, nothing else.
            PERFORM set_config('softguard.sd_' || TG_RELID::text, '', true);
            sdi := sd::jsonb;
            shape := softguard._sd_shape(TG_RELID, sdi);
            IF shape.key IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('softguard: cannot soft-delete from %s: it has no primary key'
                                     ' or unique NOT NULL key to find the rows by', ident);
            END IF;
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
        IF NOT (ev = ANY (events)) THEN
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
        IF inh IS NULL THEN
        INSERT INTO softguard.captured_rows (capture_id, "row") SELECT cid, o::text FROM sg_old o;
        ELSE EXECUTE softguard._inherited_sql(TG_RELID, inh) USING cid; END IF;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 AND inh IS NULL THEN
            RETURN NULL;                   -- removed nothing: records nothing
        END IF;
        IF ev = 'update' THEN EXECUTE softguard._key_change_sql(TG_RELID, true) INTO info;
            IF info IS NOT NULL THEN EXECUTE softguard._key_change_sql(TG_RELID, false) INTO info; END IF; END IF;
        event := ev;
        cols := softguard._columns(TG_RELID);
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
-- _budget_take returns the statement's total (was void): called in an assignment
DROP FUNCTION softguard._budget_take(text, bigint, boolean, text, text);
CREATE OR REPLACE FUNCTION softguard._budget_take(key text, need bigint, keep boolean, what text,
                                       target text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    used bigint := softguard._budget_used(key);
    -- an expression, not SELECT ... FROM: no executor run and tuplestore for one row
    -- (a third of this function's cost on a captured single-row DELETE, decision 0024)
    b record := softguard._capture_budget();
    noted text;
BEGIN
    IF used + need > b.bytes THEN
        PERFORM softguard._budget_refuse(what, target, used + need, b.bytes, b.why);
    END IF;
    IF keep THEN
        noted := set_config('softguard.capture_bytes', key || '/' || (used + need), true);
    END IF;
    RETURN used + need;
END $$;
CREATE OR REPLACE FUNCTION softguard._budget_fits(key text, rel oid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    size bigint;
    used bigint;
    b record;
    noted text;                            -- set_config's answer (an assignment: no executor)
BEGIN
    SELECT CASE WHEN c.relhassubclass THEN NULL ELSE pg_catalog.pg_table_size(c.oid) END
      INTO size FROM pg_catalog.pg_class c WHERE c.oid = rel;
    IF size IS NULL THEN
        RETURN false;
    END IF;
    used := softguard._budget_used(key);
    b := softguard._capture_budget();      -- an expression: as in _budget_take
    IF used + size > b.bytes THEN
        RETURN false;
    END IF;
    noted := set_config('softguard.capture_bytes', key || '/' || (used + size), true);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION softguard._budget_take(text, bigint, boolean, text, text) FROM PUBLIC;
-- end section: capture ------------------------------------------------------------------

-- section: forgery ------------------------------------------------------------------------
-- Calls only the proxy's rewrite makes cannot be forged by the client (decision 0028):
-- session keys, alter_op's mark and call window; the old two-argument alter_op goes.
DROP PROCEDURE softguard.alter_op(text, jsonb);

CREATE TABLE softguard.session_keys (
    pid           integer PRIMARY KEY,
    backend_start timestamptz NOT NULL,
    key           bytea NOT NULL
);
REVOKE ALL ON softguard.session_keys FROM PUBLIC;
COMMENT ON TABLE softguard.session_keys IS
    'the key of each registered backend, handed to the proxy once: it marks softguard''s own calls';

CREATE OR REPLACE FUNCTION softguard.session_key() RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    started timestamptz := softguard._backend_start();
    key bytea;
BEGIN
    IF started IS NULL
       OR NOT EXISTS (SELECT FROM softguard.sessions s
                       WHERE s.pid = pg_backend_pid() AND s.backend_start = started)
       OR EXISTS (SELECT FROM softguard.pooled_roles p WHERE p.role = session_user) THEN
        RETURN NULL;
    END IF;
    -- keys of backends that have ended (or whose pid now belongs to another backend)
    DELETE FROM softguard.session_keys k
     WHERE NOT EXISTS (SELECT FROM pg_stat_get_activity(NULL) a
                        WHERE a.pid = k.pid AND a.backend_start = k.backend_start);
    IF NOT EXISTS (SELECT FROM softguard.session_keys k WHERE k.pid = pg_backend_pid()) THEN
        -- gen_random_uuid() draws from pg_strong_random(): 244 random bits in two
        key := decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
                      'hex');
        INSERT INTO softguard.session_keys (pid, backend_start, key)
        VALUES (pg_backend_pid(), started, key);
    END IF;
    RETURN format('%s.%s:%s', pg_backend_pid(), (extract(epoch FROM started) * 1000000)::bigint,
                  encode(key, 'hex'));
END $$;
REVOKE ALL ON FUNCTION softguard.session_key() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.session_key() TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._hmac(key bytea, msg bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT sha256(p.opad || sha256(p.ipad || msg))
      FROM (SELECT decode(string_agg(lpad(to_hex(x.b # 54), 2, '0'), '' ORDER BY x.i), 'hex') AS ipad,
                   decode(string_agg(lpad(to_hex(x.b # 92), 2, '0'), '' ORDER BY x.i), 'hex') AS opad
              FROM (SELECT i, CASE WHEN i < length(k.k) THEN get_byte(k.k, i) ELSE 0 END AS b
                      FROM (SELECT CASE WHEN length(key) > 64 THEN sha256(key) ELSE key END) k(k),
                           generate_series(0, 63) i) x) p
$$;
REVOKE ALL ON FUNCTION softguard._hmac(bytea, bytea) FROM PUBLIC;
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
    RETURN mark IS NOT NULL
           AND mark = encode(softguard._hmac(k, convert_to(stmt, 'UTF8') || '\x00'::bytea
                                                || convert_to(ctx::text, 'UTF8')), 'hex');
END $$;
REVOKE ALL ON FUNCTION softguard._marked(text, jsonb, text) FROM PUBLIC;

CREATE TABLE softguard.alter_calls (
    id      bigserial PRIMARY KEY,               -- nesting order: the last is innermost
    token   text NOT NULL UNIQUE,
    pid     integer NOT NULL,
    xid     xid8 NOT NULL,
    phase   text NOT NULL CHECK (phase IN ('probe', 'capture', 'execute', 'after')),
    busy    boolean NOT NULL DEFAULT false,
    op      bigint,
    stmt    text NOT NULL,
    ctx     jsonb NOT NULL
);
REVOKE ALL ON softguard.alter_calls FROM PUBLIC;
COMMENT ON TABLE softguard.alter_calls IS
    'alter_op calls in progress: which operation may capture, in which phase (decision 0028)';

CREATE OR REPLACE FUNCTION softguard._alter_begin(stmt text, ctx jsonb, mark text, OUT token text,
                                       OUT trusted boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    marked boolean := softguard._marked(stmt, ctx, mark);
BEGIN
    IF NOT marked THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'softguard: refusing a call of softguard.alter_op that softguard did not make',
            DETAIL = 'Its mark does not match this session''s key for this statement and context.',
            HINT = 'Run the ALTER TABLE as its own statement through softguard.';
    END IF;
    trusted := coalesce(marked, (softguard._session(false)).pid IS NULL);
    IF NOT trusted AND (ctx->>'drop_column' = 'false'
                        OR (jsonb_typeof(ctx->'columns') = 'array' AND ctx->'columns' <> '[]')) THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = 'softguard cannot make this column type change reversible: this session '
                      'has no key to tell softguard''s own call from the client''s',
            DETAIL = 'Sessions registered by login role (upstream_pooler = "transaction") get no '
                     'session key; only softguard''s parse of the statement names the columns '
                     'whose type it changes.',
            HINT = 'Change column types through softguard without a transaction-mode pooler, or '
                   'give the role alter = "allow" in softguard''s policy (the change is then not '
                   'reversible).';
    END IF;
    token := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
    INSERT INTO softguard.alter_calls (token, pid, xid, phase, stmt, ctx)
    VALUES (token, pg_backend_pid(), pg_current_xact_id(), 'probe', stmt, coalesce(ctx, '{}'));
END $$;
REVOKE ALL ON FUNCTION softguard._alter_begin(text, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._alter_begin(text, jsonb, text) TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._alter_call(token text, phase text) RETURNS softguard.alter_calls
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w softguard.alter_calls;
BEGIN
    SELECT * INTO w FROM softguard.alter_calls c
     WHERE c.token = _alter_call.token AND c.pid = pg_backend_pid()
       AND c.xid = pg_current_xact_id() AND c.phase = _alter_call.phase AND NOT c.busy;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'softguard: not an open alter_op call';
    END IF;
    RETURN w;
END $$;
REVOKE ALL ON FUNCTION softguard._alter_call(text, text) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._alter_phase(token text, phase text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w softguard.alter_calls := softguard._alter_call(token, CASE phase WHEN 'capture' THEN 'probe'
                                                                     WHEN 'execute' THEN 'capture'
                                                                     WHEN 'after' THEN 'execute'
                                                                     WHEN 'done' THEN 'after' END);
BEGIN
    IF phase = 'done' THEN
        DELETE FROM softguard.alter_calls c WHERE c.id = w.id;
    ELSE
        UPDATE softguard.alter_calls c SET phase = _alter_phase.phase WHERE c.id = w.id;
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._alter_phase(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._alter_phase(text, text) TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._alter_op(token text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w softguard.alter_calls := softguard._alter_call(token, 'capture');
BEGIN
    IF w.op IS NULL THEN
        w.op := softguard._op_begin(w.stmt, w.ctx, 'ALTER TABLE');
        UPDATE softguard.alter_calls c SET op = w.op WHERE c.id = w.id;
    END IF;
    RETURN w.op;
END $$;
REVOKE ALL ON FUNCTION softguard._alter_op(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._alter_op(text) TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._alter_window(op bigint, phase text, enter boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE softguard.alter_calls c SET busy = enter
     WHERE c.op = _alter_window.op AND c.pid = pg_backend_pid()
       AND c.xid = pg_current_xact_id() AND c.phase = _alter_window.phase AND c.busy <> enter;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'softguard: not an open ALTER TABLE operation';
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._alter_window(bigint, text, boolean) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._alter_executing() RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.op FROM softguard.alter_calls c
     WHERE c.pid = pg_backend_pid() AND c.xid = pg_current_xact_id() AND c.phase = 'execute'
     ORDER BY c.id DESC LIMIT 1
$$;
REVOKE ALL ON FUNCTION softguard._alter_executing() FROM PUBLIC;

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
    PERFORM softguard._alter_window(op, 'capture', false);
    RETURN format('%s.%I', ident, a.attname);
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
    PERFORM softguard._alter_window(op, 'capture', false);
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
    PERFORM softguard._alter_window(op, 'after', true);
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
                   cn, softguard._capture_row(c.relid, key, a.attname, coalesce((c.info->>'image')::boolean, false),
                                             coalesce((c.info->>'image')::boolean, false), true),
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
    PERFORM softguard._alter_window(op, 'after', false);
    RETURN format('%s.%I', c.table_identity, a.attname);
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
    IF stack ~ '(^|\n)PL/pgSQL function softguard\.alter_op\(text,jsonb,text\) line [0-9]+ at EXECUTE' THEN
        WITH RECURSIVE up(r) AS (
            SELECT rel
            UNION
            SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.r
        ), caps AS (
            SELECT c.info FROM softguard.captures c
              JOIN softguard.operations o ON o.id = c.op_id
             WHERE o.id = softguard._alter_executing()
               AND o.txid = pg_current_xact_id() AND o.state = 'active'
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

CREATE OR REPLACE PROCEDURE softguard.alter_op(stmt text, ctx jsonb, mark text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    list jsonb := '[]';
    probed boolean := coalesce(ctx->>'drop_column', 'true') <> 'false';
    token text;
    trusted boolean;
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
    SELECT b.token, b.trusted INTO token, trusted FROM softguard._alter_begin(stmt, ctx, mark) b;
    IF probed OR NOT trusted THEN
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

    PERFORM softguard._alter_phase(token, 'capture');
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
            op := softguard._alter_op(token);
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
                op := softguard._alter_op(token);
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
    PERFORM softguard._alter_phase(token, 'execute');
    EXECUTE stmt;
    PERFORM softguard._alter_phase(token, 'after');
    PERFORM pg_catalog.set_config('client_min_messages', saved, true);
    PERFORM pg_catalog.set_config('synchronize_seqscans', saved_sync, true);
    FOREACH cid IN ARRAY cids LOOP
        retyped := retyped || softguard._capture_type_after(op, cid);
    END LOOP;
    PERFORM softguard._alter_phase(token, 'done');
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
GRANT EXECUTE ON PROCEDURE softguard.alter_op(text, jsonb, text) TO PUBLIC;
-- end section: forgery --------------------------------------------------------------------

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
