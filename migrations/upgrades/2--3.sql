-- Version 3: the trust boundary (docs/threat-model.md, G6-G9).
--
-- Each section below is one change; a function changed by two sections appears once, in
-- the later section, with its final definition.

-- ---------------------------------------------------------------------------------------
-- section: protection decided by registered sessions (G6)
-- ---------------------------------------------------------------------------------------



-- ---------------------------------------------------------------------------------------
-- section: SECURITY DEFINER functions and ledger tables (G8)
-- ---------------------------------------------------------------------------------------



-- ---------------------------------------------------------------------------------------
-- section: the machinery defends itself (G7)
-- ---------------------------------------------------------------------------------------



-- ---------------------------------------------------------------------------------------
-- section: exact undo (G9)
-- ---------------------------------------------------------------------------------------

-- Undo restores exactly what was captured and says what it did not (issue 10 item 5):
-- user triggers and rules set ENABLE ALWAYS / REPLICA are off during undo; UPDATEs that
-- change keys, and UPDATEs of tables without a key, keep the keys (rows) that appeared and
-- those gone; rows of inheritance children deleted through a parent are kept whole (a row
-- trigger on each child, table softguard.inherited_rows). See 40_capture.sql and
-- docs/decisions/0006-row-capture.md ("Later changes").

-- Children's rows waiting for the statement trigger of the table the DELETE named; empty
-- outside a DELETE's own statement (rolled back with it, claimed at its end).
CREATE TABLE softguard.inherited_rows (
    txid   xid8 NOT NULL DEFAULT pg_current_xact_id(),
    stmt   text NOT NULL,                -- statement key, as in _capture_rows
    relid  oid NOT NULL,
    "row"  text NOT NULL
);
REVOKE ALL ON softguard.inherited_rows FROM PUBLIC;

-- The row trigger on inheritance children: the whole row, in the fixed formats.
CREATE FUNCTION softguard._capture_inherited() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    cap text := current_setting('softguard.capture', true);
BEGIN
    -- the same decision as _capture_rows' for a DELETE
    IF cap IS NULL OR NOT ('delete' = ANY (string_to_array(replace(lower(cap), ' ', ''), ','))) THEN
        RETURN NULL;
    END IF;
    INSERT INTO softguard.inherited_rows (stmt, relid, "row")
    VALUES ((extract(epoch FROM statement_timestamp()) * 1000000)::bigint::text, TG_RELID, OLD::text);
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_inherited() FROM PUBLIC;

-- Put the row trigger on `rel` when it is an inheritance child (idempotent).
CREATE FUNCTION softguard._install_capture_inherited(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF softguard._protected_table(rel)
       AND EXISTS (SELECT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                    WHERE i.inhrelid = rel AND c.relkind = 'r' AND NOT c.relispartition)
       AND NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = rel
                        AND tgname = 'zz_softguard_capture_inherited') THEN
        EXECUTE format('CREATE TRIGGER zz_softguard_capture_inherited AFTER DELETE ON %s'
                       ' FOR EACH ROW EXECUTE FUNCTION softguard._capture_inherited()',
                       rel::regclass);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._install_capture_inherited(oid) FROM PUBLIC;

