-- Soft delete (docs/decisions/0008-soft-delete.md). Undo: 70_undo.sql (_undo_rows); purge:
-- 80_purge.sql (purge_soft_rows).
--
-- On tables configured for soft delete the proxy sends a client's DELETE as an UPDATE that
-- marks the rows (softguard/sql/soft_delete.py). What always holds here:
-- * softguard.soft_delete_begin() runs once per such statement, when its first row is
--   marked: it checks the table name resolved to the configured table, and leaves the
--   statement's mark in the transaction-local setting softguard.sd_<table oid>.
-- * The table's statement-level capture trigger (40_capture.sql's _capture_rows) takes that
--   setting (and clears it): the rows the statement marked are captured as event
--   'soft_delete' -- their key and the old values of the mark columns, nothing more --
--   in an operation of kind DELETE (MERGE for a MERGE ... DELETE) with one NOTICE.
-- * For statements sent through the extended protocol the proxy cannot tell which
--   CommandComplete belongs to which statement; the trigger tells it instead: a statement
--   whose text begins with /*softguard:delete*/ gets a private notice SGTAG before its
--   CommandComplete, and the proxy turns that tag from UPDATE n into DELETE n.
-- * Undo clears the marks this operation wrote: by key, only on rows still carrying the
--   very mark it wrote (a row un-marked and marked again since is left alone).
-- * Purge hard-deletes those rows (still carrying that mark), in batches
--   (purge_soft_rows), before purge_op marks the operation purged.


-- ---------------------------------------------------------------------------------------
-- The rewritten statement's side
-- ---------------------------------------------------------------------------------------

--   target    the table as the client named it (resolved through the session's search_path)
--   expected  the configured table it must be, schema-qualified
--   info      {"column", "mark_kind", "by_column", "by_value", "statement", "verb" (DELETE
--             or MERGE), "verify" (capture only rows now carrying the mark)} from the proxy
--   mark      the value the statement writes into the mark column (returned as is)
--   call_mark the proxy's mark of its own rewrite (docs/decisions/0031-soft-delete-bound.md):
--             hmac(session key, the statement text as sent with this argument's filler in
--             place of the mark || NUL || (info + "table")::text), 64 hex digits; anything
--             else (the filler, NULL) is an unmarked claim. Kept in the setting as "sig":
--             only the capture trigger judges it, where it can tell which statement runs.
-- SECURITY INVOKER, PUBLIC: it writes nothing to the ledger, only the setting the capture
-- trigger reads. Called (or the setting set) by hand, the UPDATE that follows really marks
-- its rows and is captured as a soft delete of them: work done, recorded. Its reader,
-- soft_delete_rows_query, is operator-only (purge's archive).
CREATE FUNCTION softguard.soft_delete_begin(target regclass, expected text, info jsonb,
                                            mark anyelement, call_mark text DEFAULT NULL)
RETURNS anyelement
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    want regclass := to_regclass(expected);
BEGIN
    IF want IS DISTINCT FROM target THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('softguard: the DELETE names %s, which is not the soft-delete table %s',
                             target, expected),
            HINT = format('Qualify the table name (DELETE FROM %s ...), or change the '
                          'search_path: softguard rewrote the statement for %s.', expected, expected);
    END IF;
    -- the UPDATE that marks the rows is captured by the table's UPDATE trigger, which
    -- exists only while UPDATEs are captured (decision 0023): never mark uncaptured
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t
                    WHERE t.tgrelid = target AND t.tgname = 'zz_softguard_capture_update'
                      AND t.tgenabled = 'A') THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('softguard: cannot soft-delete from %s: UPDATE capture is off in'
                             ' this database', expected),
            HINT = 'An operator runs softguard init --config with the configuration that '
                   'names this table under [[soft_delete]]; softguard serve switches it on '
                   'at start when it can.';
    END IF;
    PERFORM set_config('softguard.sd_' || target::oid::text,
                       (info || jsonb_build_object(
                           'table', expected, 'mark', to_jsonb(mark),
                           'by', CASE info->>'by_value'
                                     WHEN 'application_name' THEN current_setting('application_name')
                                     ELSE current_user::text END)
                        || CASE WHEN call_mark ~ '^[0-9a-f]{64}$'
                                THEN jsonb_build_object('sig', call_mark) ELSE '{}' END)::text,
                       true);
    RETURN mark;
END $$;
GRANT EXECUTE ON FUNCTION softguard.soft_delete_begin(regclass, text, jsonb, anyelement, text)
    TO PUBLIC;

CREATE FUNCTION softguard._sd_type(rel oid, col text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped);
END $$;
REVOKE ALL ON FUNCTION softguard._sd_type(oid, text) FROM PUBLIC;

-- The columns of `rel` a soft delete leaves as they were: all but the mark `col`, the
-- "deleted by" column and generated columns (they follow the rest), in column order. No
-- SET clause: called from _sd_shape and _sd_bound_sql, under the capture trigger's pinned
-- search_path.
CREATE FUNCTION softguard._sd_others(rel oid, col text, by_col text) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                    AND a.attgenerated = '' AND a.attname::text IS DISTINCT FROM col
                    AND a.attname::text IS DISTINCT FROM by_col
                  ORDER BY a.attnum);
