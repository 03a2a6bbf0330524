-- softguard ledger, version 5: soft delete (docs/decisions/0008-soft-delete.md).
--
-- On tables configured for soft delete the proxy sends a client's DELETE as an UPDATE that
-- marks the rows (softguard/sql/soft_delete.py). What always holds here:
-- * softguard.soft_delete_begin() runs once per such statement, when its first row is
--   marked: it checks the table name resolved to the configured table, and leaves the
--   statement's mark in the transaction-local setting softguard.sd_<table oid>.
-- * The table's statement-level capture trigger (_capture_rows, replaced below) takes that
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

-- (the ledger's own backstop refuses drops inside softguard's schemas unless told)
SELECT pg_catalog.set_config('softguard.internal', 'on', true);
ALTER TABLE softguard.captures DROP CONSTRAINT captures_event_check;
ALTER TABLE softguard.captures ADD CONSTRAINT captures_event_check
    CHECK (event IN ('delete', 'update', 'truncate', 'sequence', 'column', 'soft_delete'));
SELECT pg_catalog.set_config('softguard.internal', '', true);

-- ---------------------------------------------------------------------------------------
-- The rewritten statement's side
-- ---------------------------------------------------------------------------------------

--   target    the table as the client named it (resolved through the session's search_path)
--   expected  the configured table it must be, schema-qualified
--   info      {"column", "mark_kind", "by_column", "by_value", "statement", "verb" (DELETE
--             or MERGE), "verify" (capture only rows now carrying the mark)} from the proxy
--   mark      the value the statement writes into the mark column (returned as is)
CREATE FUNCTION softguard.soft_delete_begin(target regclass, expected text, info jsonb,
                                            mark anyelement)
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
    PERFORM set_config('softguard.sd_' || target::oid::text,
                       (info || jsonb_build_object(
                           'table', expected, 'mark', to_jsonb(mark),
                           'by', CASE info->>'by_value'
                                     WHEN 'application_name' THEN current_setting('application_name')
                                     ELSE current_user::text END))::text,
                       true);
    RETURN mark;
END $$;
GRANT EXECUTE ON FUNCTION softguard.soft_delete_begin(regclass, text, jsonb, anyelement) TO PUBLIC;

CREATE FUNCTION softguard._sd_type(rel oid, col text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped);
END $$;
REVOKE ALL ON FUNCTION softguard._sd_type(oid, text) FROM PUBLIC;

-- 0002's _row_key, answering the same, in PL/pgSQL without a SET of its own: the capture
-- trigger calls it for every soft delete, and a SQL function with a SET is planned again
-- on each call. Its callers all pin search_path; everything here is qualified.
CREATE OR REPLACE FUNCTION softguard._row_key(rel oid) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT ARRAY(SELECT a.attname::text
                           FROM pg_catalog.unnest(i.indkey) WITH ORDINALITY k(attnum, o)
                           JOIN pg_catalog.pg_attribute a
                             ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                          ORDER BY k.o)
              FROM pg_catalog.pg_index i
             WHERE i.indrelid = rel AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
               AND i.indexprs IS NULL AND 0 <> ALL (i.indkey)
               AND NOT EXISTS (SELECT FROM pg_catalog.unnest(i.indkey) k(attnum)
                                 JOIN pg_catalog.pg_attribute a
                                   ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                WHERE NOT a.attnotnull)
             ORDER BY i.indisprimary DESC, i.indnatts, i.indexrelid
             LIMIT 1);
END $$;
REVOKE ALL ON FUNCTION softguard._row_key(oid) FROM PUBLIC;

-- What the capture trigger needs for a soft delete of table `rel` (info: the setting
-- soft_delete_begin left): the key columns, the column list of the captured rows
-- (key..., sg_old_mark, sg_old_by) and the INSERT capturing them from transition table
-- sg_old ($1: the capture id); only rows that were not marked (WHERE CURRENT OF may
-- reach a marked one).
CREATE FUNCTION softguard._sd_shape(rel oid, info jsonb,
                                    OUT key text[], OUT columns jsonb, OUT capture text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    col text := info->>'column';
    by_col text := info->>'by_column';
BEGIN
    key := softguard._row_key(rel);
    IF key IS NULL THEN
        RETURN;
    END IF;
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
        CASE info->>'mark_kind'
            WHEN 'boolean' THEN pg_catalog.format('o.%I IS NOT TRUE', col)
            WHEN 'expression' THEN pg_catalog.format('o.%I IS DISTINCT FROM %L::%s', col,
                info->>'mark', softguard._sd_type(rel, col))
            ELSE pg_catalog.format('o.%I IS NULL', col) END,
        CASE WHEN (info->>'verify')::boolean THEN pg_catalog.format(
            ' AND t.%I IS NOT DISTINCT FROM %L::%s', col, info->>'mark', softguard._sd_type(rel, col))
             ELSE '' END);
