-- Row capture: reversible DELETE, UPDATE, MERGE and TRUNCATE (the soft-delete branch of the
-- capture trigger reads 60_soft_delete.sql's helpers). Design: docs/decisions/0006-row-capture.md.
-- Undo: 70_undo.sql (_undo_rows).
--
-- What always holds:
-- * Rows are captured in the database, in the transaction that removes or changes them:
--   statement-level AFTER DELETE / AFTER UPDATE triggers with transition tables on every
--   user table (so rows removed by ON DELETE CASCADE, changed by SET NULL / SET DEFAULT, by
--   rules, user triggers and functions are caught too), and BEFORE TRUNCATE triggers that
--   copy a table's rows when softguard.truncate_op runs the TRUNCATE. ROLLBACK keeps nothing.
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
BEGIN
    PERFORM pg_catalog.set_config('softguard.cur_op', '', true);
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
    -- What this session captures: its registration, plus what its setting adds (G6). The
    -- setting, written by the proxy at startup, is the fast path; a session whose setting
    -- does not name the event asks its registration, which the client cannot change.
    events := string_to_array(replace(lower(coalesce(cap, '')), ' ', ''), ',');
    IF NOT (ev = ANY (events)) THEN
        -- softguard._session(false), inlined: this runs for every uncaptured UPDATE
        events := events || coalesce((SELECT s.capture FROM softguard.sessions s
                                       WHERE s.pid = pg_backend_pid()), '{}');
        IF NOT (events && ARRAY['delete', 'update']) THEN
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
            first_word := upper(substring(softguard._client_text(current_query())
                                          FROM '^\s*([A-Za-z]+)'));
            op_kind := CASE WHEN first_word = 'MERGE' THEN 'MERGE' ELSE TG_OP END;
        END IF;
        reg := softguard._session(true);
        expires := now() + softguard._retention(
            reg, nullif(current_setting('softguard.retention', true), '')::integer);
        INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                          client_addr, statement, kind, objects, row_counts,
                                          restore)
        VALUES (expires, session_user, softguard._client_role(),
                current_setting('application_name', true),
                softguard._client_addr(reg),
                coalesce(stmt, softguard._client_text(current_query()), ''), op_kind,
                jsonb_build_array(obj),
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
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_rows() FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- TRUNCATE: truncate_op(stmt, ctx). Runs the client's statement as the caller (its own
-- errors and notices), the BEFORE TRUNCATE triggers copy the rows first. O(rows).
-- ---------------------------------------------------------------------------------------

-- The BEFORE TRUNCATE trigger: when softguard.truncate_op runs the statement (the
-- transaction-local setting softguard.truncate_op names its operation), copy the rows and
-- the state of the table's owned / identity sequences. PostgreSQL fires it for every table
-- the TRUNCATE empties (listed, CASCADE, partitions), after its own checks.
CREATE FUNCTION softguard._capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    op bigint := nullif(current_setting('softguard.truncate_op', true), '')::bigint;
    cid bigint;
    n bigint;
    ident text;
    s record;
    st record;
BEGIN
    -- only the operation truncate_op opened in this transaction; any other TRUNCATE of a
    -- protected session is refused (85_backstop.sql)
    PERFORM FROM softguard.operations o
      WHERE o.id = op AND o.kind = 'TRUNCATE' AND o.txid = pg_current_xact_id();
    IF NOT FOUND THEN
        PERFORM softguard._backstop_truncate(TG_RELID::regclass);
        RETURN NULL;
    END IF;
    ident := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    cid := nextval(pg_get_serial_sequence('softguard.captures', 'id')::regclass);
    EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                   ' SELECT %s, t::text FROM ONLY %s t', cid, TG_RELID::regclass);
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns)
    VALUES (cid, op, TG_RELID, ident, 'truncate', n, softguard._columns(TG_RELID));
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

-- After the TRUNCATE: fill in objects and counts; return the NOTICE text.
CREATE FUNCTION softguard._truncate_finish(op bigint, action text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    targets text;
BEGIN
    SELECT * INTO o FROM softguard.operations
     WHERE id = op AND kind = 'TRUNCATE' AND txid = pg_current_xact_id();
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'softguard: not an open TRUNCATE operation';
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

-- Install the capture triggers on one table (idempotent).
CREATE FUNCTION softguard._install_capture(rel oid) RETURNS void
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
                       ' REFERENCING OLD TABLE AS sg_old FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION softguard._capture_rows()', rel::regclass);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = rel
                    AND tgname = 'zz_softguard_capture_truncate') THEN
        EXECUTE format('CREATE TRIGGER zz_softguard_capture_truncate BEFORE TRUNCATE ON %s'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION softguard._capture_truncate()',
                       rel::regclass);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = rel
                    AND tgname = 'zz_softguard_capture_statement') THEN
        EXECUTE format('CREATE TRIGGER zz_softguard_capture_statement BEFORE DELETE OR UPDATE'
                       ' ON %s FOR EACH STATEMENT WHEN (pg_catalog.pg_trigger_depth() = 0)'
                       ' EXECUTE FUNCTION softguard._capture_statement()', rel::regclass);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._install_capture(oid) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
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