END $$;
REVOKE ALL ON FUNCTION softguard._sd_others(oid, text, text) FROM PUBLIC;

-- What the capture trigger needs for a soft delete of table `rel` (info: the setting
-- soft_delete_begin left): the key columns, the column list of the captured rows
-- (key..., sg_old_mark, sg_old_by), the INSERT capturing them from transition table
-- sg_old ($1: the capture id), only rows that were not marked (WHERE CURRENT OF may
-- reach a marked one), and `exact`: a query answering whether the statement did only what
-- a soft delete does, so that key and marks are all undo needs.
-- The setting is the session's to write (SET, set_config, a DO block, or a call of
-- soft_delete_begin), so it is believed only as far as the transition tables bear it out:
-- every row keeps its key and its other columns byte for byte (record_image_eq: any type,
-- NULLs equal; generated columns follow the rest), an unmarked row now carries the mark
-- the setting names, a marked one is left as it was. Anything more, and the trigger
-- captures the statement as the UPDATE it is (40_capture.sql).
CREATE FUNCTION softguard._sd_shape(rel oid, info jsonb,
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
    others := softguard._sd_others(rel, col, by_col);
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

-- ---------------------------------------------------------------------------------------
-- A claim bound to softguard's own rewrite (docs/decisions/0031-soft-delete-bound.md)
-- ---------------------------------------------------------------------------------------
-- What always holds: the capture trigger skips _sd_shape's `exact` check only when
-- * the setting carries a mark ("sig") that _sd_bound finds to be this backend's HMAC of the
--   text now running (current_query(), the mark put back to the proxy's filler) and of the
--   claim's own fields: a text only the proxy sends (the client's texts cannot name
--   softguard), so the claim is the one that text makes, word for word;
-- * the UPDATE firing the trigger is that text's own statement, not one run by code it
--   calls (a function, a DO block): PG_CONTEXT shows no frame above the trigger's
--   (40_capture.sql); the proxy marks only a text of one DELETE without data-modifying WITH,
--   so that statement is the marking UPDATE, which sets the mark and deleted_by only;
-- * nothing of the table rewrites what that UPDATE writes: _sd_rewriters answers NULL;
-- * every row the UPDATE wrote carries the claimed mark (_sd_bound_sql's `marked`, one pass
--   over sg_new, no join): the one part of the claim the mark cannot bind (its value is
--   computed when the statement runs, now()).
-- With a row-level BEFORE trigger that may rewrite rows, the join runs (`changes`) and the
-- rows whose other columns changed are kept whole as well (`images`), so undo restores them.

-- The filler the proxy sends as soft_delete_begin's call_mark before it knows the text (and
-- leaves there when it cannot bind the claim): as long as a mark, so positions do not move.
-- softguard/sql/soft_delete.py's CALL_MARK_FILLER is the same text.
CREATE FUNCTION softguard._sd_filler() RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'softguard:unmarked:000000000000000000000000000000000000000000000' $$;
REVOKE ALL ON FUNCTION softguard._sd_filler() FROM PUBLIC;