END $$;
REVOKE ALL ON FUNCTION softguard._sd_shape(oid, jsonb) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- The capture trigger, with the soft-delete branch (otherwise 0002's, but the ledger row
-- of an operation's first table is written once, complete)
-- ---------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION softguard._capture_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cap text := current_setting('softguard.capture', true);
    ev text;
    event text;                            -- what is recorded: ev, or 'soft_delete'
    k text;
    cur text;
    op bigint;
    op_kind text;
    cid bigint;
    n bigint;
    ident text;
    expires timestamptz;
    first_word text;
    sd text;
    sdi jsonb;
    shape record;
    cols jsonb;
    info jsonb;
    stmt text;
    obj jsonb;
BEGIN
    IF cap IS NULL OR cap = '' THEN
        RETURN NULL;
    END IF;
    ev := lower(TG_OP);
    k := (extract(epoch FROM statement_timestamp()) * 1000000)::bigint::text;
    cur := current_setting('softguard.cur_op', true);
    IF cur IS NOT NULL AND split_part(cur, '/', 1) = k THEN
        op := split_part(cur, '/', 2)::bigint;
        op_kind := split_part(cur, '/', 3);
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
            event := 'soft_delete';
            cols := shape.columns;
            info := (sdi - 'statement') || jsonb_build_object('key', to_jsonb(shape.key));
            stmt := sdi->>'statement';
        END IF;
    END IF;

    IF event IS NULL THEN
        IF NOT (ev = ANY (string_to_array(replace(lower(cap), ' ', ''), ','))) THEN
            -- Not captured by this session, except what a DELETE changes on other tables
            -- (ON DELETE SET NULL / SET DEFAULT): part of the DELETE's effect.
            IF ev <> 'update' OR op IS NULL OR op_kind NOT IN ('DELETE', 'MERGE') THEN
                RETURN NULL;
            END IF;
        END IF;
        cid := nextval('softguard.captures_id_seq'::regclass);
        INSERT INTO softguard.captured_rows (capture_id, "row") SELECT cid, o::text FROM sg_old o;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 THEN
            RETURN NULL;                   -- removed nothing: records nothing
        END IF;
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
            first_word := upper(substring(current_query() FROM '^\s*([A-Za-z]+)'));
            op_kind := CASE WHEN first_word = 'MERGE' THEN 'MERGE' ELSE TG_OP END;
        END IF;
        expires := now() + make_interval(secs => coalesce(
            nullif(current_setting('softguard.retention', true), '')::integer, 604800));
        INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                          client_addr, statement, kind, objects, row_counts,
                                          restore)
        VALUES (expires, session_user, softguard._client_role(),
                current_setting('application_name', true),
                coalesce(nullif(current_setting('softguard.client_addr', true), ''),
                         inet_client_addr()::text),
                coalesce(stmt, current_query(), ''), op_kind, jsonb_build_array(obj),
                jsonb_build_object('estimate', false, 'tables', jsonb_build_object(ident, n)),
                '[]')
        RETURNING id INTO op;
        PERFORM set_config('softguard.cur_op', format('%s/%s/%s', k, op, op_kind), true);
        -- no row count: later statements of the same query string may join it
        PERFORM softguard._notice(format('softguard: %s %s%s is reversible as operation %s until %s',
            CASE op_kind WHEN 'DELETE' THEN 'DELETE FROM' WHEN 'MERGE' THEN 'MERGE INTO'
                         ELSE 'UPDATE' END,
            ident,
            CASE WHEN event = 'soft_delete'
                 THEN format(' (soft delete: %s set)', quote_ident(sdi->>'column')) ELSE '' END,
            op, to_char(expires, 'YYYY-MM-DD')));
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
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_rows() FROM PUBLIC;

-- 0002's _notice, without changing client_min_messages when notices are shown anyway
-- (two setting changes per captured statement).
CREATE OR REPLACE FUNCTION softguard._notice(msg text, code text DEFAULT '00000') RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    saved text := pg_catalog.current_setting('client_min_messages');
BEGIN
    IF saved IN ('notice', 'log', 'debug1', 'debug2', 'debug3', 'debug4', 'debug5') THEN
        RAISE NOTICE USING ERRCODE = code, MESSAGE = msg;
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('client_min_messages', 'notice', true);
    RAISE NOTICE USING ERRCODE = code, MESSAGE = msg;
    PERFORM pg_catalog.set_config('client_min_messages', saved, true);
END $$;

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

