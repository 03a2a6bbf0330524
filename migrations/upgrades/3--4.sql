-- Version 4: what the proxy cannot see (backstop, budget, definitions, large objects),
-- modes for agents, and the work of issues 11-18 (docs/decisions/0014-0019).
--
-- As in 2--3.sql: softguard's event triggers are off while the sections run, every
-- function a section (re)defines has its final definition, and the passes over existing
-- tables run once at the end, before every event trigger is enabled ALWAYS again.

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', e.evtname);
    END LOOP;
END $$;

-- section: approvals -------------------------------------------------------------------
CREATE TABLE softguard.approvals (
    id            text PRIMARY KEY,
    statement_sha text NOT NULL,           -- sha256 hex of role, database and the text
    role          text NOT NULL,
    statement     text NOT NULL,           -- the client's exact text
    reason        text NOT NULL,           -- why softguard refused it
    client_addr   text,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    requests      integer NOT NULL DEFAULT 1,
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'approved', 'denied', 'used')),
    decided_by    text,
    decided_at    timestamptz,
    used_at       timestamptz,
    used_pid      integer,
    used_xact     xid8
);
REVOKE ALL ON softguard.approvals FROM PUBLIC;
COMMENT ON TABLE softguard.approvals IS
    'refused statements a person may approve once (softguard approve / deny / pending)';

-- The hash an approval is bound to.
CREATE OR REPLACE FUNCTION softguard._approval_sha(role text, db text, statement text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
        role || pg_catalog.chr(1) || db || pg_catalog.chr(1) || statement, 'UTF8')), 'hex')
$$;
REVOKE ALL ON FUNCTION softguard._approval_sha(text, text, text) FROM PUBLIC;

