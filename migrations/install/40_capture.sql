-- Row capture: reversible DELETE, UPDATE, MERGE and TRUNCATE (the soft-delete branch of the
-- capture trigger reads 60_soft_delete.sql's helpers). Design: docs/decisions/0006-row-capture.md.
-- Undo: 70_undo.sql (_undo_rows).
--
-- What always holds:
-- * Rows are captured in the database, in the transaction that removes or changes them:
--   statement-level AFTER DELETE / AFTER UPDATE triggers with transition tables on every
--   user table (so rows removed by ON DELETE CASCADE, changed by SET NULL / SET DEFAULT, by
--   rules, user triggers and functions are caught too; the UPDATE one only while some rule
--   protects UPDATE, or where SET NULL / SET DEFAULT needs it: _set_capture_updates,
--   decision 0023), and BEFORE TRUNCATE triggers that
--   copy a table's rows when softguard.truncate_op runs the TRUNCATE, or when a protected
--   session truncates from anywhere else (85_backstop.sql). ROLLBACK keeps nothing.
-- * No statement copies more than the capture budget (07_settings.sql, decision 0014):
--   measured before anything is copied, refused with 54000 over it.
-- * Only sessions the proxy marks are captured: the session default softguard.capture
--   ('delete' or 'delete,update', set by the proxy in the StartupMessage options). Other
--   sessions pay the transition tables' bookkeeping and one function call per statement.
-- * One operation per top-level client statement: captures are grouped by transaction and
--   statement_timestamp() (a transaction-local setting softguard.cur_op remembers the open
--   operation), and a BEFORE STATEMENT trigger closes it when the next top-level DELETE or
--   UPDATE begins (the statements of one Query message share their statement_timestamp()). The ledger row of an operation is written once, complete, at the first
--   capture with at least one row, and its NOTICE is raised then (PostgreSQL fires the
--   statement's own trigger first, then those of the cascaded tables, all at trigger
--   depth 1).
-- * Nothing is granted to PUBLIC but what the rewritten statements call as the client.

-- ---------------------------------------------------------------------------------------
-- DELETE / UPDATE / MERGE (and soft delete): the statement-level trigger
-- ---------------------------------------------------------------------------------------

-- The BEFORE DELETE / UPDATE statement trigger, fired only outside triggers
-- (pg_trigger_depth() = 0 in its WHEN: not for the DELETEs of a cascade or of a user's
-- trigger, which belong to the statement that caused them): a new top-level statement
-- starts a new operation.
CREATE FUNCTION softguard._capture_statement() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cur text;
BEGIN
    -- an assignment, not PERFORM: an expression, without an executor run (decision 0024)
    cur := pg_catalog.set_config('softguard.cur_op', '', true);
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_statement() FROM PUBLIC;

-- The client's text of a query softguard rewrote: the proxy puts it, hex-encoded, in a
-- leading comment (softguard.contract.CLIENT_TEXT_MARKER; the proxy refuses client texts
-- that begin with it). Any other query is its own text.
CREATE FUNCTION softguard._client_text(sent text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    close integer;
BEGIN
    IF left(sent, 17) <> '/*softguard:text=' THEN
        RETURN sent;
    END IF;
    close := strpos(sent, '*/');
    BEGIN
        RETURN convert_from(decode(substr(sent, 18, close - 18), 'hex'), 'UTF8');
    EXCEPTION WHEN OTHERS THEN
        RETURN sent;   -- not ours after all: keep what ran
    END;
END $$;
REVOKE ALL ON FUNCTION softguard._client_text(text) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Large captures kept typed (docs/decisions/0030-typed-bulk-capture.md)
-- ---------------------------------------------------------------------------------------
-- Turning each row into text (record_out) and writing it into captured_rows with its BRIN
-- index costs about five times the DELETE itself. A DELETE or TRUNCATE capture of at least
-- _typed_min_rows() rows is kept instead in a table of its own, softguard_rows.c<capture
-- id>, made by CREATE TABLE AS from the rows in the table's own column types, and its
-- capture's info says {"typed": true}. Only where nothing in it can depend on a user's
-- object (_typed_fits): a DROP TYPE ... CASCADE or DROP COLLATION ... CASCADE must never
-- reach into the ledger. Every reader takes a capture's rows through _capture_src (typed
-- columns) or _capture_text_src (the row texts); purge drops the table.

-- The fewest rows a DELETE or TRUNCATE capture keeps typed: below it the table's catalog
-- work (CREATE TABLE AS, its guard trigger, their event triggers: ~9 ms) costs more than
-- the text it saves (decision 0030, measured).
CREATE FUNCTION softguard._typed_min_rows() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 10000::pg_catalog.int8 $$;
REVOKE ALL ON FUNCTION softguard._typed_min_rows() FROM PUBLIC;

-- The table that keeps typed capture `cid`'s rows.
CREATE FUNCTION softguard._typed_name(cid bigint) RETURNS text
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
CREATE FUNCTION softguard._typed_fits(rel oid) RETURNS boolean
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
CREATE FUNCTION softguard._typed_begin() RETURNS text[]
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
CREATE FUNCTION softguard._typed_end(cid bigint, saved text[]) RETURNS void
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
CREATE FUNCTION softguard._capture_src(columns jsonb, rtype text, ids bigint[], rel text)
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
CREATE FUNCTION softguard._capture_text_src(cid bigint) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT FROM softguard.captures c WHERE c.id = cid AND c.info @> '{"typed": true}') THEN
        RETURN format('SELECT t::text AS "row" FROM %s t', softguard._typed_name(cid));
    END IF;
    RETURN format('SELECT r."row" FROM softguard.captured_rows r WHERE r.capture_id = %s', cid);