-- In the statement trigger of a DELETE on `rel`: drop what rel's own row trigger kept (its
-- transition table has those rows whole), and move what its inheritance descendants' row
-- triggers kept into captures of their own. Returns [{relid, cid, n}], NULL when none.
-- Runs once per captured statement and table: no SET (called from _capture_rows).
CREATE FUNCTION softguard._inherited_claim(rel oid, ev text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    k text;
    d record;
    cid bigint;
    n bigint;
    claimed jsonb := '[]';
BEGIN
    IF ev <> 'delete' OR NOT EXISTS (SELECT FROM pg_catalog.pg_inherits i
                                      WHERE i.inhparent = rel OR i.inhrelid = rel) THEN
        RETURN NULL;
    END IF;
    k := (extract(epoch FROM pg_catalog.statement_timestamp()) * 1000000)::bigint::text;
    DELETE FROM softguard.inherited_rows r
     WHERE r.txid = pg_catalog.pg_current_xact_id() AND r.stmt = k AND r.relid = rel;
    FOR d IN WITH RECURSIVE tree(r) AS (
                 SELECT i.inhrelid FROM pg_catalog.pg_inherits i
                   JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
                  WHERE i.inhparent = rel AND p.relkind = 'r'
                 UNION
                 SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree t ON i.inhparent = t.r)
             SELECT t.r FROM tree t WHERE softguard._protected_table(t.r) ORDER BY t.r LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger g WHERE g.tgrelid = d.r
                        AND g.tgname = 'zz_softguard_capture_inherited') THEN
            -- its rows are gone already: keep nothing rather than a part of them
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('softguard: cannot keep the rows of %s deleted through %s:'
                                 ' its capture trigger is missing', d.r::regclass, rel::regclass),
                HINT = 'Delete from the child table itself, or run softguard init again.';
        END IF;
        cid := pg_catalog.nextval('softguard.captures_id_seq'::regclass);
        WITH m AS (DELETE FROM softguard.inherited_rows r
                    WHERE r.txid = pg_catalog.pg_current_xact_id() AND r.stmt = k AND r.relid = d.r
                   RETURNING r."row")
        INSERT INTO softguard.captured_rows (capture_id, "row") SELECT cid, m."row" FROM m;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN
            claimed := claimed || pg_catalog.jsonb_build_array(
                pg_catalog.jsonb_build_object('relid', d.r, 'cid', cid, 'n', n));
        END IF;
    END LOOP;
    RETURN CASE WHEN claimed = '[]' THEN NULL ELSE claimed END;
END $$;
REVOKE ALL ON FUNCTION softguard._inherited_claim(oid, text) FROM PUBLIC;

-- The capture of `rel`'s own rows when descendants' rows were claimed: sg_old less those
-- rows cut to rel's columns (a multiset difference: identical rows of rel itself stay).
-- Run by _capture_rows (only it sees sg_old) with $1 = the capture id.
CREATE FUNCTION softguard._inherited_sql(rel oid, claimed jsonb) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cols text := (SELECT pg_catalog.string_agg(pg_catalog.format('(q.p).%I', c->>0), ', ' ORDER BY o)
                    FROM pg_catalog.jsonb_array_elements(softguard._columns(rel))
                         WITH ORDINALITY x(c, o));
BEGIN
    RETURN pg_catalog.format(
        'INSERT INTO softguard.captured_rows (capture_id, "row") SELECT $1, s.x FROM'
        ' (SELECT o::text AS x FROM sg_old o EXCEPT ALL (%s)) s',
        (SELECT pg_catalog.string_agg(pg_catalog.format(
                    'SELECT ROW(%s)::text FROM (SELECT r."row"::%s AS p FROM softguard.captured_rows r'
                    ' WHERE r.capture_id = %s) q', cols, (e->>'relid')::oid::regclass, e->>'cid'),
                ' UNION ALL ')
           FROM pg_catalog.jsonb_array_elements(claimed) e));
END $$;
REVOKE ALL ON FUNCTION softguard._inherited_sql(oid, jsonb) FROM PUBLIC;

-- The statement _capture_rows runs (it alone sees sg_old and sg_new) after an UPDATE's old
-- rows: keeps the keys that appeared and those gone (whole rows for a table without a
-- key) under two new capture ids and returns {key, appeared, gone, changed} for the
-- capture's info; no row (NULL) when no key changed. With `detect`, a cheaper statement
-- first (planning the full one costs more than a one-row UPDATE): a row ('{}') when keys
-- may have changed.
CREATE FUNCTION softguard._key_change_sql(rel oid, detect boolean) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    key text[] := softguard._row_key(rel);
    appeared text;
    gone text;