-- ---------------------------------------------------------------------------------------
-- Undo: clear the marks, then everything else the operation kept (0002's _undo_rows)
-- ---------------------------------------------------------------------------------------

ALTER FUNCTION softguard._undo_rows(bigint, text) RENAME TO _undo_rows_v2;

CREATE FUNCTION softguard._undo_rows(op bigint, on_conflict text) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines text[] := '{}';
    rest text[];
    c softguard.captures;
    saved_srr text := current_setting('session_replication_role');
    done bigint;
BEGIN
    PERFORM FROM softguard.operations WHERE id = op FOR UPDATE;
    FOR c IN SELECT * FROM softguard.captures
              WHERE op_id = op AND event = 'soft_delete' AND n_rows > 0 ORDER BY id LOOP
        PERFORM softguard._need_table(op, c.relid, c.table_identity);
        IF c.info ? 'purging' THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('cannot undo operation %s: purge began hard-deleting its rows'
                                 ' of %s at %s', op, c.table_identity, c.info->>'purging'),
                HINT = 'Run softguard purge again to finish it.';
        END IF;
        PERFORM set_config('session_replication_role', 'replica', true);
        EXECUTE format('UPDATE %s t SET %I = s.sg_old_mark%s FROM (%s) s WHERE %s',
                       c.relid::regclass, c.info->>'column',
                       CASE WHEN c.info->>'by_column' IS NULL THEN ''
                            ELSE format(', %I = s.sg_old_by', c.info->>'by_column') END,
                       softguard._sd_source(c), softguard._sd_match(c));
        GET DIAGNOSTICS done = ROW_COUNT;
        PERFORM set_config('session_replication_role', saved_srr, true);
        lines := lines || format('operation %s: cleared the soft-delete mark (%I) of %s rows of %s%s',
                                 op, c.info->>'column', done, c.relid::regclass,
                                 CASE WHEN done < c.n_rows THEN format(
                                     ' (%s left alone: deleted, or marked again, since)',
                                     c.n_rows - done) ELSE '' END);
    END LOOP;
    rest := softguard._undo_rows_v2(op, on_conflict);
    IF cardinality(lines) > 0 THEN
        rest := ARRAY(SELECT l FROM unnest(rest) l WHERE l NOT LIKE '%: nothing to restore');
    END IF;
    RETURN lines || rest;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_rows(bigint, text) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Purge: hard-delete the soft-deleted rows, `batch` per call (one transaction each)
-- ---------------------------------------------------------------------------------------

-- Deletes up to `batch` of the rows operation `op` soft-deleted that still carry its mark
-- (their captured keys go with them); returns how many captured rows it took: 0 when
-- none is left. The first call records 'purging' in the capture (undo is refused from
-- then on). Foreign keys act as for any DELETE (CASCADE follows; NO ACTION fails: 23503).
CREATE FUNCTION softguard.purge_soft_rows(op bigint, batch integer DEFAULT 10000,
                                          lock_timeout text DEFAULT '2s')
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    o softguard.operations;
    c softguard.captures;
    taken bigint;
    deleted bigint;
    total bigint := 0;
BEGIN
    PERFORM set_config('lock_timeout', coalesce(lock_timeout, '2s'), true);
    PERFORM set_config('softguard.capture', '', true);  -- purge's DELETE is not an operation
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF NOT FOUND OR o.state <> 'active' THEN
        RETURN 0;
    END IF;
    FOR c IN SELECT * FROM softguard.captures
              WHERE op_id = op AND event = 'soft_delete' AND released_at IS NULL ORDER BY id LOOP
        EXIT WHEN total >= batch;
        CONTINUE WHEN NOT EXISTS (SELECT FROM pg_class WHERE oid = c.relid);
        IF NOT c.info ? 'purging' THEN
            UPDATE softguard.captures SET info = info || jsonb_build_object('purging', now())
             WHERE id = c.id;
        END IF;
        EXECUTE format('WITH b AS (DELETE FROM softguard.captured_rows r WHERE r.ctid = ANY (ARRAY('
                       'SELECT x.ctid FROM softguard.captured_rows x WHERE x.capture_id = %s LIMIT %s))'
                       ' RETURNING r."row"), d AS (DELETE FROM %s t USING (%s) s WHERE %s RETURNING 1)'
                       ' SELECT (SELECT count(*) FROM b), (SELECT count(*) FROM d)',
                       c.id, batch - total, c.relid::regclass,
                       softguard._sd_source(c, 'b'),
                       softguard._sd_match(c))
            INTO taken, deleted;
        UPDATE softguard.captures
           SET info = jsonb_set(info, '{purged_rows}',
                                to_jsonb(coalesce((info->>'purged_rows')::bigint, 0) + deleted))
         WHERE id = c.id;
        total := total + taken;
    END LOOP;
    RETURN total;
END $$;
REVOKE ALL ON FUNCTION softguard.purge_soft_rows(bigint, integer, text) FROM PUBLIC;