END $$;
REVOKE ALL ON FUNCTION softguard._capture_text_src(bigint) FROM PUBLIC;

-- The statement-level AFTER DELETE / AFTER UPDATE trigger (transition table sg_old).
CREATE FUNCTION softguard._capture_rows() RETURNS trigger
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
        IF n = 0 THEN
            -- removed or changed nothing: records nothing, and pays for nothing more (no
            -- capture id, column list or ledger statement; decision 0042). Rows of
            -- inheritance children are in sg_old too (cut to this table's columns), so none
            -- of theirs can be waiting for this statement's claim either.
            RETURN NULL;
        ELSIF n < 64 THEN                  -- an assignment: as cur_op's below
            kept := softguard._budget_take(k, need, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
                                                               ELSE 'UPDATE' END, ident);
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

-- ---------------------------------------------------------------------------------------
-- TRUNCATE: truncate_op(stmt, ctx). Runs the client's statement as the caller (its own
-- errors and notices), the BEFORE TRUNCATE triggers copy the rows first. O(rows).
-- ---------------------------------------------------------------------------------------

-- The BEFORE TRUNCATE trigger: when softguard.truncate_op runs the statement (the
-- transaction-local setting softguard.truncate_op names its operation), or a protected
-- session truncates inside a DO block, function or procedure (the operation
-- _backstop_truncate opens), copy the rows and the state of the table's owned / identity
-- sequences, within the capture budget. PostgreSQL fires it for every table
-- the TRUNCATE empties (listed, CASCADE, partitions), after its own checks.
CREATE FUNCTION softguard._capture_truncate() RETURNS trigger
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

