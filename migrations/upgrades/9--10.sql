-- Version 10 (section sdbind): softguard's own soft-delete rewrite is bound to the
-- backend's key (decision 0031): soft_delete_begin takes the proxy's mark as a fifth
-- argument, and the capture trigger believes a marked claim made by the running text's own
-- statement without joining the transition tables (a pass over the new rows instead); on
-- tables with row-level BEFORE triggers it keeps the rows they changed whole as well.
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
    SELECT s.key INTO k FROM softguard.session_keys s
     WHERE s.pid = pg_catalog.pg_backend_pid() AND s.backend_start = softguard._backend_start();
    IF k IS NULL THEN
        RETURN false;
    END IF;
    -- over the text with the mark put back to the filler, and the claim's fields but what
    -- soft_delete_begin computes as it runs (mark, by); compared as hashes, as _marked does
    RETURN pg_catalog.sha256(pg_catalog.convert_to(sig, 'UTF8'))
           = pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.encode(softguard._hmac(k,
                 pg_catalog.convert_to(pg_catalog.replace(pg_catalog.current_query(), sig,
                                                          softguard._sd_filler()), 'UTF8')
                 || '\x00'::bytea
                 || pg_catalog.convert_to((sdi - 'mark' - 'by' - 'sig')::text, 'UTF8')), 'hex'),
                 'UTF8'));
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
    others := ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                       AND a.attgenerated = '' AND a.attname::text IS DISTINCT FROM col
                       AND a.attname::text IS DISTINCT FROM by_col
                     ORDER BY a.attnum);
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