BEGIN
    IF detect THEN
        RETURN CASE WHEN key IS NULL THEN 'SELECT ''{}''::jsonb' ELSE pg_catalog.format(
            'SELECT ''{}''::jsonb WHERE EXISTS (SELECT FROM sg_new n WHERE NOT EXISTS'
            ' (SELECT FROM sg_old o WHERE %s))',
            (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I = n.%I', c, c), ' AND ')
               FROM pg_catalog.unnest(key) c)) END;
    END IF;
    IF key IS NULL THEN
        appeared := 'SELECT n::text AS x FROM sg_new n EXCEPT ALL SELECT o::text FROM sg_old o';
        gone := 'SELECT o::text AS x FROM sg_old o EXCEPT ALL SELECT n::text FROM sg_new n';
    ELSE
        appeared := pg_catalog.format(
            'SELECT ROW(%s)::text AS x FROM sg_new n WHERE NOT EXISTS (SELECT FROM sg_old o WHERE %s)',
            (SELECT pg_catalog.string_agg(pg_catalog.format('n.%I', c), ', ') FROM pg_catalog.unnest(key) c),
            (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I = n.%I', c, c), ' AND ')
               FROM pg_catalog.unnest(key) c));
        gone := pg_catalog.format(
            'SELECT ROW(%s)::text AS x FROM sg_old o WHERE EXISTS (SELECT FROM a)'
            ' AND NOT EXISTS (SELECT FROM sg_new n WHERE %s)',
            (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I', c), ', ') FROM pg_catalog.unnest(key) c),
            (SELECT pg_catalog.string_agg(pg_catalog.format('o.%I = n.%I', c, c), ' AND ')
               FROM pg_catalog.unnest(key) c));
    END IF;
    RETURN pg_catalog.format(
        'WITH a AS MATERIALIZED (%s), g AS MATERIALIZED (%s),'
        ' c AS MATERIALIZED (SELECT pg_catalog.nextval(%L::regclass) AS ca,'
        ' pg_catalog.nextval(%L::regclass) AS cg WHERE %s),'
        ' ia AS (INSERT INTO softguard.captured_rows (capture_id, "row") SELECT c.ca, a.x FROM c, a),'
        ' ig AS (INSERT INTO softguard.captured_rows (capture_id, "row") SELECT c.cg, g.x FROM c, g)'
        ' SELECT pg_catalog.jsonb_build_object(''key'', %L::jsonb, ''appeared'', c.ca,'
        ' ''gone'', c.cg, ''changed'', (SELECT pg_catalog.count(*) FROM a)) FROM c',
        appeared, gone, 'softguard.captures_id_seq', 'softguard.captures_id_seq',
        CASE WHEN key IS NULL THEN 'true' ELSE 'EXISTS (SELECT FROM a)' END,
        pg_catalog.to_jsonb(key));
END $$;
REVOKE ALL ON FUNCTION softguard._key_change_sql(oid, boolean) FROM PUBLIC;

-- After _capture_rows recorded capture `cid` of `rel` in operation `op` (with info `kinfo`):
-- the captures of the keys an UPDATE changed (n_rows 0: read only through their capture's info) and of the
-- rows of inheritance children a DELETE removed (joining the operation like a cascade).
CREATE FUNCTION softguard._capture_more(op bigint, cid bigint, rel oid, kinfo jsonb,
                                        claimed jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    e jsonb;
    child oid;
    ident text;
    kcols jsonb;
BEGIN
    IF kinfo ? 'appeared' THEN
        IF (kinfo->>'changed')::bigint > 0 AND EXISTS (
               SELECT FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = rel AND NOT c.relispartition) THEN
            -- rows that moved to other keys may be the children's: undo would put them
            -- into the parent
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = pg_catalog.format('softguard: cannot make this UPDATE of %s reversible:'
                                            ' it changes keys of rows that may belong to its'
                                            ' inheritance children', rel::regclass),
                HINT = 'Update the child tables themselves.';
        END IF;
        kcols := CASE WHEN kinfo->'key' = 'null' THEN softguard._columns(rel) ELSE
                     (SELECT pg_catalog.jsonb_agg(c ORDER BY k.o)
                        FROM pg_catalog.jsonb_array_elements_text(kinfo->'key') WITH ORDINALITY k(name, o)
                        JOIN pg_catalog.jsonb_array_elements(softguard._columns(rel)) c ON c->>0 = k.name)
                 END;
        INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns, info)
        SELECT (kinfo->>s)::bigint, op, rel, cp.table_identity, 'update', 0, kcols,
               pg_catalog.jsonb_build_object('part_of', cid, 'side', s)
          FROM softguard.captures cp, pg_catalog.unnest(ARRAY['appeared', 'gone']) s
         WHERE cp.id = cid;
    END IF;
    FOR e IN SELECT x FROM pg_catalog.jsonb_array_elements(coalesce(claimed, '[]')) x LOOP
        child := (e->>'relid')::oid;
        SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) INTO ident
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = child;
        INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns)
        VALUES ((e->>'cid')::bigint, op, child, ident, 'delete', (e->>'n')::bigint,
                softguard._columns(child));
        UPDATE softguard.operations o SET
            objects = o.objects || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                'type', 'table', 'identity', ident, 'schema', pg_catalog.split_part(ident, '.', 1),
                'name', (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid = child),
                'original', false, 'normal', true, 'classid', 'pg_class'::regclass::oid,
                'objid', child, 'objsubid', 0, 'event', 'delete', 'rows', (e->>'n')::bigint,
                'held_by', NULL)),
            row_counts = pg_catalog.jsonb_set(o.row_counts, ARRAY['tables', ident],
                pg_catalog.to_jsonb(coalesce((o.row_counts->'tables'->>ident)::bigint, 0)
                                    + (e->>'n')::bigint))
         WHERE o.id = op;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_more(bigint, bigint, oid, jsonb, jsonb) FROM PUBLIC;

