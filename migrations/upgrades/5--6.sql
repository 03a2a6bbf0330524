-- Version 6: <leave this line as is>

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', e.evtname);
    END LOOP;
END $$;

-- section: capture ---------------------------------------------------------------------
-- The capture path (issue 13 item 5; docs/decisions/0024-capture-path.md): fewer
-- statements per captured DELETE, purge_rows without rescanning.
ALTER TABLE softguard.captures DROP CONSTRAINT IF EXISTS captures_op_id_fkey;

CREATE OR REPLACE FUNCTION softguard._budget_used(key text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_catalog.split_part(pg_catalog.current_setting('softguard.capture_bytes',
                                                                      true), '/', 1) = key
                 AND pg_catalog.split_part(pg_catalog.current_setting('softguard.capture_bytes',
                                                                      true), '/', 2)
                     ~ '^[0-9]{1,18}$'
                THEN pg_catalog.split_part(pg_catalog.current_setting('softguard.capture_bytes',
                                                                      true), '/', 2)::bigint
                ELSE 0 END
$$;
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
    -- softguard._session(false), inlined: this runs for every uncaptured UPDATE
    SELECT s.capture, s.max_rows, s.max_rows_by, s.denied_tables
      INTO reg_capture, lim, lim_by, denied
      FROM softguard.sessions s WHERE s.pid = pg_backend_pid();
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
            IF n > 0 THEN
                PERFORM softguard._budget_take(k, need, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
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
            stmt := softguard._client_text(current_query());
            first_word := upper(substring(stmt FROM '^\s*([A-Za-z]+)'));
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
                coalesce(stmt, ''), op_kind,
                jsonb_build_array(obj),
                jsonb_build_object('estimate', false, 'tables', jsonb_build_object(ident, n)),
                '[]')
        RETURNING id INTO op;
        PERFORM set_config('softguard.cur_op', format('%s/%s/%s', k, op, op_kind), true);
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
CREATE OR REPLACE FUNCTION softguard._capture_budget(OUT bytes bigint, OUT why text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s softguard.settings;
    own text := current_setting('softguard.max_capture_bytes', true);
    disk bigint;
BEGIN
    SELECT * INTO s FROM softguard.settings;
    bytes := coalesce(s.max_capture_bytes, 1073741824);
    why := 'max_capture_bytes';
    IF s.disk_total_bytes IS NOT NULL AND s.disk_free_bytes IS NOT NULL THEN
        disk := greatest(0, s.disk_free_bytes
                            - ceil(s.disk_total_bytes * s.min_free_disk_percent / 100)::bigint);
        IF disk < bytes THEN
            bytes := disk;
            why := format('min_free_disk_percent: %s%% of the disk must stay free, %s was free'
                          ' at %s', s.min_free_disk_percent, pg_size_pretty(s.disk_free_bytes),
                          to_char(s.disk_checked_at, 'YYYY-MM-DD HH24:MI:SS TZ'));
        END IF;
    END IF;
    IF own ~ '^\s*[0-9]{1,18}\s*$' AND own::bigint < bytes THEN
        bytes := own::bigint;
        why := 'this session''s softguard.max_capture_bytes';
    END IF;
END $$;
CREATE OR REPLACE FUNCTION softguard._budget_take(key text, need bigint, keep boolean, what text,
                                       target text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    used bigint := softguard._budget_used(key);
    b record;
BEGIN
    SELECT * INTO b FROM softguard._capture_budget();
    IF used + need > b.bytes THEN
        PERFORM softguard._budget_refuse(what, target, used + need, b.bytes, b.why);
    END IF;
    IF keep THEN
        PERFORM set_config('softguard.capture_bytes', key || '/' || (used + need), true);
    END IF;
END $$;
CREATE OR REPLACE FUNCTION softguard._budget_fits(key text, rel oid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    size bigint;
    used bigint;
    b record;
BEGIN
    SELECT CASE WHEN c.relhassubclass THEN NULL ELSE pg_catalog.pg_table_size(c.oid) END
      INTO size FROM pg_catalog.pg_class c WHERE c.oid = rel;
    IF size IS NULL THEN
        RETURN false;
    END IF;
    used := softguard._budget_used(key);
    SELECT * INTO b FROM softguard._capture_budget();
    IF used + size > b.bytes THEN
        RETURN false;
    END IF;
    PERFORM set_config('softguard.capture_bytes', key || '/' || (used + size), true);
    RETURN true;
END $$;
CREATE OR REPLACE FUNCTION softguard.purge_rows(batch integer DEFAULT 10000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    cid bigint;
    span jsonb;
    first_tid tid;
    last_tid tid;
    want integer;
    n bigint;
    done bigint := 0;
    mine boolean := softguard._maintenance_begin();
BEGIN
    LOOP
        want := greatest(batch - done, 0)::integer;
        EXIT WHEN want = 0;
        SELECT c.id, c.info->'purge_span' INTO cid, span FROM softguard.captures c
         WHERE c.released_at IS NOT NULL ORDER BY c.id LIMIT 1;
        EXIT WHEN cid IS NULL;
        IF span IS NULL THEN
            SELECT min(r.ctid), max(r.ctid) INTO first_tid, last_tid
              FROM softguard.captured_rows r WHERE r.capture_id = cid;
            IF first_tid IS NULL THEN      -- no rows (a sequence's, a column's capture)
                DELETE FROM softguard.captures c WHERE c.id = cid;
                done := done + 1;
                cid := NULL;
                CONTINUE;
            END IF;
            span := jsonb_build_array((first_tid::text::point)[0]::bigint,
                                      (last_tid::text::point)[0]::bigint);
        END IF;
        -- capture_id + 0: not the BRIN index (it would rescan the capture from its start)
        WITH d AS (
            DELETE FROM softguard.captured_rows cr
             WHERE cr.ctid = ANY (ARRAY(
                       SELECT x.ctid FROM softguard.captured_rows x
                        WHERE x.ctid >= format('(%s,0)', span->>0)::tid
                          AND x.ctid <= format('(%s,65535)', span->>1)::tid
                          AND x.capture_id + 0 = cid
                        LIMIT want))
            RETURNING cr.ctid)
        SELECT count(*), max(d.ctid) INTO n, last_tid FROM d;
        done := done + n;
        IF n < want THEN
            DELETE FROM softguard.captures c WHERE c.id = cid;
            done := done + 1;
        ELSE
            UPDATE softguard.captures c
               SET info = coalesce(c.info, '{}') || jsonb_build_object('purge_span',
                              jsonb_build_array((last_tid::text::point)[0]::bigint, span->1))
             WHERE c.id = cid;
        END IF;
        cid := NULL;
    END LOOP;
    PERFORM softguard._maintenance_end(mine);
    RETURN done;
END $$;
-- end section: capture -----------------------------------------------------------------

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
END $$;
