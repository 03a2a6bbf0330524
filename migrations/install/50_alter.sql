-- ALTER TABLE ... DROP COLUMN and ALTER COLUMN ... TYPE are reversible: alter_op(stmt, ctx).
-- Design: docs/decisions/0006-row-capture.md ("ALTER COLUMN ... TYPE"). Undo: 70_undo.sql
-- (_undo_drop_column, _undo_type).
--
-- What always holds:
-- * DROP COLUMN: PostgreSQL decides what the statement drops (softguard._probe); each
--   dropped column of a live table is kept: its definition and its values keyed by
--   softguard._row_key, a key without a column the statement drops or retypes; with no
--   such key, by the row image (decision 0022): every other live, non-generated column
--   the statement leaves alone (info.image). An identity column keeps its identity too:
--   kind, sequence options and state (info.identity).
-- * ALTER COLUMN ... TYPE: PostgreSQL's event triggers do not report type changes and SQL
--   is parsed only by the proxy: ctx->'columns' names them, [{"schema" (null:
--   unqualified), "table", "column"}, ...] (every ALTER COLUMN ... TYPE subcommand of the
--   statement). They are resolved as the caller sees them (its search_path); a name that
--   resolves to nothing is left to the statement's own error.
-- * For each such column of a protected table the caller owns: the table is locked
--   (ACCESS EXCLUSIVE, as the ALTER itself), then its values are copied BEFORE the
--   statement runs, keyed by a primary key or unique NOT NULL key that the statement
--   leaves unchanged, else by the row image of the columns it leaves unchanged (none
--   left: 0A000, nothing done), with the old type (format_type),
--   default and collation; AFTER the statement its new values are copied too (second
--   capture, info kind 'type_new'), so that undo can tell rows changed since.
-- * ctx->>'drop_column' = 'false' (the proxy: no DROP COLUMN subcommand) skips the probe,
--   which would otherwise run the whole ALTER (a table rewrite) twice.
-- * Undo of a type change: the column must still be there under its name with the type
--   the operation left (else 55000; 55006 with the holding operation when a later active
--   operation dropped it or changed its type again, so that --cascade works). It is
--   converted back to the old type (and collation) with `USING` a per-row cast (explicit
--   cast, else through text); then every row whose value is still the one the ALTER
--   produced gets its captured old value back, exactly (by key). Rows added or changed
--   since keep their value, converted back; when such a value does not convert back, the
--   undo is refused (55000, keys listed): undo never replaces a write made since with
--   NULL. The old default comes back; NOT NULL is kept.

-- ---------------------------------------------------------------------------------------
-- Rows without a key: the row image (decision 0022)
-- ---------------------------------------------------------------------------------------