-- Does the claim `sdi` (the setting, parsed) carry this backend's mark of the text running
-- now? false: no (or no key: behind a transaction pooler, or not registered). _marked's
-- check on the same pieces (_backend_key, _mark_matches), without _marked's SET clause:
-- called only from the capture trigger (SECURITY DEFINER, its search_path pinned).
CREATE FUNCTION softguard._sd_bound(sdi jsonb) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    sig text := sdi->>'sig';
    k bytea;
BEGIN
    IF sig IS NULL OR sig !~ '^[0-9a-f]{64}$' THEN
        RETURN false;
    END IF;
    k := softguard._backend_key();
    -- over the text with the mark put back to the filler, and the claim's fields but what
    -- soft_delete_begin computes as it runs (mark, by)
    RETURN k IS NOT NULL
           AND softguard._mark_matches(k, pg_catalog.replace(pg_catalog.current_query(), sig,
                                                             softguard._sd_filler()),
                                       (sdi - 'mark' - 'by' - 'sig')::text, sig);
END $$;
REVOKE ALL ON FUNCTION softguard._sd_bound(jsonb) FROM PUBLIC;

-- What of table `rel` (and of every table an UPDATE of it reaches: partitions, inheritance
-- children) can change a row other than as the UPDATE's SET list says: 'rule' (an UPDATE
-- rule, which may add statements), 'trigger' (a row-level BEFORE UPDATE trigger not
-- disabled, or BEFORE INSERT on a partition, which a row moving there fires), NULL: none.
-- Read at the end of the statement: a trigger created or enabled before it, in this
-- transaction too, is seen; one created during it cannot be (the table is in use). Not
-- disabled counts, whatever session_replication_role says: REPLICA and ALWAYS included.
CREATE FUNCTION softguard._sd_rewriters(rel oid) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    tree oid[] := ARRAY[rel];
BEGIN
    -- plpgsql, not sql: its queries' plans are kept for the session (an SQL function's are
    -- made again in every transaction: 0.6 ms for a single-row soft delete). No SET clause
    -- (decision 0024): called only from the capture trigger, which pins search_path.
    IF (SELECT c.relhassubclass FROM pg_catalog.pg_class c WHERE c.oid = rel) THEN
        tree := ARRAY(WITH RECURSIVE t(relid) AS (
                          SELECT rel
                          UNION
                          SELECT i.inhrelid FROM pg_catalog.pg_inherits i
                            JOIN t ON i.inhparent = t.relid)
                      SELECT t.relid FROM t);
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_rewrite r
                WHERE r.ev_class = ANY (tree) AND r.ev_type = '2') THEN
        RETURN 'rule';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_trigger t
                 JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
                 JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
                WHERE t.tgrelid = ANY (tree) AND NOT t.tgisinternal AND t.tgenabled <> 'D'
                  AND t.tgtype & 3 = 3                              -- ROW and BEFORE
                  AND (t.tgtype & 16 = 16                           -- UPDATE
                       OR (c.relispartition AND t.tgtype & 4 = 4))  -- INSERT
                  AND p.pronamespace <> 'softguard'::pg_catalog.regnamespace) THEN
        RETURN 'trigger';
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._sd_rewriters(oid) FROM PUBLIC;