-- After the TRUNCATE: fill in objects and counts; return the NOTICE text. PUBLIC
-- (truncate_op runs as the client): only an active TRUNCATE of this transaction. When the
-- statement emptied no table softguard captures (temporary tables only) the operation is
-- removed: it would record nothing (verify_operation would refuse the commit).
CREATE FUNCTION softguard._truncate_finish(op bigint, action text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    targets text;
    mine boolean;
BEGIN
    SELECT * INTO o FROM softguard.operations
     WHERE id = op AND kind = 'TRUNCATE' AND txid = pg_current_xact_id() AND state = 'active';
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'softguard: not an open TRUNCATE operation';
    END IF;
    IF NOT EXISTS (SELECT FROM softguard.captures c WHERE c.op_id = op) THEN
        mine := softguard._maintenance_begin();
        DELETE FROM softguard.operations WHERE id = op;
        PERFORM softguard._maintenance_end(mine);
        RETURN format('softguard: %s kept nothing: it emptied no table softguard protects',
                      coalesce(action, 'TRUNCATE TABLE'));
    END IF;
    UPDATE softguard.operations SET
        objects = (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'type', 'table', 'identity', c.table_identity,
                       'schema', split_part(c.table_identity, '.', 1),
                       'name', (SELECT relname FROM pg_class WHERE oid = c.relid),
                       'original', strpos(lower(o.statement),
                                          lower((SELECT relname FROM pg_class WHERE oid = c.relid))) > 0,
                       'normal', true, 'classid', 'pg_class'::regclass::oid, 'objid', c.relid,
                       'objsubid', 0, 'event', 'truncate', 'rows', c.n_rows, 'held_by', NULL)
                       ORDER BY c.id), '[]')
                     FROM softguard.captures c WHERE c.op_id = op AND c.event = 'truncate'),
        row_counts = jsonb_build_object('estimate', false, 'tables', (
            SELECT coalesce(jsonb_object_agg(c.table_identity, c.n_rows), '{}')
              FROM softguard.captures c WHERE c.op_id = op AND c.event = 'truncate'))
     WHERE id = op;
    SELECT string_agg(c.table_identity, ', '
                      ORDER BY nullif(strpos(lower(o.statement), lower(r.relname)), 0) NULLS LAST, c.id)
      INTO targets
      FROM softguard.captures c JOIN pg_class r ON r.oid = c.relid
     WHERE c.op_id = op AND c.event = 'truncate' AND strpos(lower(o.statement), lower(r.relname)) > 0;
    IF targets IS NULL THEN
        SELECT string_agg(c.table_identity, ', ' ORDER BY c.id) INTO targets
          FROM softguard.captures c WHERE c.op_id = op AND c.event = 'truncate';
    END IF;
    RETURN softguard._op_notice(coalesce(action, 'TRUNCATE TABLE'), targets, op, o.expires_at);
