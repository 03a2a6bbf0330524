-- Version 10 (section sdbind): softguard's own soft-delete rewrite is bound to the
-- backend's key (decision 0031): soft_delete_begin takes the proxy's mark as a fifth
-- argument, and the capture trigger believes a marked claim made by the running text's own
-- statement without joining the transition tables (a pass over the new rows instead); on
-- tables with row-level BEFORE triggers it keeps the rows they changed whole as well.
--
-- Version 10 (bulk, decision 0030): a DELETE / TRUNCATE capture of at least 10,000 rows of
-- a plain table of built-in column types is kept typed, one table per capture in the new
-- schema softguard_rows (CREATE TABLE AS); undo and the purge archive read both forms
-- through _capture_src, purge drops the table, op_size measures it. Captures taken before
-- keep their text in softguard.captured_rows. Event triggers off meanwhile, as 8--9.sql.
--
-- Version 10 (section attack): the backstop's exemptions for softguard's own DDL are rows
-- the client cannot write, not the PL/pgSQL context stack (softguard.shell_drops,
-- softguard.probe_rewrites); where UPDATEs are denied only a soft-delete claim bound to the
-- session's key is a DELETE (section sdbind); an approval covers its own Query message, not the whole transaction;
-- undo refuses to run another non-superuser role's functions with the operator's rights.
--
-- As in 8--9.sql: softguard's event triggers are off while the sections run, every function
-- a section (re)defines has its final definition, and each function is defined once.
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

-- section: sdbind -----------------------------------------------------------------------
-- soft_delete_begin gains call_mark (DEFAULT NULL: a four-argument call is an unmarked one)
DROP FUNCTION softguard.soft_delete_begin(regclass, text, jsonb, anyelement);
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

-- The filler the proxy sends as soft_delete_begin's call_mark before it knows the text (and
-- leaves there when it cannot bind the claim): as long as a mark, so positions do not move.
-- softguard/sql/soft_delete.py's CALL_MARK_FILLER is the same text.
CREATE OR REPLACE FUNCTION softguard._sd_filler() RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'softguard:unmarked:000000000000000000000000000000000000000000000' $$;
REVOKE ALL ON FUNCTION softguard._sd_filler() FROM PUBLIC;

-- The backend's key and the mark comparison, one piece each for _marked and _sd_bound.
-- This backend's key (session_key() made it), NULL when it has none (not registered by
-- register_session, or behind a transaction pooler). No SET clause (decision 0024): its
-- callers are SECURITY DEFINER and pin search_path.
CREATE FUNCTION softguard._backend_key() RETURNS bytea
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT s.key FROM softguard.session_keys s
             WHERE s.pid = pg_catalog.pg_backend_pid()
               AND s.backend_start = softguard._backend_start());
END $$;
REVOKE ALL ON FUNCTION softguard._backend_key() FROM PUBLIC;

-- Is `mark` the hex HMAC under key `k` of stmt || NUL || ctx? Compared as hashes: how long
-- a wrong mark takes to refuse says nothing of the right one. No SET clause, as above.
CREATE FUNCTION softguard._mark_matches(k bytea, stmt text, ctx text, mark text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN mark IS NOT NULL
           AND pg_catalog.sha256(pg_catalog.convert_to(mark, 'UTF8'))
               = pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.encode(softguard._hmac(k,
                     pg_catalog.convert_to(stmt, 'UTF8') || '\x00'::bytea
                     || pg_catalog.convert_to(ctx, 'UTF8')), 'hex'), 'UTF8'));
END $$;
REVOKE ALL ON FUNCTION softguard._mark_matches(bytea, text, text, text) FROM PUBLIC;

-- Is `mark` this backend's mark of (stmt, ctx)? NULL: the backend has no key (not
-- registered by register_session, or behind a transaction pooler): the call cannot be told
-- from the client's own.
CREATE OR REPLACE FUNCTION softguard._marked(stmt text, ctx jsonb, mark text) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k bytea := softguard._backend_key();
BEGIN
    IF k IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN softguard._mark_matches(k, stmt, ctx::text, mark);
END $$;
REVOKE ALL ON FUNCTION softguard._marked(text, jsonb, text) FROM PUBLIC;

-- Does the claim `sdi` (the setting, parsed) carry this backend's mark of the text running
-- now? false: no (or no key: behind a transaction pooler, or not registered). _marked's
-- computation, inlined: called only from the capture trigger (SECURITY DEFINER, its
-- search_path pinned), without a SET clause of its own (decision 0024: each costs a setting
-- saved and restored per call).
CREATE OR REPLACE FUNCTION softguard._sd_bound(sdi jsonb) RETURNS boolean
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
CREATE OR REPLACE FUNCTION softguard._sd_rewriters(rel oid) RETURNS text
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

-- _sd_shape and _sd_bound_sql share _sd_others.
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