-- The proxy asks for approval of what it refused (its own connection; any role may call
-- it: a request only waits for a person). An approval not yet used stays approved; a used
-- one is asked again only after a minute (the proxy asks while sending the retry).
CREATE OR REPLACE FUNCTION softguard.request_approval(p_role text, p_db text, p_statement text,
                                           p_reason text, p_addr text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sha text := softguard._approval_sha(p_role, p_db, p_statement);
    approval_id text := left(sha, 16);
BEGIN
    DELETE FROM softguard.approvals WHERE requested_at < now() - interval '30 days';
    INSERT INTO softguard.approvals AS a (id, statement_sha, role, statement, reason,
                                          client_addr)
    VALUES (approval_id, sha, p_role, p_statement, left(p_reason, 2000), p_addr)
    ON CONFLICT (id) DO UPDATE SET
        requests = a.requests + 1,
        requested_at = now(),
        state = CASE WHEN a.state = 'used' THEN 'pending' ELSE a.state END,
        decided_by = CASE WHEN a.state = 'used' THEN NULL ELSE a.decided_by END,
        decided_at = CASE WHEN a.state = 'used' THEN NULL ELSE a.decided_at END
    WHERE a.statement_sha = excluded.statement_sha
      AND NOT (a.state = 'used' AND a.used_at > now() - interval '1 minute');
    RETURN approval_id;
END $$;
REVOKE ALL ON FUNCTION softguard.request_approval(text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.request_approval(text, text, text, text, text) TO PUBLIC;

-- The retry's gate: runs the statement after it (same transaction) if a person approved
-- exactly this text for this role within the last hour, once; else raises the refusal.
-- Bound to the query the client sent: the proxy's marker carries the client's text
-- (softguard._client_text), and clients cannot send texts naming softguard.
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
           SET state = 'used', used_at = now(), used_pid = pg_backend_pid(),
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

-- Whether this transaction runs an approved statement (the modes' guard lets its DDL
-- through).
CREATE OR REPLACE FUNCTION softguard._approved_here() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM softguard.approvals a
                    WHERE a.used_pid = pg_backend_pid()
                      AND a.used_xact = pg_current_xact_id_if_assigned())
$$;
REVOKE ALL ON FUNCTION softguard._approved_here() FROM PUBLIC;

-- A person's decision (softguard approve / deny): the operator's role only.
CREATE OR REPLACE FUNCTION softguard.decide_approval(p_id text, p_approve boolean, p_by text)
RETURNS softguard.approvals
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r softguard.approvals;
BEGIN
    UPDATE softguard.approvals a
       SET state = CASE WHEN p_approve THEN 'approved' ELSE 'denied' END,
           decided_by = coalesce(nullif(p_by, ''), session_user::text), decided_at = now()
     WHERE a.id = p_id AND a.state IN ('pending', 'approved', 'denied')
    RETURNING * INTO r;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002',
            MESSAGE = format('softguard: no approval request %s waiting', p_id),
            HINT = 'softguard pending lists the requests; a used approval needs a new request.';
    END IF;
    RETURN r;
END $$;
REVOKE ALL ON FUNCTION softguard.decide_approval(text, boolean, text) FROM PUBLIC;
-- end section: approvals ---------------------------------------------------------------

-- section: modes -----------------------------------------------------------------------
CREATE OR REPLACE FUNCTION softguard.register_session(events text, retention integer, addr text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    wanted text[];
    started timestamptz := softguard._backend_start();
BEGIN
    wanted := ARRAY(SELECT DISTINCT e
                      FROM unnest(string_to_array(replace(lower(coalesce(events, '')), ' ', ''),
                                                  ',')) e
                     WHERE e NOT IN ('', 'off') ORDER BY 1);
    IF NOT wanted <@ ARRAY['delete', 'update', 'drop', 'truncate', 'alter', 'schema',
                           'read_only'] THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('softguard: unknown protected categories %L', events),
            HINT = 'Categories are delete, update, drop, truncate, alter, schema and read_only.';
    END IF;
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
                                         client_addr)
    VALUES (pg_backend_pid(), started, wanted, retention, nullif(addr, ''))
    ON CONFLICT (pid) DO UPDATE SET
        capture = ARRAY(SELECT DISTINCT e FROM unnest(s.capture || excluded.capture) e
                         ORDER BY 1),
        retention_seconds = greatest(s.retention_seconds, excluded.retention_seconds),
        client_addr = coalesce(s.client_addr, excluded.client_addr);
    IF 'read_only' = ANY (wanted) THEN
        -- Where a pooler dropped the proxy's startup setting (decision 0019); the proxy
        -- refuses statements that would set it back.
        PERFORM set_config('default_transaction_read_only', 'on', false);
    END IF;
END $$;
CREATE OR REPLACE FUNCTION softguard._mode_guard() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    reg softguard.sessions := softguard._session(false);
BEGIN
    IF reg.pid IS NULL OR NOT ('schema' = ANY (reg.capture)) THEN
        RETURN;
    END IF;
    IF softguard._approved_here() THEN   -- a statement a person approved (86_approvals)
        RETURN;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('softguard: %s is refused: this session may change data, not the '
                         'schema (its softguard mode)', tg_tag),
        HINT = 'INSERT, UPDATE, DELETE, MERGE and TRUNCATE are allowed (and reversible). '
               'Ask an operator to make schema changes, or to give this role mode "full".';
END $$;
REVOKE ALL ON FUNCTION softguard._mode_guard() FROM PUBLIC;

CREATE EVENT TRIGGER softguard_mode_guard ON ddl_command_start
    EXECUTE FUNCTION softguard._mode_guard();
ALTER EVENT TRIGGER softguard_mode_guard ENABLE ALWAYS;
-- end section: modes -------------------------------------------------------------------

-- section: budget ------------------------------------------------
-- The capture budget (07_settings.sql; decision 0014) and TRUNCATE captured from anywhere
-- (85_backstop.sql): issue 11 items 7 and 2.

CREATE TABLE softguard.settings (
    one                    boolean PRIMARY KEY DEFAULT true CHECK (one),
    max_capture_bytes      bigint NOT NULL DEFAULT 1073741824 CHECK (max_capture_bytes >= 0),
    min_free_disk_percent  real NOT NULL DEFAULT 10
                           CHECK (min_free_disk_percent >= 0 AND min_free_disk_percent <= 100),
    -- the disk holding the data directory, as softguard last measured it (NULL: it cannot
    -- tell, e.g. a server on another host)
    disk_total_bytes       bigint CHECK (disk_total_bytes >= 0),
    disk_free_bytes        bigint CHECK (disk_free_bytes >= 0),
    disk_checked_at        timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON softguard.settings FROM PUBLIC;
INSERT INTO softguard.settings DEFAULT VALUES;
COMMENT ON TABLE softguard.settings IS
    'the capture budget, kept equal to softguard''s configuration (softguard init, serve)';

-- Every write outside _settings_set is refused (a superuser's too, unless it also forges
-- the maintenance mark: best effort against A2, as for the ledger).
CREATE OR REPLACE FUNCTION softguard._guard_settings() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT softguard._in_maintenance() THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'softguard: softguard.settings cannot be changed',
            HINT = 'Set max_capture_bytes and min_free_disk_percent in softguard''s '
                   'configuration, then run softguard init or restart softguard serve.';
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._guard_settings() FROM PUBLIC;
CREATE TRIGGER guard_settings BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON softguard.settings FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_settings();
ALTER TABLE softguard.settings ENABLE ALWAYS TRIGGER guard_settings;

-- Set the budget (softguard's own connections: softguard/ledger/budget.py). NULL disk
-- figures: unknown. Refused in a session the proxy registered: that is a client's.
CREATE OR REPLACE FUNCTION softguard._settings_set(max_bytes bigint, min_free_percent real,
                                        disk_total bigint, disk_free bigint) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mine boolean;
BEGIN
    IF (softguard._session(false)).pid IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'softguard: the capture budget cannot be changed from a client session',
            HINT = 'Set max_capture_bytes in softguard''s configuration.';
    END IF;
    mine := softguard._maintenance_begin();
    UPDATE softguard.settings SET
        max_capture_bytes = max_bytes, min_free_disk_percent = min_free_percent,
        disk_total_bytes = disk_total, disk_free_bytes = disk_free,
        disk_checked_at = CASE WHEN disk_total IS NULL THEN NULL ELSE now() END,
        updated_at = now();
    PERFORM softguard._maintenance_end(mine);
END $$;
REVOKE ALL ON FUNCTION softguard._settings_set(bigint, real, bigint, bigint) FROM PUBLIC;

-- What one statement may copy into the ledger now, and which limit that is: the least of
-- max_capture_bytes, what keeps min_free_disk_percent of the disk free (when a disk sample
-- is known), and the session's own softguard.max_capture_bytes (it may only lower).
CREATE OR REPLACE FUNCTION softguard._capture_budget(OUT bytes bigint, OUT why text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
REVOKE ALL ON FUNCTION softguard._capture_budget() FROM PUBLIC;

-- Refuse a capture over the budget (54000): nothing was changed, the statement's
-- transaction aborts.
CREATE OR REPLACE FUNCTION softguard._budget_refuse(what text, target text, need bigint, budget bigint,
                                         why text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '54000',
        MESSAGE = format('softguard: %s %s would keep about %s in the ledger, over the capture'
                         ' budget of %s (%s)', what, target, pg_size_pretty(need),
                         pg_size_pretty(budget), why),
        DETAIL = 'softguard keeps a copy of what a statement removes or changes; a copy this '
                 'large could fill the disk, so nothing was changed.',
        HINT = 'Delete in batches under the budget; or raise max_capture_bytes in softguard''s '
               'configuration (then run softguard init or restart softguard serve); or have '
               'the operator set this category to "allow" in the policy for your role.';
END $$;
REVOKE ALL ON FUNCTION softguard._budget_refuse(text, text, bigint, bigint, text) FROM PUBLIC;

-- The bytes statement `key` kept so far: a transaction-local running total
-- (softguard.capture_bytes = '<key>/<bytes>'). The session could reset it from a trigger
-- of its own; that only splits a statement's capture the way separate statements would
-- (each table is still checked on its own): the budget is per statement, not a quota.
CREATE OR REPLACE FUNCTION softguard._budget_used(key text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_catalog.split_part(s, '/', 1) = key
                 AND pg_catalog.split_part(s, '/', 2) ~ '^[0-9]{1,18}$'
                THEN pg_catalog.split_part(s, '/', 2)::bigint ELSE 0 END
      FROM (SELECT pg_catalog.current_setting('softguard.capture_bytes', true) AS s) x
$$;
REVOKE ALL ON FUNCTION softguard._budget_used(text) FROM PUBLIC;

-- Check that statement `key` may keep `need` more bytes (refuse with 54000 when not); with
-- `keep`, count them into its running total.
CREATE OR REPLACE FUNCTION softguard._budget_take(key text, need bigint, keep boolean, what text,
                                       target text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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
REVOKE ALL ON FUNCTION softguard._budget_take(text, bigint, boolean, text, text) FROM PUBLIC;

-- The fast path of a DELETE / UPDATE capture: when the whole table fits in what statement
-- `key` may still keep, its size is counted (an upper bound of what the statement
-- removes) and the rows need not be measured. False when it does not fit, or when the
-- table has children (a partitioned or inheritance parent's own size says nothing): the
-- capture trigger then measures its transition table and calls _budget_take.
CREATE OR REPLACE FUNCTION softguard._budget_fits(key text, rel oid) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    size bigint;
    used bigint;
    b record;
BEGIN
    SELECT CASE WHEN c.relhassubclass THEN NULL ELSE pg_table_size(c.oid) END INTO size
      FROM pg_class c WHERE c.oid = rel;
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
REVOKE ALL ON FUNCTION softguard._budget_fits(text, oid) FROM PUBLIC;

-- Before a TRUNCATE copies table `rel` for operation `op`: every table this backend holds
-- ACCESS EXCLUSIVE (PostgreSQL locks all the tables a TRUNCATE empties - listed, CASCADE,
-- partitions - before it fires the first BEFORE TRUNCATE trigger) that the operation has
-- not copied yet is measured (pg_table_size: heap and TOAST), so the first table's trigger
-- refuses before anything is copied. Over-counts only tables the same transaction locked
-- earlier and does not truncate now (refused where the copy might have fitted).
CREATE OR REPLACE FUNCTION softguard._budget_truncate(op bigint, rel oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    need bigint;
    names text;
    n integer;
BEGIN
    SELECT coalesce(sum(t.size), 0), count(*),
           string_agg(t.rel::regclass::text, ', ' ORDER BY t.size DESC, t.rel)
             FILTER (WHERE t.rank <= 3)
      INTO need, n, names
      FROM (SELECT l.relation AS rel, pg_table_size(l.relation) AS size,
                   row_number() OVER (ORDER BY pg_table_size(l.relation) DESC, l.relation) AS rank
              FROM pg_locks l
             WHERE l.locktype = 'relation' AND l.pid = pg_backend_pid() AND l.granted
               AND l.mode = 'AccessExclusiveLock'
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND (l.relation = rel OR (softguard._protected_table(l.relation)
                    AND NOT EXISTS (SELECT FROM softguard.captures c
                                     WHERE c.op_id = op AND c.relid = l.relation
                                       AND c.event = 'truncate')))) t;
    PERFORM softguard._budget_take('op' || op, need, false, 'TRUNCATE of',
                                   names || CASE WHEN n > 3 THEN format(' and %s more tables', n - 3)
                                                 ELSE '' END);
END $$;
REVOKE ALL ON FUNCTION softguard._budget_truncate(bigint, oid) FROM PUBLIC;

-- The statement-level AFTER DELETE / AFTER UPDATE trigger (transition table sg_old).
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
        -- the capture budget (07_settings.sql), before anything is copied: a table that
        -- fits whole needs no measuring
        IF NOT softguard._budget_fits(k, TG_RELID) THEN
            SELECT coalesce(sum(pg_column_size(o)), 0) INTO n FROM sg_old o;
            PERFORM softguard._budget_take(k, n, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
                                                                ELSE 'UPDATE' END, ident);
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
    PERFORM softguard._capture_more(op, cid, TG_RELID, info, inh);
    RETURN NULL;
END $$;
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
    cid bigint;
    n bigint;
    ident text;
    s record;
    st record;
    size bigint;
    nested boolean := false;
BEGIN
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
    EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                   ' SELECT %s, t::text FROM ONLY %s t', cid, TG_RELID::regclass);
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns)
    VALUES (cid, op, TG_RELID, ident, 'truncate', n, softguard._columns(TG_RELID));
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

-- its result type changed (void -> bigint)
DROP FUNCTION softguard._backstop_truncate(regclass);
-- BEFORE TRUNCATE, outside truncate_op (a DO block, function, procedure, trigger): a
-- protected session's TRUNCATE is captured like a top-level one (issue 11 item 2). Returns
-- the operation the trigger copies into (NULL: the session is not registered for
-- 'truncate', nothing to keep). One operation per top-level client statement, as for
-- DELETE: the first table opens it (statement = the client's whole text) and raises its
-- NOTICE; the statement's other tables, and its later TRUNCATEs, join it
-- (softguard.nested_truncate = '<statement key>/<op>', honoured only for an active
-- TRUNCATE of this transaction). A foreign table fires no trigger: see decision 0013.
CREATE OR REPLACE FUNCTION softguard._backstop_truncate(rel regclass) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k text;
    cur text;
    op bigint;
    reg softguard.sessions;
    expires timestamptz;
BEGIN
    IF NOT coalesce('truncate' = ANY ((softguard._session(false)).capture), false) THEN
        RETURN NULL;
    END IF;
    k := (extract(epoch FROM statement_timestamp()) * 1000000)::bigint::text;
    cur := current_setting('softguard.nested_truncate', true);
    IF cur IS NOT NULL AND split_part(cur, '/', 1) = k AND split_part(cur, '/', 2) ~ '^[0-9]{1,18}$' THEN
        SELECT o.id INTO op FROM softguard.operations o
         WHERE o.id = split_part(cur, '/', 2)::bigint AND o.kind = 'TRUNCATE'
           AND o.txid = pg_current_xact_id() AND o.state = 'active';
        IF op IS NOT NULL THEN
            RETURN op;
        END IF;
    END IF;
    reg := softguard._session(true);
    expires := now() + softguard._retention(
        reg, nullif(current_setting('softguard.retention', true), '')::integer);
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, row_counts, restore)
    VALUES (expires, session_user, softguard._client_role(),
            current_setting('application_name', true), softguard._client_addr(reg),
            coalesce(softguard._client_text(current_query()), ''), 'TRUNCATE', '[]',
            jsonb_build_object('estimate', false, 'tables', '{}'::jsonb), '[]')
    RETURNING id INTO op;
    PERFORM set_config('softguard.nested_truncate', k || '/' || op, true);
    PERFORM softguard._notice(softguard._op_notice(
        'TRUNCATE TABLE', rel::text || ' (run inside a function or DO block)', op, expires));
    RETURN op;
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_truncate(regclass) FROM PUBLIC;

-- After _capture_truncate copied table `rel` (`ident`, `n` rows) for the operation
-- _backstop_truncate opened: what _truncate_finish does for truncate_op, one table at a
-- time (objects marked nested: the statement recorded is the client's whole text).
CREATE OR REPLACE FUNCTION softguard._backstop_truncated(op bigint, rel oid, ident text, n bigint)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name text := (SELECT c.relname FROM pg_class c WHERE c.oid = rel);
BEGIN
    UPDATE softguard.operations o SET
        objects = o.objects || jsonb_build_array(jsonb_build_object(
            'type', 'table', 'identity', ident, 'schema', split_part(ident, '.', 1),
            'name', name, 'original', strpos(lower(o.statement), lower(name)) > 0,
            'normal', true, 'classid', 'pg_class'::regclass::oid, 'objid', rel,
            'objsubid', 0, 'event', 'truncate', 'rows', n, 'held_by', NULL, 'nested', true)),
        row_counts = jsonb_set(o.row_counts, ARRAY['tables', ident],
            to_jsonb(coalesce((o.row_counts->'tables'->>ident)::bigint, 0) + n))
     WHERE o.id = op;
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_truncated(bigint, oid, text, bigint) FROM PUBLIC;
-- end section: budget --------------------------------------------


DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
END $$;