END $$;
REVOKE ALL ON FUNCTION softguard._truncate_finish(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._truncate_finish(bigint, text) TO PUBLIC;

--   stmt  the client's TRUNCATE, verbatim
--   ctx   {"client_addr", "retention_seconds", "offset", "action" ('TRUNCATE TABLE')}
-- Notices: SGBEG (message = offset) first, SGEND (message = action) last, forced visible;
-- between them PostgreSQL's own ('truncate cascades to table ...') and one
-- 'softguard: TRUNCATE TABLE <tables> is reversible as operation <id> until <YYYY-MM-DD>'.
CREATE PROCEDURE softguard.truncate_op(stmt text, ctx jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    op bigint;
    far oid[];
BEGIN
    PERFORM softguard._notice(coalesce(ctx->>'offset', '0'), 'SGBEG');
    PERFORM softguard._machinery_check();
    op := softguard._op_begin(stmt, ctx, 'TRUNCATE');
    PERFORM pg_catalog.set_config('softguard.truncate_op', op::text, true);
    far := softguard._remote_locked();
    EXECUTE stmt;
    -- a foreign table fires no TRUNCATE trigger: its rows were not captured (decision 0013)
    PERFORM softguard._remote_truncated(far, stmt);
    PERFORM pg_catalog.set_config('softguard.truncate_op', '', true);
    PERFORM softguard._notice(softguard._truncate_finish(op, coalesce(ctx->>'action', 'TRUNCATE TABLE')));
    PERFORM softguard._notice(coalesce(ctx->>'action', 'TRUNCATE TABLE'), 'SGEND');
END $$;
GRANT EXECUTE ON PROCEDURE softguard.truncate_op(text, jsonb) TO PUBLIC;

-- ---------------------------------------------------------------------------------------
-- The triggers on each table (new tables: 90_event_triggers.sql)
-- ---------------------------------------------------------------------------------------

-- Install the capture triggers on one table (idempotent), enabled ALWAYS:
-- session_replication_role = replica must not silence them (90_event_triggers.sql keeps
-- them so). A trigger that is missing, or not as installed (an owner could replace one
-- before version 3), is (re)created.
CREATE FUNCTION softguard._install_capture(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    saved text := current_setting('session_replication_role');
BEGIN
    -- In replica mode where softguard may set it (_replica): the user's own event triggers
    -- (enabled for origin, the default) do not see the CREATE TRIGGER and ALTER TABLE
    -- commands softguard runs in the client's session (issue 16 class 1); softguard's,
    -- enabled ALWAYS, still do.
    PERFORM softguard._replica('replica');
    PERFORM softguard._install_capture_now(rel);
    PERFORM softguard._replica(saved);
END $$;
REVOKE ALL ON FUNCTION softguard._install_capture(oid) FROM PUBLIC;

CREATE FUNCTION softguard._install_capture_now(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
    redo text[];
    updates boolean;
BEGIN
    SELECT count(*), array_agg(s.name) FILTER (WHERE s.state IN ('missing', 'changed')),
           bool_or(s.name = 'zz_softguard_capture_update')
      INTO n, redo, updates
      FROM softguard._capture_state(ARRAY[rel]) s;
    IF n = 0 THEN
        RETURN;                            -- a relation that need not carry them
    END IF;
    IF NOT updates AND EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = rel
                                  AND t.tgname = 'zz_softguard_capture_update') THEN
        -- UPDATEs are not captured here (decision 0023): no transition tables to fill
        EXECUTE format('DROP TRIGGER IF EXISTS zz_softguard_capture_update ON %s',
                       rel::regclass);
    END IF;
    IF 'zz_softguard_capture_delete' = ANY (redo) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER zz_softguard_capture_delete AFTER DELETE ON %s'
                       ' REFERENCING OLD TABLE AS sg_old FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION softguard._capture_rows()', rel::regclass);
    END IF;
    IF 'zz_softguard_capture_update' = ANY (redo) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER zz_softguard_capture_update AFTER UPDATE ON %s'
                       ' REFERENCING OLD TABLE AS sg_old NEW TABLE AS sg_new FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION softguard._capture_rows()', rel::regclass);
    END IF;
    IF 'zz_softguard_capture_truncate' = ANY (redo) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER zz_softguard_capture_truncate BEFORE TRUNCATE'
                       ' ON %s FOR EACH STATEMENT EXECUTE FUNCTION softguard._capture_truncate()',
                       rel::regclass);
    END IF;
    IF 'zz_softguard_capture_statement' = ANY (redo) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER zz_softguard_capture_statement BEFORE DELETE'
                       '%s ON %s FOR EACH STATEMENT'
                       ' WHEN (pg_catalog.pg_trigger_depth() = 0)'
                       ' EXECUTE FUNCTION softguard._capture_statement()',
                       CASE WHEN updates THEN ' OR UPDATE' ELSE '' END, rel::regclass);
    END IF;
    -- one statement: the tamper guard checks the table after each
    IF EXISTS (SELECT FROM softguard._capture_state(ARRAY[rel]) s WHERE s.state <> 'ok') THEN
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zz_softguard_capture_delete,'
                       '%s ENABLE ALWAYS TRIGGER zz_softguard_capture_truncate,'
                       ' ENABLE ALWAYS TRIGGER zz_softguard_capture_statement', rel::regclass,
                       CASE WHEN updates
                            THEN ' ENABLE ALWAYS TRIGGER zz_softguard_capture_update,' END);
    END IF;
    PERFORM softguard._install_capture_inherited(rel);
END $$;
REVOKE ALL ON FUNCTION softguard._install_capture_now(oid) FROM PUBLIC;