-- The statement-level AFTER DELETE / AFTER UPDATE trigger (transition table sg_old).
CREATE OR REPLACE FUNCTION softguard._capture_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
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
    inh jsonb;                             -- inheritance children's rows (_inherited_claim)
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
        inh := softguard._inherited_claim(TG_RELID, ev);
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
        PERFORM softguard._notice(softguard._op_notice(
            CASE op_kind WHEN 'DELETE' THEN 'DELETE FROM' WHEN 'MERGE' THEN 'MERGE INTO'
                         ELSE 'UPDATE' END,
            ident || CASE WHEN event = 'soft_delete'
                          THEN format(' (soft delete: %s set)', quote_ident(sdi->>'column'))
                          ELSE '' END,
            op, expires));
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
    PERFORM softguard._capture_more(op, cid, TG_RELID, info, inh);
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_rows() FROM PUBLIC;

-- Install the capture triggers on one table (idempotent).
CREATE OR REPLACE FUNCTION softguard._install_capture(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT softguard._protected_table(rel) THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = rel
                    AND tgname = 'zz_softguard_capture_delete') THEN
        EXECUTE format('CREATE TRIGGER zz_softguard_capture_delete AFTER DELETE ON %s'
                       ' REFERENCING OLD TABLE AS sg_old FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION softguard._capture_rows()', rel::regclass);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = rel
                    AND tgname = 'zz_softguard_capture_update') THEN
        EXECUTE format('CREATE TRIGGER zz_softguard_capture_update AFTER UPDATE ON %s'
                       ' REFERENCING OLD TABLE AS sg_old NEW TABLE AS sg_new FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION softguard._capture_rows()', rel::regclass);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = rel
                    AND tgname = 'zz_softguard_capture_truncate') THEN
        EXECUTE format('CREATE TRIGGER zz_softguard_capture_truncate BEFORE TRUNCATE ON %s'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION softguard._capture_truncate()',
                       rel::regclass);
    END IF;
    PERFORM softguard._install_capture_inherited(rel);
END $$;
REVOKE ALL ON FUNCTION softguard._install_capture(oid) FROM PUBLIC;