-- The queries a bound claim needs (sg_old / sg_new: the trigger's transition tables):
--   marked   whether every row written carries the claimed mark (one pass over sg_new)
--   changes  (rows whose key is gone, rows whose other columns or mark are not as the
--            claim says, their bytes) over sg_old LEFT JOIN sg_new by key
--   images   the INSERT of those rows' whole old images ($1: the capture id), in the
--            capture form of `cols` (_capture_columns)
CREATE OR REPLACE FUNCTION softguard._sd_bound_sql(rel oid, info jsonb, key text[], cols jsonb,
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

-- _hmac in plpgsql without a SET clause (its SQL version was planned in every transaction)
CREATE OR REPLACE FUNCTION softguard._hmac(key bytea, msg bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    k bytea := CASE WHEN pg_catalog.length(key) > 64 THEN pg_catalog.sha256(key) ELSE key END;
    ipad bytea := pg_catalog.decode(pg_catalog.repeat('36', 64), 'hex');
    opad bytea := pg_catalog.decode(pg_catalog.repeat('5c', 64), 'hex');
BEGIN
    FOR i IN 0 .. pg_catalog.length(k) - 1 LOOP
        ipad := pg_catalog.set_byte(ipad, i, pg_catalog.get_byte(k, i) # 54);
        opad := pg_catalog.set_byte(opad, i, pg_catalog.get_byte(k, i) # 92);
    END LOOP;
    RETURN pg_catalog.sha256(opad || pg_catalog.sha256(ipad || msg));
END $$;
REVOKE ALL ON FUNCTION softguard._hmac(bytea, bytea) FROM PUBLIC;

-- the capture trigger: bound claims, the claim's judgement in the capture's info
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
    stack text;                            -- PG_CONTEXT: who runs the UPDATE (0031)
    rewriters text;                        -- _sd_rewriters: what may rewrite its rows
    bsql record;                           -- _sd_bound_sql
    lost bigint;                           -- rows whose key a BEFORE trigger changed
    changed bigint;                        -- rows it changed beyond the mark: kept whole
    changed_bytes bigint;
    claim text;                            -- how the soft-delete claim was judged
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
    typed boolean := false;                -- kept in a table of its own (decision 0030)
    saved text[];
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
        -- DELETE; it is an UPDATE too unless softguard's own rewrite made the claim and the
        -- transition tables bear it out (below)
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
            -- softguard's own rewrite, bound to this backend's key, run as the text's own
            -- statement (no frame above this one: not from a function or DO block it calls)
            -- on a table nothing rewrites rows of: its claim holds once the written marks
            -- are seen (docs/decisions/0031-soft-delete-bound.md) ...
            IF sdi ? 'sig' THEN
                GET DIAGNOSTICS stack = PG_CONTEXT;
                IF strpos(stack, E'\n') = 0 AND softguard._sd_bound(sdi) THEN
                    rewriters := coalesce(softguard._sd_rewriters(TG_RELID), 'none');
                    bsql := softguard._sd_bound_sql(TG_RELID, sdi, shape.key,
                        CASE WHEN rewriters = 'trigger' THEN softguard._capture_columns(TG_RELID) END);
                END IF;
            END IF;
            IF rewriters = 'none' THEN
                EXECUTE bsql.marked INTO sd_exact;
            ELSIF rewriters = 'trigger' THEN
                -- ... with the table's BEFORE triggers, rows they changed are kept whole
                -- too (below), unless one moved a key (undo finds rows by key)
                EXECUTE bsql.changes INTO lost, changed, changed_bytes;
                sd_exact := lost = 0;
            END IF;
            claim := 'bound';
            -- the session can write the setting: a statement that did more than mark rows
            -- is the UPDATE it is, captured whole whatever the session captures ...
            IF NOT coalesce(sd_exact, false) THEN
                EXECUTE shape.exact INTO sd_exact;
                changed := NULL;
                claim := 'checked';
            END IF;
            -- where UPDATEs are denied, the check proves only that one column took one
            -- value, and the setting names that column: a claim the session wrote itself
            -- (not bound to its key) is an UPDATE too; a session without a key (behind a
            -- transaction pooler) cannot be told from the proxy (decision 0031)
            IF denied <> '[]'
               AND NOT (sd_exact AND (claim = 'bound' OR softguard._backend_key() IS NULL)) THEN
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
            IF n = 0 AND coalesce(changed, 0) = 0 THEN
                RETURN NULL;
            END IF;
            IF n > 0 THEN
                IF lim IS NOT NULL THEN    -- the rows this soft delete marked, 88_limits.sql
                    PERFORM softguard._limit_rows(k, n, lim, lim_by, ident);
                END IF;
                event := 'soft_delete';
                cols := shape.columns;
                info := (sdi - 'statement' - 'sig')
                        || jsonb_build_object('key', to_jsonb(shape.key), 'claim', claim);
                stmt := sdi->>'statement';
            END IF;
            -- else: no row newly marked, only rows marked before that the table's trigger
            -- changed (WHERE CURRENT OF): captured whole below, as the UPDATE it is
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
        ELSE
            IF NOT softguard._budget_fits(k, TG_RELID) THEN
                SELECT coalesce(sum(pg_column_size(o)), 0) INTO n FROM sg_old o;
                PERFORM softguard._budget_take(k, n, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
                                                                    ELSE 'UPDATE' END, ident);
            END IF;
            -- a large DELETE of a table of built-in types: kept typed (decision 0030)
            IF ev = 'delete' AND softguard._typed_fits(TG_RELID) THEN
                SELECT count(*) >= softguard._typed_min_rows() INTO typed
                  FROM (SELECT FROM sg_old o LIMIT softguard._typed_min_rows()) s;
            END IF;
        END IF;
        cid := nextval('softguard.captures_id_seq'::regclass);
        IF ev = 'delete' AND EXISTS (SELECT FROM pg_inherits i
                                      WHERE i.inhparent = TG_RELID OR i.inhrelid = TG_RELID) THEN
            inh := softguard._inherited_claim(TG_RELID, ev);   -- no call for a plain table
        END IF;
        -- columns holding enum / reg* values are kept in their restore form (46_restore.sql)
        cols := softguard._capture_columns(TG_RELID);
        IF typed THEN                      -- here: only this function sees sg_old
            saved := softguard._typed_begin();
            -- USING heap: not whatever access method the session's default names
            EXECUTE format('CREATE TABLE %s USING heap AS SELECT * FROM sg_old',
                           softguard._typed_name(cid));
            GET DIAGNOSTICS n = ROW_COUNT;
            PERFORM softguard._typed_end(cid, saved);
            info := '{"typed": true}';
        ELSIF inh IS NULL AND NOT cols @? '$[*][2]' THEN
        INSERT INTO softguard.captured_rows (capture_id, "row") SELECT cid, o::text FROM sg_old o;
        ELSIF inh IS NULL THEN
            EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                           ' SELECT $1, %s FROM sg_old o', softguard._capture_expr(cols, 'o')) USING cid;
        ELSE cols := softguard._columns(TG_RELID);     -- inherited rows: as their text
            EXECUTE softguard._inherited_sql(TG_RELID, inh) USING cid; END IF;
        IF NOT typed THEN
            GET DIAGNOSTICS n = ROW_COUNT;
        END IF;
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
    IF changed > 0 AND event = 'soft_delete' THEN
        -- a bound soft delete whose rows the table's own BEFORE trigger changed further:
        -- their whole old images, an 'update' capture undo restores after clearing marks
        PERFORM softguard._budget_take(k, changed_bytes, true, 'DELETE FROM', ident);
        cid := nextval('softguard.captures_id_seq'::regclass);
        cols := softguard._capture_columns(TG_RELID);
        EXECUTE bsql.images USING cid;
        GET DIAGNOSTICS n = ROW_COUNT;
        INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns)
        VALUES (cid, op, TG_RELID, ident, 'update', n, cols);
    END IF;
    IF info ? 'appeared' OR inh IS NOT NULL THEN
        PERFORM softguard._capture_more(op, cid, TG_RELID, info, inh);
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_rows() FROM PUBLIC;
-- end section: sdbind -------------------------------------------------------------------

-- section: bulk -------------------------------------------------------------------------
CREATE SCHEMA softguard_rows;
REVOKE ALL ON SCHEMA softguard_rows FROM PUBLIC;
COMMENT ON SCHEMA softguard_rows IS 'large row captures, one table per capture (do not edit by hand)';

-- The fewest rows a DELETE or TRUNCATE capture keeps typed: below it the table's catalog
-- work (CREATE TABLE AS, its guard trigger, their event triggers: ~9 ms) costs more than
-- the text it saves (decision 0030, measured).
CREATE OR REPLACE FUNCTION softguard._typed_min_rows() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 10000::pg_catalog.int8 $$;
REVOKE ALL ON FUNCTION softguard._typed_min_rows() FROM PUBLIC;

-- The table that keeps typed capture `cid`'s rows.
CREATE OR REPLACE FUNCTION softguard._typed_name(cid bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'softguard_rows.c' OPERATOR(pg_catalog.||) cid::pg_catalog.text $$;
REVOKE ALL ON FUNCTION softguard._typed_name(bigint) FROM PUBLIC;

-- May rows of `rel` be kept typed? A plain table in no inheritance tree (no parent, no
-- child, not a partition: their captures go through _inherited_claim or are read back
-- by another table's columns), every column of a type initdb pins that holds no enum or
-- reg* value (_restore_pinned: built in, the same in every version, cannot be dropped)
-- and of a collation initdb pins. Anything else (a user's type, domain, enum, composite,
-- their arrays, a user's collation) stays text. Nor while a publication FOR ALL TABLES
-- exists: it would publish every capture table, which no subscriber has. No SET: called
-- from _capture_rows and _capture_truncate, which pin search_path.
CREATE OR REPLACE FUNCTION softguard._typed_fits(rel oid) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = rel AND c.relkind = 'r'
                                                        AND NOT c.relispartition)
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_publication p WHERE p.puballtables)
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_inherits i
                        WHERE i.inhrelid = rel OR i.inhparent = rel)
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                        WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                          AND NOT (softguard._restore_pinned(a.atttypid)
                                   AND a.attcollation OPERATOR(pg_catalog.<) 10000::pg_catalog.oid));
END $$;
REVOKE ALL ON FUNCTION softguard._typed_fits(oid) FROM PUBLIC;

-- Before the CREATE TABLE AS of a typed capture (run by the capture trigger itself: only
-- it sees the transition table): softguard's own DDL, which the mode guard (87_modes.sql)
-- and the tamper guard stand aside for, and in replica mode where softguard may set it, so
-- the user's own event triggers do not see it (as _install_capture). Returns what
-- _typed_end puts back.
CREATE OR REPLACE FUNCTION softguard._typed_begin() RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    saved text := pg_catalog.current_setting('session_replication_role');
BEGIN
    PERFORM softguard._replica('replica');
    RETURN ARRAY[softguard._maintenance_begin()::text, saved];
END $$;
REVOKE ALL ON FUNCTION softguard._typed_begin() FROM PUBLIC;

-- After the CREATE TABLE AS of capture `cid`: the ledger's guard on the new table (no row
-- removed or changed outside maintenance, ENABLE ALWAYS, as guard_ledger on captured_rows),
-- then the maintenance mark and replica mode as they were. Its owner is the ledger's owner
-- (the capture functions are SECURITY DEFINER); nothing is granted on it or its schema.
CREATE OR REPLACE FUNCTION softguard._typed_end(cid bigint, saved text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text := softguard._typed_name(cid);
BEGIN
    EXECUTE pg_catalog.format('CREATE TRIGGER zz_softguard_guard_ledger BEFORE DELETE OR UPDATE'
                              ' OR TRUNCATE ON %s FOR EACH STATEMENT'
                              ' EXECUTE FUNCTION softguard._guard_ledger()', t);
    EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zz_softguard_guard_ledger', t);
    PERFORM softguard._maintenance_end(saved[1]::boolean);
    PERFORM softguard._replica(saved[2]);
END $$;
REVOKE ALL ON FUNCTION softguard._typed_end(bigint, text[]) FROM PUBLIC;

-- The rows of captures `ids` (all with column list `columns`, read through row type `rtype`
-- of _row_type) as a query of the captured columns: text captures parsed from
-- captured_rows (columns in their restore form rebuilt, _restored_cols, naming `rel`),
-- typed ones read from their tables as they are (the undo's fast path: no text at all).
CREATE OR REPLACE FUNCTION softguard._capture_src(columns jsonb, rtype text, ids bigint[], rel text)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    typed bigint[] := ARRAY(SELECT c.id FROM softguard.captures c
                             WHERE c.id = ANY (ids) AND c.info @> '{"typed": true}' ORDER BY c.id);
    texts bigint[] := ARRAY(SELECT x FROM unnest(ids) x WHERE NOT x = ANY (typed) ORDER BY x);
    parts text[] := '{}';
BEGIN
    IF cardinality(texts) > 0 THEN
        -- OFFSET 0: the row text is parsed once, not once per column
        parts := parts || format('SELECT %s FROM (SELECT r."row"::%s AS x FROM softguard.captured_rows r'
                                 ' WHERE r.capture_id = ANY (%L::bigint[]) OFFSET 0) q',
                                 softguard._restored_cols(columns, 'q', rel), rtype, texts);
    END IF;
    parts := parts || ARRAY(
        SELECT format('SELECT %s FROM %s t',
                      coalesce((SELECT string_agg(format('t.%I', c->>0), ', ' ORDER BY o)
                                  FROM jsonb_array_elements(columns) WITH ORDINALITY x(c, o)), ''),
                      softguard._typed_name(i))
          FROM unnest(typed) i ORDER BY i);
    RETURN array_to_string(parts, ' UNION ALL ');
END $$;
REVOKE ALL ON FUNCTION softguard._capture_src(jsonb, text, bigint[], text) FROM PUBLIC;

-- The rows of capture `cid` as their text, one "row" column: what captured_rows holds, or
-- for a typed capture its rows' text now (record_out in the reader's formats).
CREATE OR REPLACE FUNCTION softguard._capture_text_src(cid bigint) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT FROM softguard.captures c WHERE c.id = cid AND c.info @> '{"typed": true}') THEN
        RETURN format('SELECT t::text AS "row" FROM %s t', softguard._typed_name(cid));
    END IF;
    RETURN format('SELECT r."row" FROM softguard.captured_rows r WHERE r.capture_id = %s', cid);
END $$;
REVOKE ALL ON FUNCTION softguard._capture_text_src(bigint) FROM PUBLIC;

-- _capture_rows (the typed branch too): its final definition is in section sdbind above.
REVOKE ALL ON FUNCTION softguard._capture_rows() FROM PUBLIC;

-- The BEFORE TRUNCATE trigger: when softguard.truncate_op runs the statement (the
-- transaction-local setting softguard.truncate_op names its operation), or a protected
-- session truncates inside a DO block, function or procedure (the operation
-- _backstop_truncate opens), copy the rows and the state of the table's owned / identity
-- sequences, within the capture budget. PostgreSQL fires it for every table
-- the TRUNCATE empties (listed, CASCADE, partitions), after its own checks.
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
    typed boolean := false;                -- kept in a table of its own (decision 0030)
    saved text[];
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
    IF softguard._typed_fits(TG_RELID) THEN
        -- a large table of built-in types: kept typed (decision 0030); counted no further
        -- than the threshold
        EXECUTE format('SELECT count(*) >= %s FROM (SELECT FROM ONLY %s t LIMIT %s) s',
                       softguard._typed_min_rows(), TG_RELID::regclass, softguard._typed_min_rows())
           INTO typed;
    END IF;
    IF typed THEN
        saved := softguard._typed_begin();
        EXECUTE format('CREATE TABLE %s USING heap AS SELECT * FROM ONLY %s t',
                       softguard._typed_name(cid), TG_RELID::regclass);
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM softguard._typed_end(cid, saved);
    ELSE
        EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                       ' SELECT %s, %s FROM ONLY %s t', cid,
                       CASE WHEN cols @? '$[*][2]' THEN softguard._capture_expr(cols, 't') ELSE 't::text' END,
                       TG_RELID::regclass);
        GET DIAGNOSTICS n = ROW_COUNT;
    END IF;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns, info)
    VALUES (cid, op, TG_RELID, ident, 'truncate', n, cols,
            CASE WHEN typed THEN '{"typed": true}'::jsonb END);
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
REVOKE ALL ON FUNCTION softguard._capture_truncate() FROM PUBLIC;