-- The columns that identify the rows of `rel` while the column named `col` is kept (the
-- key, or the row image) and whether they are an image: _row_key without the columns in
-- `excluded` (those the statement drops or retypes), else every other live, non-generated
-- column not excluded, in attnum order (maybe none: a one-column table).
CREATE FUNCTION softguard._keep_key(rel oid, col text, excluded text[], OUT key text[],
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
REVOKE ALL ON FUNCTION softguard._keep_key(oid, text, text[]) FROM PUBLIC;

-- What undo compares a row image by (decision 0022, "Stable images"): text that nothing but
-- a write of the row can change. The text of most values depends only on the fixed output
-- formats capture and undo both set; these change without the row being written, so they
-- are compared by what the row holds instead:
-- * enum values (ALTER TYPE ... RENAME VALUE): by the oid of their pg_enum row;
-- * every reg* type (renames, and search_path decides how a name is qualified): by oid;
-- * aclitem (role renames): by role oids and privileges (aclexplode);
-- * timestamptz (TimeZone, which the session sets): by its epoch;
-- and the same nested in domains, arrays, composites, ranges and multiranges.

-- The reg* types: their value is an oid, their text a name looked up at output time.
CREATE FUNCTION softguard._image_oid_types() RETURNS oid[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT t.oid FROM pg_type t
                  WHERE t.typnamespace = 'pg_catalog'::regnamespace
                    AND t.typname IN ('regclass', 'regtype', 'regproc', 'regprocedure', 'regoper',
                                      'regoperator', 'regnamespace', 'regrole', 'regconfig',
                                      'regdictionary', 'regcollation'))
$$;
REVOKE ALL ON FUNCTION softguard._image_oid_types() FROM PUBLIC;

-- Whether type `typ` holds an enum or a value of one of the types `leaves`, at any depth in
-- domains, arrays, composites, ranges and multiranges (depth bounds the walk; deeper:
-- treated as holding). The one walk of _image_unstable and _restore_unstable (46_restore.sql).
CREATE FUNCTION softguard._type_holds(typ oid, leaves oid[], depth integer DEFAULT 0) RETURNS boolean
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

-- Whether type `typ` holds any of them (depth bounds the walk; deeper: treated as holding).
CREATE FUNCTION softguard._image_unstable(typ oid, depth integer DEFAULT 0) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT softguard._type_holds(typ, softguard._image_oid_types()
                                      || ARRAY['aclitem'::regtype, 'timestamptz'::regtype]::oid[], depth)
$$;
REVOKE ALL ON FUNCTION softguard._image_unstable(oid, integer) FROM PUBLIC;

-- An SQL expression giving the stable text of expression `e` of type `typ` (NULL when `e` is
-- NULL): `e` itself as text when nothing in the type can change its text, else built from
-- what the value holds, recursively (`depth` names the nested aliases and bounds the walk).
CREATE FUNCTION softguard._image_expr(typ oid, e text, depth integer DEFAULT 0) RETURNS text
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

-- The image expression of column `col` of `rel` over alias `p`: p.col itself, or its stable
-- text when its type holds something whose text can change (_image_unstable).
CREATE FUNCTION softguard._image_col(rel oid, col text, p text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- a column not there is left to the statement's own error (never left out of the image)
    SELECT coalesce((SELECT softguard._image_expr(a.atttypid, format('%I.%I', p, col))
                       FROM pg_attribute a
                      WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0
                        AND NOT a.attisdropped AND softguard._image_unstable(a.atttypid)),
                    format('%I.%I', p, col))
$$;
REVOKE ALL ON FUNCTION softguard._image_col(oid, text, text) FROM PUBLIC;

-- Whether _image_col keeps column `col` of `rel` as its stable text (not its own).
CREATE FUNCTION softguard._image_col_stable(rel oid, col text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT softguard._image_unstable(a.atttypid) FROM pg_attribute a
                      WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0
                        AND NOT a.attisdropped), false)
$$;
REVOKE ALL ON FUNCTION softguard._image_col_stable(oid, text) FROM PUBLIC;

-- The text of one captured row of column `col` of `rel`, keyed by `key`:
-- ROW(t.k1, ..., t.col)::text, with `ord` the row's place in (tableoid, ctid) order before
-- the value (type changes of rows without a key: undo pairs the captures taken before and
-- after the statement by it). Each key column is kept as _image_col gives it (its stable
-- text when its own text could change without the row being written); a row image
-- (`image`) with `compared` keeps the value so too: it is then only compared (the new
-- values after a type change), never put back.
CREATE FUNCTION softguard._capture_row(rel oid, key text[], col text, ord boolean,
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
REVOKE ALL ON FUNCTION softguard._capture_row(oid, text[], text, boolean, boolean, boolean) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- The call window: only alter_op's own capture phase may capture (decision 0028)
-- ---------------------------------------------------------------------------------------
-- alter_op runs as the client, so the functions it calls are executable by PUBLIC. Each
-- call of alter_op opens a window (_alter_begin: the call must carry this backend's mark,
-- 05_sessions.sql), known by a token that only alter_op's own variables hold, and moves it
-- through its phases with that token (_alter_phase):
--   probe    the probe runs the client's statement: nothing may capture
--   capture  only softguard's code runs: the capture functions accept this window's
--            operation, one call at a time (busy), none nested in another
--   execute  the client's statement runs (its USING, DEFAULT, trigger code): nothing may
--            capture; the backstop (85_backstop.sql) accepts only what this window's
--            operation kept
--   after    _capture_type_after reads the new values
-- A window lives in its transaction (rolled back with it) and is removed at the end of
-- alter_op. What the client calls itself, outside a window or with another operation, is
-- refused (42501).

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

-- Open the window of one alter_op call; `trusted`: ctx may be believed (the call carries
-- this backend's mark, or the session is not registered: unprotected, as a direct
-- connection). A registered session without a key (behind a transaction pooler) is not
-- trusted: its DROP COLUMN is probed, a type change (which only ctx names, with
-- "drop_column": false) refused.
CREATE FUNCTION softguard._alter_begin(stmt text, ctx jsonb, mark text, OUT token text,
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
GRANT EXECUTE ON FUNCTION softguard._alter_begin(text, jsonb, text) TO PUBLIC;  -- alter_op

-- The window of `token` of this backend and transaction, in `phase` and not busy; else
-- 42501. Not PUBLIC: _alter_phase and _alter_op call it as the installer.
CREATE FUNCTION softguard._alter_call(token text, phase text) RETURNS softguard.alter_calls
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

-- Move the window of `token` to its next phase (probe -> capture -> execute -> after), or
-- close it ('done', from after).
CREATE FUNCTION softguard._alter_phase(token text, phase text) RETURNS void
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
GRANT EXECUTE ON FUNCTION softguard._alter_phase(text, text) TO PUBLIC;  -- alter_op

-- The operation of the window of `token`, in its capture phase: opened on the first call
-- (the statement and ctx the window was opened with).
CREATE FUNCTION softguard._alter_op(token text) RETURNS bigint
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
GRANT EXECUTE ON FUNCTION softguard._alter_op(text) TO PUBLIC;  -- alter_op

-- A capture function's entry (`enter`) and exit: operation `op` must be the one of an open
-- window of this backend and transaction in `phase`, and no other capture runs in it (code
-- the capture itself runs, a policy's or a type's, cannot call one). Not PUBLIC: the
-- capture functions call it as the installer.
CREATE FUNCTION softguard._alter_window(op bigint, phase text, enter boolean) RETURNS void
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

-- The operation whose client statement alter_op is running now (the innermost window in
-- its execute phase), NULL when none: what the backstop accepts (85_backstop.sql).
CREATE FUNCTION softguard._alter_executing() RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.op FROM softguard.alter_calls c
     WHERE c.pid = pg_backend_pid() AND c.xid = pg_current_xact_id() AND c.phase = 'execute'
     ORDER BY c.id DESC LIMIT 1
$$;
REVOKE ALL ON FUNCTION softguard._alter_executing() FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Capture of a dropped column
-- ---------------------------------------------------------------------------------------

-- Keep column `attnum` of `rel` in operation `op`, before it is dropped: its definition
-- (type, default, collation, identity, constraints and indexes that go with it, the
-- publication memberships that use it: removed here, decision 0038) and its values, by
-- a key or row image without the columns in `excluded` (_keep_key). Returns
-- schema.table.column. Not PUBLIC: the callers check that `op` may keep this column
-- (_capture_column for alter_op's DROP COLUMN; _quarantine for the columns a DROP ...
-- CASCADE removes, decision 0029).
CREATE FUNCTION softguard._keep_column(op bigint, rel oid, attnum integer, excluded text[])
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
        -- the publications whose column list or row filter uses it lose the table, as
        -- PostgreSQL's CASCADE takes them; undo adds them back after the columns (0038)
        'publications', softguard._leave_publications(rel, a.attnum),
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
REVOKE ALL ON FUNCTION softguard._keep_column(bigint, oid, integer, text[]) FROM PUBLIC;

-- PUBLIC (alter_op runs as the client), so every input is checked: the operation is an
-- active ALTER TABLE opened by this transaction, the table a protected one the client's
-- role owns (as the DROP COLUMN itself requires), the column live and not kept already,
-- `excluded` live columns of the table (what else the statement drops or retypes: left
-- out of the key; undo refuses an image that left out a column its operation did not
-- drop or retype); the column must be gone when the transaction commits
-- (verify_operation, 00_schema.sql). Only in the capture phase of the operation's own
-- alter_op call (_alter_window).
CREATE FUNCTION softguard._capture_column(op bigint, rel oid, attnum integer,
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
REVOKE ALL ON FUNCTION softguard._capture_column(bigint, oid, integer, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._capture_column(bigint, oid, integer, text[]) TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Capture: before the statement (old values), after it (new values)
-- ---------------------------------------------------------------------------------------

-- The old values of column `attnum` of `rel`, keyed by a key outside `changed` (all the
-- columns of rel whose type the statement changes, and those it drops), else by the row
-- image of the columns outside `changed` (info.image; each row's place in (tableoid, ctid)
-- order, sg_ord, travels with it). Returns the capture id; NULL when the table is not
-- protected. The rows of inheritance children and partitions are included
-- (ALTER COLUMN ... TYPE recurses to them).
-- PUBLIC (alter_op runs as the client): the operation must be an active ALTER TABLE of
-- this transaction and the table one the client's role owns; a capture whose type change
-- is not completed by _capture_type_after does not commit (verify_operation). Only in the
-- capture phase of the operation's own alter_op call (_alter_window).
CREATE FUNCTION softguard._capture_type(op bigint, rel oid, attnum integer, changed text[])
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
REVOKE ALL ON FUNCTION softguard._capture_type(bigint, oid, integer, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._capture_type(bigint, oid, integer, text[]) TO PUBLIC;

-- After the statement: the new values of the column of capture `cid` (a second capture,
-- info kind 'type_new'), the new type and default; the operation's objects and counts.
-- Returns schema.table.column for the NOTICE.
-- PUBLIC (alter_op runs as the client): only a capture of an active operation of this
-- transaction, once, after the statement ran in the operation's own alter_op call
-- (_alter_window).
CREATE FUNCTION softguard._capture_type_after(op bigint, cid bigint) RETURNS text
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
REVOKE ALL ON FUNCTION softguard._capture_type_after(bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._capture_type_after(bigint, bigint) TO PUBLIC;

-- The columns of `rel` that an ALTER TABLE drops (`list`: what the probe found) or
-- retypes (`retypes`: alter_op's resolution of ctx->'columns'). alter_op runs as the
-- client: PUBLIC, and it only reads the catalog.
CREATE FUNCTION softguard._alter_changing(list jsonb, retypes jsonb, rel oid) RETURNS text[]
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

-- ---------------------------------------------------------------------------------------
-- alter_op: DROP COLUMN and ALTER COLUMN ... TYPE
--   stmt  the client's ALTER TABLE, verbatim
--   ctx   as truncate_op (action 'ALTER TABLE'), plus
--         "columns": [{"schema", "table", "column"}]  the ALTER COLUMN ... TYPE targets
--         "drop_column": false   the statement has no DROP COLUMN: no probe
--   mark  hmac(this backend's key, stmt, ctx) as hex (05_sessions.sql): the proxy's call;
--         without a key (not registered, or by login role) NULL. A call whose mark does
--         not match is refused (42501); an unmarked one of a session registered by login
--         role is probed whatever ctx says, and refused if ctx names type changes (0A000).
-- NOTICE: 'softguard: ALTER TABLE DROP COLUMN <cols> (restored as the last column[s])
-- [, ALTER COLUMN TYPE <cols>] is ...' or
-- 'softguard: ALTER TABLE ALTER COLUMN TYPE <cols> is reversible as operation N until D'.
-- ---------------------------------------------------------------------------------------

CREATE PROCEDURE softguard.alter_op(stmt text, ctx jsonb, mark text DEFAULT NULL)
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