-- User triggers and rules that fire in replica mode (ENABLE ALWAYS, ENABLE REPLICA) on the
-- tables an undo of data changes writes into, their partitions and inheritance children:
-- disabled for the undo's own transaction, so that nothing but the captured values lands in
-- the restored rows. softguard's own triggers are left alone. Returns what
-- _undo_triggers_back puts back, parents first.
CREATE FUNCTION softguard._undo_triggers_off(op bigint) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    saved jsonb := '[]';
BEGIN
    FOR t IN WITH RECURSIVE tree(rel, depth) AS (
                 SELECT DISTINCT c.relid, 0 FROM softguard.captures c WHERE c.op_id = op
                 UNION
                 SELECT i.inhrelid, tr.depth + 1 FROM pg_inherits i JOIN tree tr ON i.inhparent = tr.rel
                  WHERE tr.depth < 100)
             SELECT 'TRIGGER' AS kind, g.tgrelid AS rel, g.tgname::text AS name,
                    g.tgenabled::text AS state, min(tree.depth) AS depth
               FROM pg_trigger g JOIN tree ON tree.rel = g.tgrelid
              WHERE NOT g.tgisinternal AND g.tgenabled IN ('A', 'R')
                AND g.tgfoid NOT IN (SELECT p.oid FROM pg_proc p
                                      WHERE p.pronamespace = 'softguard'::regnamespace)
              GROUP BY 1, 2, 3, 4
             UNION ALL
             SELECT 'RULE', w.ev_class, w.rulename::text, w.ev_enabled::text, min(tree.depth)
               FROM pg_rewrite w JOIN tree ON tree.rel = w.ev_class
              WHERE w.ev_enabled IN ('A', 'R') AND w.rulename <> '_RETURN'
              GROUP BY 1, 2, 3, 4
             ORDER BY 5, 2, 3 LOOP
        EXECUTE format('ALTER TABLE %s DISABLE %s %I', t.rel::regclass, t.kind, t.name);
        saved := saved || jsonb_build_array(jsonb_build_object(
            'kind', t.kind, 'rel', t.rel, 'name', t.name, 'state', t.state));
    END LOOP;
    RETURN saved;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_triggers_off(bigint) FROM PUBLIC;