-- Put back the rows, sequence values and columns operation `op` captured: deleted rows
-- re-inserted, updated rows given their old values (by _row_key), tables parents first;
-- column captures go to _undo_column. Returns what it restored.
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
            -- text captures parsed, typed ones (decision 0030) read as they are
            src := softguard._capture_src(g.columns, rtype, g.ids, rel::regclass::text);
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
REVOKE ALL ON FUNCTION softguard._undo_captures(bigint, text) FROM PUBLIC;

-- Bytes one capture's rows take: a typed capture's table (decision 0030), measured; else
-- n_rows x (average stored width of up to 20 of its rows + 36 bytes of tuple header, item
-- pointer and capture_id). The sample is read through the BRIN index (enable_seqscan off:
-- never a scan of the whole table).
CREATE OR REPLACE FUNCTION softguard._capture_bytes(cid bigint, n_rows bigint) RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
    SELECT CASE WHEN n_rows <= 0 THEN 0
                WHEN to_regclass(softguard._typed_name(cid)) IS NOT NULL
                THEN pg_total_relation_size(to_regclass(softguard._typed_name(cid)))
                ELSE
        (n_rows * (coalesce((SELECT avg(pg_column_size(s."row"))
                               FROM (SELECT r."row" FROM softguard.captured_rows r
                                      WHERE r.capture_id = cid LIMIT 20) s), 0) + 36))::bigint
    END