-- _install_capture on a table that is already equipped (adding or removing its UPDATE
-- trigger): as softguard's maintenance, which the tamper guard lets through; replacing
-- an installed trigger passes through a state the guard refuses from anyone else.
CREATE FUNCTION softguard._install_capture_maintained(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mine boolean := softguard._maintenance_begin();
BEGIN
    PERFORM softguard._install_capture(rel);
    PERFORM softguard._maintenance_end(mine);
END $$;
REVOKE ALL ON FUNCTION softguard._install_capture_maintained(oid) FROM PUBLIC;

-- Capture UPDATEs on every table, or only where a DELETE's SET NULL / SET DEFAULT needs it
-- (decision 0023): an UPDATE capture trigger fills transition tables for every UPDATE of
-- every session, direct ones included, so it exists only while some rule protects UPDATE.
-- softguard init sets it from the configuration; register_session switches it on for a
-- session whose policy protects UPDATE (only ever on: registration only adds protection).
-- Takes a SHARE ROW EXCLUSIVE lock on each table it changes, waiting at most
-- lock_timeout.
CREATE FUNCTION softguard._set_capture_updates(wanted boolean) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mine boolean;
    rel oid;
BEGIN
    IF (SELECT s.capture_updates FROM softguard.settings s) IS NOT DISTINCT FROM wanted THEN
        RETURN false;
    END IF;
    IF NOT wanted AND EXISTS (SELECT FROM softguard.sessions s
                               JOIN pg_stat_get_activity(NULL) a
                                 ON a.pid = s.pid AND a.backend_start = s.backend_start
                              WHERE 'update' = ANY (s.capture)) THEN
        -- a registration only ever adds protection: not while a session relies on it
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = 'softguard: UPDATE capture cannot be switched off while sessions '
                      'registered with UPDATE protection are connected',
            HINT = 'Run it again once those sessions have ended (softguard.sessions).';
    END IF;
    IF NOT wanted AND EXISTS (SELECT FROM softguard.pooled_roles p
                               WHERE 'update' = ANY (p.capture)) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = 'softguard: UPDATE capture cannot be switched off while a role '
                      'registered behind a transaction pooler has UPDATE protection',
            HINT = 'Remove the role''s row from softguard.pooled_roles first (as the ledger''s '
                   'owner), if it should no longer be protected.';
    END IF;
    mine := softguard._maintenance_begin();
    UPDATE softguard.settings SET capture_updates = wanted, updated_at = now();
    FOR rel IN SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'p') ORDER BY c.oid LOOP
        PERFORM softguard._install_capture(rel);
    END LOOP;
    PERFORM softguard._maintenance_end(mine);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION softguard._set_capture_updates(boolean) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- What a transition table alone cannot tell undo (issue 10 item 5, threat model G9)
-- ---------------------------------------------------------------------------------------
-- * An UPDATE that changes keys: undo finds rows by the key they have now. Old and new rows
--   of a transition table cannot be paired reliably, so nothing relies on pairing: the
--   keys only in sg_new ("appeared") and only in sg_old ("gone") are kept beside the old
--   rows; undo deletes the appeared rows, re-inserts the gone ones' old images and gives
--   the rest (same key before and after) their old values in place. On a table without a
--   key the same holds with whole rows as the key (multisets: EXCEPT ALL).
-- * A DELETE through an inheritance parent (not a partitioned table): its transition table
--   holds the children's rows cut to the parent's columns. A row trigger on each child
--   (zz_softguard_capture_inherited) keeps them whole in softguard.inherited_rows; the
--   parent's statement trigger moves them into captures of the children and leaves them
--   out of its own (_inherited_claim, _inherited_sql).

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
    -- the same decision as _capture_rows' for a DELETE: the setting, else the registration
    IF NOT ('delete' = ANY (string_to_array(replace(lower(coalesce(cap, '')), ' ', ''), ',')))
       AND NOT ('delete' = ANY (coalesce((SELECT s.capture FROM softguard.sessions s
                                          WHERE s.pid = pg_backend_pid()),
                                         (SELECT p.capture FROM softguard.pooled_roles p
                                           WHERE p.role = session_user), '{}'))) THEN
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
        -- ALWAYS, as the capture triggers: replica mode must not silence it
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zz_softguard_capture_inherited',
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

-- Foreign tables (docs/decisions/0013-remote-writes.md): their rows live on another
-- server, where this session's protection does not reach, and PostgreSQL allows neither
-- transition tables nor TRUNCATE triggers on them. What a protected session would remove
-- or change there is refused (0A000) before the statement is sent, or, for TRUNCATE,
-- before the transaction that ran it (and the remote one with it) can commit.
-- ---------------------------------------------------------------------------------------