-- The triggers and rules _undo_triggers_off disabled, back to their exact state.
CREATE FUNCTION softguard._undo_triggers_back(saved jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t jsonb;
BEGIN
    FOR t IN SELECT x FROM jsonb_array_elements(saved) WITH ORDINALITY AS s(x, i) ORDER BY s.i LOOP
        EXECUTE format('ALTER TABLE %s ENABLE %s %s %I', (t->>'rel')::oid::regclass,
                       CASE t->>'state' WHEN 'A' THEN 'ALWAYS' ELSE 'REPLICA' END,
                       t->>'kind', t->>'name');
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_triggers_back(jsonb) FROM PUBLIC;

-- The rows of capture `cid` read back through row type `rtype` (_row_type), as a query.
-- OFFSET 0: the row text is parsed once, not once per column.
CREATE FUNCTION softguard._captured_src(rtype text, cid bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.format('SELECT (p.x).* FROM (SELECT r."row"::%s AS x'
                             ' FROM softguard.captured_rows r WHERE r.capture_id = %s OFFSET 0) p',
                             rtype, cid)
$$;
REVOKE ALL ON FUNCTION softguard._captured_src(text, bigint) FROM PUBLIC;

-- Undo of the UPDATE captures of table `rel` in operation `op` when the operation changed
-- keys, or the table has no key (40_capture.sql, "What a transition table alone cannot
-- tell undo"): last capture first, the rows whose key appeared are deleted, the old images
-- of the keys gone re-inserted, the others given their old values by key. Changed keys are
-- never paired, so a row whose new key is not there any more, or a gone key taken since,
-- refuses the undo (no --on-conflict skip: which old row to leave out is not known).
CREATE FUNCTION softguard._undo_changed(op bigint, rel oid, on_conflict text)
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
        src := softguard._captured_src(rtype, c.id);
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
            EXECUTE ins_sql || softguard._captured_src(rtype, (c.info->>'gone')::bigint) || ') s';
            GET DIAGNOSTICS ins = ROW_COUNT;
            PERFORM softguard._check_fks(op, rel, softguard._captured_src(rtype, (c.info->>'gone')::bigint));
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
REVOKE ALL ON FUNCTION softguard._undo_changed(bigint, oid, text) FROM PUBLIC;

-- Undo of a data change: clear the soft-delete marks it wrote (by key, only on rows still
-- carrying that very mark: a row un-marked and marked again since is left alone), then
-- put back everything else it captured (_undo_captures).
CREATE OR REPLACE FUNCTION softguard._undo_rows(op bigint, on_conflict text) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines softguard.undo_step[] := '{}';
    rest softguard.undo_step[];
    c softguard.captures;
    saved_srr text := current_setting('session_replication_role');
    done bigint;
    quiet jsonb;
BEGIN
    PERFORM FROM softguard.operations WHERE id = op FOR UPDATE;
    quiet := softguard._undo_triggers_off(op);
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
        lines := lines || softguard._step(op, 'cleared', c.relid::regclass::text,
                             format('cleared the soft-delete mark (%I) of %s rows of %s%s',
                                 c.info->>'column', done, c.relid::regclass,
                                 CASE WHEN done < c.n_rows THEN format(
                                     ' (%s left alone: deleted, or marked again, since)',
                                     c.n_rows - done) ELSE '' END), done);
    END LOOP;
    rest := softguard._undo_captures(op, on_conflict);
    PERFORM softguard._undo_triggers_back(quiet);
    IF cardinality(lines) > 0 THEN
        rest := ARRAY(SELECT r FROM unnest(rest) r WHERE r.action <> 'nothing');
    END IF;
    RETURN lines || rest;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_rows(bigint, text) FROM PUBLIC;

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
    FOR cap IN SELECT * FROM softguard.captures WHERE op_id = op AND event = 'column' LOOP
        lines := lines || softguard._undo_column(op, cap);
    END LOOP;

    PERFORM set_config('session_replication_role', 'replica', true);

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

    PERFORM set_config('session_replication_role', saved_srr, true);

    UPDATE softguard.operations SET state = 'undone', undone_at = now(), undone_by = session_user
     WHERE id = op;
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, restore, undo_of)
    VALUES (o.expires_at, session_user, current_user, current_setting('application_name', true),
            inet_client_addr()::text,
            format('softguard undo %s%s', op,
                   CASE WHEN on_conflict = 'skip' THEN ' --on-conflict skip' ELSE '' END),
            'UNDO', o.objects, '[]', op);
    IF cardinality(lines) = 0 THEN
        lines := ARRAY[softguard._step(op, 'nothing', '', 'nothing to restore')];
    END IF;
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_captures(bigint, text) FROM PUBLIC;

-- Tables made inheritance children later (ALTER TABLE ... INHERIT) get their row trigger
-- (40_capture.sql, _install_capture_inherited); nothing else is installed on ALTER TABLE.
CREATE FUNCTION softguard._capture_inherit_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF current_setting('softguard.probe', true) = 'on' THEN
        RETURN;
    END IF;
    FOR r IN SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() c
              WHERE c.classid = 'pg_class'::regclass AND c.objsubid = 0
                AND c.object_type = 'table' LOOP
        PERFORM softguard._install_capture_inherited(r.objid);
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_inherit_ddl() FROM PUBLIC;

CREATE EVENT TRIGGER softguard_capture_inherit ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION softguard._capture_inherit_ddl();
ALTER EVENT TRIGGER softguard_capture_inherit ENABLE ALWAYS;


-- Existing tables: the UPDATE trigger sees the new rows too (its enable state kept), and
-- inheritance children get their row trigger.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT g.tgrelid, g.tgenabled FROM pg_catalog.pg_trigger g
              WHERE g.tgname = 'zz_softguard_capture_update' ORDER BY g.tgrelid LOOP
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE TRIGGER zz_softguard_capture_update AFTER UPDATE ON %s'
            ' REFERENCING OLD TABLE AS sg_old NEW TABLE AS sg_new FOR EACH STATEMENT'
            ' EXECUTE FUNCTION softguard._capture_rows()', t.tgrelid::regclass);
        IF t.tgenabled <> 'O' THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s %s TRIGGER zz_softguard_capture_update',
                t.tgrelid::regclass, CASE t.tgenabled WHEN 'A' THEN 'ENABLE ALWAYS'
                                     WHEN 'R' THEN 'ENABLE REPLICA' ELSE 'DISABLE' END);
        END IF;
    END LOOP;
    PERFORM softguard._install_capture_inherited(c.oid) FROM pg_catalog.pg_class c
      WHERE c.relkind = 'r' AND softguard._protected_table(c.oid) ORDER BY c.oid;
END $$;