$$;
REVOKE ALL ON FUNCTION softguard._capture_bytes(bigint, bigint) FROM PUBLIC;

-- Destroy what operation `op` holds and mark it purged, in the caller's transaction (run it
-- alone in a transaction and commit). `archive`: where it was archived (recorded, shown by
-- undo). `lock_timeout`: how long to wait for a lock (SET LOCAL; the ledger row, the
-- quarantined relations) before failing with 55P03, nothing changed. Captured rows: deleted
-- here when the operation has at most `inline_rows`, else released for purge_rows.
-- An undone operation holds nothing: its captured rows are released, its state kept.
-- Errors: 42704 no such operation; 55000 already purged; 55006 the DROP would remove
-- something another operation holds, or something live; 55P03 lock timeout.
CREATE OR REPLACE FUNCTION softguard.purge_op(op bigint, archive text DEFAULT NULL,
                                   lock_timeout text DEFAULT '2s',
                                   inline_rows bigint DEFAULT 10000)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    r record;
    stmt text;
    list jsonb;
    bad record;
    held_by bigint;
    n_objects integer := 0;
    n_rows bigint;
    n_typed bigint := 0;
    released text;
    mine boolean;
BEGIN
    PERFORM set_config('lock_timeout', coalesce(lock_timeout, '2s'), true);
    mine := softguard._maintenance_begin();
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('softguard: operation %s does not exist', op);
    END IF;
    IF o.state = 'purged' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s was already purged (at %s by %s)', op,
                             to_char(o.purged_at, 'YYYY-MM-DD HH24:MI:SS'), o.purged_by);
    END IF;

    IF o.state = 'active' AND o.kind <> 'UNDO' THEN
        -- 1. Lock what it holds (in oid order), waiting at most lock_timeout. Not views:
        --    LOCK TABLE on a view locks every table it reads, with the rights of the view's
        --    owner, softguard_keeper, which has none (decision 0027); nothing can use a
        --    kept view meanwhile anyway.
        FOR r IN SELECT h.relid FROM softguard.held_relations(op) h
                  WHERE h.relkind IN ('r', 'p', 'f') ORDER BY h.relid LOOP
            EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', r.relid::regclass);
        END LOOP;

        -- 2. Drop each object (schemas last); each DROP ... CASCADE is probed first: it
        --    must take nothing but what this operation holds.
        FOR r IN SELECT h.* FROM softguard._held_objects(op) h
                  ORDER BY (h.classid = 'pg_namespace'::regclass), h.classid, h.objid LOOP
            IF r.classid = 'pg_namespace'::regclass THEN
                CONTINUE WHEN NOT EXISTS (SELECT FROM pg_namespace n WHERE n.oid = r.objid);
            ELSE
                CONTINUE WHEN (pg_identify_object(r.classid, r.objid, 0)).identity IS NULL;
            END IF;
            stmt := format('DROP %s %s CASCADE', r.keyword, r.ident);
            list := softguard._probe(stmt);
            SELECT x->>'object_type' AS type, x->>'object_identity' AS identity,
                   softguard._holder((x->>'classid')::oid, (x->>'objid')::oid,
                                     (x->>'objsubid')::integer) AS holder
              INTO bad
              FROM jsonb_array_elements(list) x
             WHERE (x->>'normal')::boolean AND NOT (x->>'original')::boolean
               AND softguard._holder((x->>'classid')::oid, (x->>'objid')::oid,
                                     (x->>'objsubid')::integer) IS DISTINCT FROM op
             LIMIT 1;
            IF FOUND THEN
                held_by := bad.holder;
                IF held_by IS NOT NULL THEN
                    RAISE EXCEPTION USING ERRCODE = '55006',
                        MESSAGE = format('cannot purge operation %s: dropping %s %s would also '
                                         'remove %s %s, held by operation %s',
                                         op, lower(r.keyword), r.ident, bad.type, bad.identity,
                                         held_by),
                        HINT = format('Purge operation %s first (or undo it).', held_by);
                END IF;
                RAISE EXCEPTION USING ERRCODE = '55006',
                    MESSAGE = format('cannot purge operation %s: dropping %s %s would also '
                                     'remove %s %s, which is not in quarantine',
                                     op, lower(r.keyword), r.ident, bad.type, bad.identity),
                    HINT = 'Something was made to depend on a quarantined object: remove that '
                           'dependency first.';
            END IF;
            EXECUTE stmt;
            n_objects := n_objects + 1;
        END LOOP;
    END IF;

    -- 3. Captured rows: typed captures' tables dropped (decision 0030: no other capture's
    --    rows read); the others released, deleted now when few.
    FOR r IN SELECT c.id, c.n_rows FROM softguard.captures c
              WHERE c.op_id = op AND c.info @> '{"typed": true}' AND c.released_at IS NULL
              ORDER BY c.id LOOP
        EXECUTE format('DROP TABLE IF EXISTS %s', softguard._typed_name(r.id));
        n_typed := n_typed + r.n_rows;
    END LOOP;
    UPDATE softguard.captures c SET released_at = now()
     WHERE c.op_id = op AND c.released_at IS NULL;
    SELECT coalesce(sum(c.n_rows), 0) INTO n_rows FROM softguard.captures c
     WHERE c.op_id = op AND NOT coalesce(c.info @> '{"typed": true}', false);
    IF n_rows <= inline_rows THEN
        DELETE FROM softguard.captured_rows cr
         WHERE cr.capture_id = ANY (ARRAY(SELECT c.id FROM softguard.captures c
                                           WHERE c.op_id = op));
        DELETE FROM softguard.captures c WHERE c.op_id = op;
        released := format('%s captured rows deleted', n_rows + n_typed);
    ELSE
        released := format('%s captured rows released (deleted in batches)', n_rows)
                    || CASE WHEN n_typed > 0 THEN format(', %s dropped', n_typed) ELSE '' END;
    END IF;

    IF o.state <> 'active' OR o.kind = 'UNDO' THEN
        PERFORM softguard._maintenance_end(mine);
        RETURN format('operation %s: %s, nothing in quarantine; %s', op,
                      CASE WHEN o.kind = 'UNDO' THEN 'the record of an undo'
                           ELSE format('undone at %s', to_char(o.undone_at, 'YYYY-MM-DD HH24:MI:SS'))
                      END, released);
    END IF;
    UPDATE softguard.operations
       SET state = 'purged', purged_at = now(), purged_by = session_user, purge_archive = archive
     WHERE id = op;
    PERFORM softguard._maintenance_end(mine);
    RETURN format('operation %s: purged (%s objects dropped, %s)', op, n_objects, released);