-- Refuse a write to a foreign table (rel: the foreign table, what: the verb).
CREATE FUNCTION softguard._remote_refuse(what text, rel regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '0A000',
        MESSAGE = format('softguard: %s on foreign table %s cannot be made reversible', what, rel),
        DETAIL = 'Its rows live on another server: softguard cannot keep what the statement '
                 'would remove or change there, so nothing was changed.',
        HINT = 'Run the statement against the foreign server''s own database through '
               'softguard, or have the policy allow this category for your role.';
END $$;
REVOKE ALL ON FUNCTION softguard._remote_refuse(text, regclass) FROM PUBLIC;

-- BEFORE DELETE OR UPDATE FOR EACH STATEMENT on every foreign table and on every table a
-- foreign table is a partition or child of (a statement trigger fires only on the table
-- the statement names). Refuses for sessions that capture the event: their setting or
-- their registration (as _capture_rows decides). On a parent it refuses whether or not the
-- statement reaches the foreign rows (ONLY, partition pruning): it cannot tell.
CREATE FUNCTION softguard._remote_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events text[] := string_to_array(replace(lower(coalesce(
                         current_setting('softguard.capture', true), '')), ' ', ''), ',');
    far oid;
BEGIN
    IF NOT (lower(TG_OP) = ANY (events)) THEN
        events := coalesce((softguard._session(false)).capture, '{}');
        IF NOT (lower(TG_OP) = ANY (events)) THEN
            RETURN NULL;
        END IF;
    END IF;
    WITH RECURSIVE d(rel) AS (
        SELECT TG_RELID
        UNION SELECT i.inhrelid FROM pg_inherits i JOIN d ON i.inhparent = d.rel)
    SELECT d.rel INTO far FROM d JOIN pg_class c ON c.oid = d.rel
     WHERE c.relkind = 'f' ORDER BY d.rel LIMIT 1;
    IF far IS NOT NULL THEN                -- none: the foreign child was detached since
        PERFORM softguard._remote_refuse(TG_OP, far::regclass);
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._remote_guard() FROM PUBLIC;

-- Put the guard on a foreign table and on every table above it (idempotent).
CREATE FUNCTION softguard._install_remote_guard(rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.oid = rel AND c.relkind = 'f' AND n.nspname NOT LIKE 'softguard%') THEN
        RETURN;
    END IF;
    FOR r IN WITH RECURSIVE a(rel) AS (
                 SELECT rel
                 UNION SELECT i.inhparent FROM pg_inherits i JOIN a ON i.inhrelid = a.rel)
             SELECT a.rel FROM a ORDER BY a.rel LOOP
        IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = r.rel
                        AND tgname = 'zz_softguard_remote_guard') THEN
            EXECUTE format('CREATE TRIGGER zz_softguard_remote_guard BEFORE DELETE OR UPDATE'
                           ' ON %s FOR EACH STATEMENT EXECUTE FUNCTION softguard._remote_guard()',
                           r.rel::regclass);
        END IF;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._install_remote_guard(oid) FROM PUBLIC;

-- The foreign tables this session holds ACCESS EXCLUSIVE locks on: TRUNCATE takes one on
-- every table it empties, foreign ones included, and fires no trigger on those.
CREATE FUNCTION softguard._remote_locked() RETURNS oid[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_class WHERE relkind = 'f') THEN
        RETURN '{}';
    END IF;
    RETURN (SELECT coalesce(array_agg(l.relation ORDER BY l.relation), '{}')
              FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
             WHERE l.locktype = 'relation' AND l.pid = pg_backend_pid() AND l.granted
               AND l.mode = 'AccessExclusiveLock' AND c.relkind = 'f'
               AND l.database = (SELECT oid FROM pg_database
                                  WHERE datname = current_database()));
END $$;
REVOKE ALL ON FUNCTION softguard._remote_locked() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._remote_locked() TO PUBLIC;

-- After truncate_op's TRUNCATE: refuse when it emptied a foreign table - one it locked
-- (not locked before it ran), or one locked before that the statement names.
CREATE FUNCTION softguard._remote_truncated(before oid[], stmt text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    far oid;
BEGIN
    SELECT f INTO far FROM unnest(softguard._remote_locked()) f JOIN pg_class c ON c.oid = f
     WHERE NOT (f = ANY (before)) OR strpos(lower(stmt), lower(c.relname)) > 0
     ORDER BY f LIMIT 1;
    IF far IS NOT NULL THEN
        PERFORM softguard._remote_refuse('TRUNCATE', far::regclass);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._remote_truncated(oid[], text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._remote_truncated(oid[], text) TO PUBLIC;