-- The queries a bound claim needs (sg_old / sg_new: the trigger's transition tables):
--   marked   whether every row written carries the claimed mark (one pass over sg_new)
--   changes  (rows whose key is gone, rows whose other columns or mark are not as the
--            claim says, their bytes) over sg_old LEFT JOIN sg_new by key
--   images   the INSERT of those rows' whole old images ($1: the capture id), in the
--            capture form of `cols` (_capture_columns)
CREATE FUNCTION softguard._sd_bound_sql(rel oid, info jsonb, key text[], cols jsonb,
                                        OUT marked text, OUT changes text, OUT images text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    col text := info->>'column';
    by_col text := info->>'by_column';
    mark text := pg_catalog.format('%L::%s', info->>'mark', softguard._sd_type(rel, col));
    others text[];
    joined text;
    changed text;
BEGIN
    marked := pg_catalog.format(
        'SELECT count(*) FILTER (WHERE n.%I IS DISTINCT FROM %s) = 0 FROM sg_new n', col, mark);
    IF cols IS NULL THEN
        RETURN;                    -- no BEFORE trigger: `marked` is all the trigger needs
    END IF;
    others := softguard._sd_others(rel, col, by_col);
    joined := (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I = n.%I', c, c), ' AND ')
                 FROM pg_catalog.unnest(key) c);
    changed := pg_catalog.format('n.%I IS NOT NULL AND (n.%I IS DISTINCT FROM %s%s)',
        key[1], col, mark,
        CASE WHEN cardinality(others) > 0 THEN pg_catalog.format(
            ' OR NOT pg_catalog.record_image_eq(ROW(%s), ROW(%s))',
            (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I', c), ', ') FROM pg_catalog.unnest(others) c),
            (SELECT pg_catalog.string_agg(pg_catalog.format('n.%I', c), ', ') FROM pg_catalog.unnest(others) c))
        ELSE '' END);
    changes := pg_catalog.format(
        'SELECT count(*) FILTER (WHERE n.%1$I IS NULL), count(*) FILTER (WHERE %2$s),'
        ' coalesce(sum(pg_catalog.pg_column_size(o)) FILTER (WHERE %2$s), 0)'
        ' FROM sg_old o LEFT JOIN sg_new n ON %3$s', key[1], changed, joined);
    images := pg_catalog.format(
        'INSERT INTO softguard.captured_rows (capture_id, "row") SELECT $1, %s'
        ' FROM sg_old o LEFT JOIN sg_new n ON %s WHERE %s',
        CASE WHEN cols @? '$[*][2]' THEN softguard._capture_expr(cols, 'o') ELSE 'o::text' END,
        joined, changed);
END $$;
REVOKE ALL ON FUNCTION softguard._sd_bound_sql(oid, jsonb, text[], jsonb) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Reading a soft-delete capture back
-- ---------------------------------------------------------------------------------------

-- SQL: the captured rows of soft-delete capture `c` (key columns, sg_old_mark, sg_old_by),
-- read from softguard.captured_rows, or from `rows` (a relation with a "row" column).
CREATE FUNCTION softguard._sd_source(c softguard.captures, rows text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN format('SELECT (p.x).* FROM (SELECT r."row"::%s AS x FROM %s OFFSET 0) p',
                  softguard._row_type(c.columns, 'sd' || c.id),
                  coalesce(rows || ' r', format('softguard.captured_rows r WHERE r.capture_id = %s', c.id)));
END $$;
REVOKE ALL ON FUNCTION softguard._sd_source(softguard.captures, text) FROM PUBLIC;

-- SQL condition: live row t is captured row s and still carries the mark `c` wrote.
CREATE FUNCTION softguard._sd_match(c softguard.captures) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT string_agg(format('t.%I = s.%I', k, k), ' AND ')
              FROM jsonb_array_elements_text(c.info->'key') k)
        || format(' AND t.%I IS NOT DISTINCT FROM %L::%s', c.info->>'column', c.info->>'mark',
                  c.columns->(jsonb_array_length(c.columns) - 2)->>1);
END $$;
REVOKE ALL ON FUNCTION softguard._sd_match(softguard.captures) FROM PUBLIC;

-- The live rows a soft-delete capture still holds: for purge's archive (COPY (...) TO).
CREATE FUNCTION softguard.soft_delete_rows_query(cid bigint) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c softguard.captures;
BEGIN
    SELECT * INTO c FROM softguard.captures WHERE id = cid AND event = 'soft_delete';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN format('SELECT t.* FROM %s t WHERE EXISTS (SELECT FROM (%s) s WHERE %s)',
                  c.relid::regclass, softguard._sd_source(c), softguard._sd_match(c));
END $$;
REVOKE ALL ON FUNCTION softguard.soft_delete_rows_query(bigint) FROM PUBLIC;