END $$;
REVOKE ALL ON FUNCTION softguard.purge_op(bigint, text, text, bigint) FROM PUBLIC;
-- end section: bulk ---------------------------------------------------------------------

-- section: attack -----------------------------------------------------------
-- The backstop's exemptions checked by rows the client cannot write (threat model G11;
-- decision 0029, "Since then").
CREATE TABLE softguard.shell_drops (
    pid     integer NOT NULL,
    xid     xid8 NOT NULL,
    type    oid NOT NULL
);
REVOKE ALL ON softguard.shell_drops FROM PUBLIC;
COMMENT ON TABLE softguard.shell_drops IS
    'the shell type _drop_shell is dropping, which the sql_drop backstop lets pass';

CREATE OR REPLACE FUNCTION softguard._shell_drop_mark(p_oid oid, dropping boolean) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM softguard.shell_drops s WHERE s.pid = pg_backend_pid();
    IF dropping AND EXISTS (SELECT FROM pg_type t
                             WHERE t.oid = p_oid AND t.typtype = 'p' AND NOT t.typisdefined) THEN
        INSERT INTO softguard.shell_drops (pid, xid, type)
        VALUES (pg_backend_pid(), pg_current_xact_id(), p_oid);
        RETURN true;
    END IF;
    RETURN false;
END $$;
REVOKE ALL ON FUNCTION softguard._shell_drop_mark(oid, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._shell_drop_mark(oid, boolean) TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard._drop_shell(p_oid oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ident text;
BEGIN
    SELECT format('%I.%I', n.nspname, t.typname) INTO ident
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.oid = p_oid AND t.typtype = 'p' AND NOT t.typisdefined;
    IF ident IS NOT NULL AND softguard._shell_drop_mark(p_oid, true) THEN
        EXECUTE format('DROP TYPE %s', ident);
        PERFORM softguard._shell_drop_mark(p_oid, false);
    END IF;
END $$;
GRANT EXECUTE ON FUNCTION softguard._drop_shell(oid) TO PUBLIC;

CREATE TABLE softguard.probe_rewrites (
    pid     integer NOT NULL,
    xid     xid8 NOT NULL,
    rel     oid NOT NULL
);
REVOKE ALL ON softguard.probe_rewrites FROM PUBLIC;
COMMENT ON TABLE softguard.probe_rewrites IS
    'table rewrites let through in probe mode; refused at ddl_command_end if still there';

CREATE OR REPLACE FUNCTION softguard._probe_rewrite_check() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid;
BEGIN
    SELECT p.rel INTO rel FROM softguard.probe_rewrites p WHERE p.pid = pg_backend_pid() LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard: changing the type of a column of %s cannot be made '
                             'reversible here', rel::regclass),
            DETAIL = 'The table was rewritten in softguard''s probe mode, which the statement '
                     'then left: only softguard''s probe may run it, and rolls it back.',
            HINT = 'Run the ALTER TABLE ... ALTER COLUMN ... TYPE as its own statement.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._probe_rewrite_check() FROM PUBLIC;
-- The event trigger runs as the session's role; this only ever refuses.
GRANT EXECUTE ON FUNCTION softguard._probe_rewrite_check() TO PUBLIC;

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
            -- drop_op removes shell types (nothing to keep) for real, through _drop_shell:
            -- the statement drops the one shell type marked (30_drop.sql) and nothing else
            CONTINUE WHEN NOT EXISTS (
                SELECT FROM pg_event_trigger_dropped_objects() o
                 WHERE NOT EXISTS (SELECT FROM softguard.shell_drops s
                                    WHERE s.pid = pg_backend_pid()
                                      AND s.xid = pg_current_xact_id()
                                      AND s.type = o.objid AND o.object_type = 'type'));
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
REVOKE ALL ON FUNCTION softguard._backstop_drop() FROM PUBLIC;
-- The event trigger runs as the session's role; this only ever refuses.
GRANT EXECUTE ON FUNCTION softguard._backstop_drop() TO PUBLIC;

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
    IF current_setting('softguard.probe', true) = 'on' THEN
        -- the probe never keeps what it runs (20_catalog.sql): its statement ends in SGPRB
        -- at ddl_command_end. The setting is the session's to write, and code of its own
        -- (a USING expression) can switch it off while the rewrite runs: the row below,
        -- which only a rollback removes, makes ddl_command_end refuse such a statement.
        INSERT INTO softguard.probe_rewrites (pid, xid, rel)
        VALUES (pg_backend_pid(), pg_current_xact_id(), rel);
        RETURN;
    END IF;
    GET DIAGNOSTICS stack = PG_CONTEXT;
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
REVOKE ALL ON FUNCTION softguard._backstop_rewrite() FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._capture_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- Reached in probe mode only when sql_drop did not fire: nothing was dropped.
    IF current_setting('softguard.probe', true) = 'on' THEN
        RAISE EXCEPTION USING ERRCODE = 'SGPRB', MESSAGE = 'softguard probe', DETAIL = '[]';
    END IF;
    PERFORM softguard._probe_rewrite_check();  -- probe mode left mid-statement (85_backstop.sql)
END $$;
REVOKE ALL ON FUNCTION softguard._capture_ddl_end() FROM PUBLIC;

-- _capture_rows (where UPDATEs are denied, an unbound soft-delete claim is an UPDATE too,
-- decision 0031): its final definition is in section sdbind above.

-- An approval covers the approved statement, not its transaction's later ones (decision
-- 0020, "Since then").
CREATE OR REPLACE FUNCTION softguard._approval_gate(p_id text, p_sqlstate text, p_message text,
                                         p_hint text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sent text := current_query();
    client text := softguard._client_text(current_query());
BEGIN
    IF client IS DISTINCT FROM sent THEN   -- the proxy's marker is there
        UPDATE softguard.approvals a
           SET state = 'used', used_at = statement_timestamp(), used_pid = pg_backend_pid(),
               used_xact = pg_current_xact_id()
         WHERE a.id = p_id AND a.state = 'approved'
           AND a.decided_at > now() - interval '1 hour'
           AND a.role = session_user
           AND a.statement_sha = softguard._approval_sha(session_user::text,
                                                         current_database()::text, client);
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message, HINT = p_hint;
END $$;
REVOKE ALL ON FUNCTION softguard._approval_gate(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._approval_gate(text, text, text, text) TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard._approved_here() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM softguard.approvals a
                    WHERE a.used_pid = pg_backend_pid()
                      AND a.used_xact = pg_current_xact_id_if_assigned()
                      -- the retry's own Query message (the gate and the approved text):
                      -- not the later statements of its transaction
                      AND a.used_at = statement_timestamp())
$$;
REVOKE ALL ON FUNCTION softguard._approved_here() FROM PUBLIC;

-- Undo refuses to write rows where that would run a function of another, non-superuser role
-- (threat model G9).
CREATE OR REPLACE FUNCTION softguard._foreign_code(rel oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE tree(r) AS (
        SELECT rel
        UNION
        SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.r
    ), types(t) AS (
        SELECT a.atttypid FROM pg_attribute a
         WHERE a.attrelid IN (SELECT r FROM tree) AND a.attnum > 0 AND NOT a.attisdropped
        UNION
        SELECT u FROM types JOIN pg_type y ON y.oid = types.t,
               LATERAL (SELECT nullif(y.typbasetype, 0)
                        UNION ALL SELECT nullif(y.typelem, 0)
                        UNION ALL SELECT f.atttypid FROM pg_attribute f
                                   WHERE f.attrelid = y.typrelid AND f.attnum > 0
                                     AND NOT f.attisdropped
                        UNION ALL SELECT g.rngsubtype FROM pg_range g WHERE g.rngtypid = y.oid
                        UNION ALL SELECT g.rngtypid FROM pg_range g
                                   WHERE g.rngmultitypid = y.oid) v(u)
         WHERE u IS NOT NULL
    ), parts(classid, objid) AS (
        SELECT 'pg_class'::regclass::oid, i.indexrelid FROM pg_index i
         WHERE i.indrelid IN (SELECT r FROM tree)
        UNION ALL
        SELECT 'pg_constraint'::regclass::oid, k.oid FROM pg_constraint k
         WHERE k.conrelid IN (SELECT r FROM tree) OR k.contypid IN (SELECT t FROM types)
        UNION ALL
        SELECT 'pg_attrdef'::regclass::oid, d.oid FROM pg_attrdef d
         WHERE d.adrelid IN (SELECT r FROM tree)
        UNION ALL
        -- a domain's default (and any type's own functions)
        SELECT 'pg_type'::regclass::oid, t FROM types
        UNION ALL
        -- row-level security policies, where they apply to the role running undo (softguard's
        -- owner on a managed service may be neither superuser nor BYPASSRLS)
        SELECT 'pg_policy'::regclass::oid, pol.oid FROM pg_policy pol
          JOIN pg_class c ON c.oid = pol.polrelid AND c.relrowsecurity
         WHERE pol.polrelid IN (SELECT r FROM tree)
           AND NOT (SELECT o.rolsuper OR o.rolbypassrls FROM pg_roles o
                     WHERE o.rolname = current_user)
    )
    SELECT string_agg(DISTINCT format('%s (owned by %I)', p.oid::regprocedure, r.rolname), ', ')
      FROM parts JOIN pg_depend d ON d.classid = parts.classid AND d.objid = parts.objid
                                 AND d.refclassid = 'pg_proc'::regclass
      JOIN pg_proc p ON p.oid = d.refobjid
      JOIN pg_roles r ON r.oid = p.proowner
     WHERE NOT r.rolsuper AND r.rolname <> current_user
$$;
REVOKE ALL ON FUNCTION softguard._foreign_code(oid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._refuse_foreign_code(op bigint, rel oid, ident text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    code text := softguard._foreign_code(rel);
BEGIN
    IF code IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('cannot undo operation %s: writing rows back into %s would run %s '
                             'with the rights of %I', op, ident, code, current_user),
            DETAIL = 'Index expressions and predicates, constraints and defaults run as the '
                     'role that writes the row, whoever wrote the function.',
            HINT = 'Review the function; replace it with one owned by a superuser, or drop what '
                   'uses it, then run undo again.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._refuse_foreign_code(bigint, oid, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._need_table(op bigint, rel oid, ident text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    holder bigint;
    holder_stmt text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_class WHERE oid = rel) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: table %s no longer exists', op, ident);
    END IF;
    PERFORM softguard._refuse_foreign_code(op, rel, ident);
    holder := softguard._holder('pg_class'::regclass, rel, 0);
    IF holder IS NOT NULL AND holder <> op THEN
        SELECT o.statement INTO holder_stmt FROM softguard.operations o WHERE o.id = holder;
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = format('cannot undo operation %s: table %s is held by operation %s (%s)',
                             op, ident, holder, holder_stmt),
            DETAIL = softguard._blocked_detail(holder),
            HINT = format('Undo operation %s first, or use --cascade.', holder);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._need_table(bigint, oid, text) FROM PUBLIC;

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
        IF x->>'def' ~ '^CHECK ' AND x->>'def' !~ ' NOT VALID$' THEN
            -- checked against the rows only once its functions are known to be harmless:
            -- validation runs them as the operator (_foreign_code)
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID', rel, x->>'name',
                           x->>'def');
            PERFORM softguard._refuse_foreign_code(op, c.relid, rel::text);
            EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', rel, x->>'name');
        ELSE
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', rel, x->>'name', x->>'def');
        END IF;
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
REVOKE ALL ON FUNCTION softguard._undo_drop_column(bigint, softguard.captures) FROM PUBLIC;

-- end section: attack -------------------------------------------------------

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
