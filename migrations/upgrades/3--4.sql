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
-- Every event trigger softguard relies on is required (a dropped one is found too).
CREATE OR REPLACE FUNCTION softguard._machinery_check() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    off text;
BEGIN
    SELECT string_agg(x.name, ', ' ORDER BY x.name) INTO off
      FROM (SELECT w.name FROM unnest(ARRAY['softguard_capture_ddl_end',
                'softguard_capture_install', 'softguard_capture_sql_drop',
                'softguard_capture_tamper_ddl', 'softguard_capture_tamper_drop',
                'softguard_capture_inherit', 'softguard_capture_remote',
                'softguard_capture_definitions', 'softguard_capture_definitions_drop',
                'softguard_capture_sequences_start', 'softguard_capture_sequences_end',
                'softguard_mode_guard']) w(name)
             WHERE NOT EXISTS (SELECT FROM pg_event_trigger e
                                WHERE e.evtname = w.name AND e.evtenabled = 'A')
            UNION
            SELECT e.evtname FROM pg_event_trigger e
             WHERE e.evtname LIKE 'softguard\_%' AND e.evtenabled <> 'A') x;
    IF off IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('softguard: event trigger(s) %s missing or not enabled ALWAYS; '
                             'refusing the statement', off),
            HINT = 'A superuser restores them on a direct connection (ALTER EVENT TRIGGER '
                   '... ENABLE ALWAYS, or a fresh softguard init).';
    END IF;
END $$;
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

-- section: kinds ------------------------------------------------
-- Every DROP kind classified (docs/drop-kinds.md): a range type's multirange and
-- constructors move with it, shell types drop as PostgreSQL drops them, the backstop
-- refuses a CASCADE of any kind that takes data, a dropped column's NOTICE says it
-- comes back last.
CREATE OR REPLACE FUNCTION softguard._quarantine(list jsonb, stmt text, ctx jsonb, invoker text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    op_id bigint;
    n integer := 0;
    steps jsonb := '[]';
    r record;
    x record;
    own oid;
    going oid[];            -- listed relations leaving the live schema (moved or with a schema)
    dropped_schemas text[];
    moves jsonb := '[]';    -- the listed objects to move, in list order
    links jsonb := '[]';    -- links on live objects to record and drop
    kw text;
    qn text;
    acl jsonb;
    expires timestamptz;
    targets text;
    is_super boolean;
    held jsonb;             -- 'classid/objid/objsubid' -> the earlier operation holding it
    reg softguard.sessions := softguard._session(true);
BEGIN
    SELECT rolsuper INTO is_super FROM pg_roles WHERE rolname = session_user;
    IF NOT coalesce((SELECT pg_has_role(session_user, g.oid, 'MEMBER')
                       FROM pg_roles g WHERE g.rolname = invoker), false) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: role %s is not a role of this session', invoker);
    END IF;
    IF coalesce(ctx->>'action', 'DROP') !~ '^DROP( [A-Z]+)*$' THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: %s is not a DROP', ctx->>'action');
    END IF;

    -- 1. The list must be what a DROP by this session would remove.
    FOR r IN SELECT * FROM softguard._list(list) l WHERE l.original LOOP
        own := softguard._owner(r.classid, r.objid);
        IF own IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('softguard cannot keep %s %s', r.object_type, r.object_identity);
        END IF;
        IF NOT is_super AND NOT pg_has_role(session_user, own, 'MEMBER') THEN
            RAISE EXCEPTION USING ERRCODE = '42501',
                MESSAGE = format('must be owner of %s %s', r.object_type, r.object_identity);
        END IF;
    END LOOP;
    IF EXISTS (
        SELECT FROM softguard._list(list) l
         WHERE NOT l.original
           AND NOT EXISTS (
               SELECT FROM pg_depend d
                WHERE d.classid = l.classid AND d.objid = l.objid
                  AND (d.refclassid, d.refobjid) IN (
                      SELECT (e->>'classid')::oid, (e->>'objid')::oid
                        FROM jsonb_array_elements(list) e))
           AND NOT EXISTS (   -- e.g. a view: its listed _RETURN rule depends on the table
               SELECT FROM pg_depend d
                WHERE d.refclassid = l.classid AND d.refobjid = l.objid AND d.deptype = 'i'
                  AND (d.classid, d.objid) IN (
                      SELECT (e->>'classid')::oid, (e->>'objid')::oid
                        FROM jsonb_array_elements(list) e))) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'softguard: the object list does not match what the statement drops';
    END IF;

    expires := now() + softguard._retention(reg, (ctx->>'retention_seconds')::integer);
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, restore)
    VALUES (expires, session_user, invoker, current_setting('application_name', true),
            softguard._client_addr(reg), stmt,
            coalesce(ctx->>'action', 'DROP'), '[]', '[]')
    RETURNING id INTO op_id;

    SELECT coalesce(jsonb_object_agg(format('%s/%s/%s', l.classid, l.objid, l.objsubid),
                                     softguard._holder(l.classid, l.objid, l.objsubid)), '{}')
      INTO held
      FROM softguard._list(list) l
     WHERE coalesce(softguard._is_quarantine_schema(l.home), false);
    SELECT coalesce(array_agg(l.object_name), '{}') INTO dropped_schemas
      FROM softguard._list(list) l WHERE l.object_type = 'schema';
    SELECT coalesce(array_agg(l.objid), '{}') INTO going
      FROM softguard._list(list) l
     WHERE l.classid = 'pg_class'::regclass AND l.objsubid = 0
       AND NOT coalesce(softguard._is_quarantine_schema(l.home), false);

    -- 2. Classify: what moves, what is a link to record and drop, what cannot be kept.
    FOR r IN SELECT * FROM softguard._list(list) l ORDER BY l.ord LOOP
        CONTINUE WHEN coalesce(softguard._is_quarantine_schema(r.home), false);  -- held already
        CONTINUE WHEN r.object_type = 'schema';
        CONTINUE WHEN r.home = ANY (dropped_schemas);          -- stays in its renamed schema
        IF r.object_type = 'table column' THEN
            CONTINUE WHEN r.owned;
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('softguard cannot yet keep columns dropped by CASCADE (column %s)',
                                 r.object_identity),
                HINT = 'Drop the column with ALTER TABLE first, or run the statement without softguard.';
        END IF;
        IF r.classid = 'pg_class'::regclass THEN
            SELECT c.relkind INTO x FROM pg_class c WHERE c.oid = r.objid;
            IF x.relkind IN ('r', 'p', 'f', 'v', 'm') THEN
                moves := moves || jsonb_build_array(to_jsonb(r));  -- partitions move one by one
                CONTINUE;
            END IF;
        END IF;
        CONTINUE WHEN r.owned;                                   -- goes with its owner
        CASE
            WHEN r.object_type IN ('sequence', 'function', 'procedure', 'aggregate', 'type',
                                   'domain') THEN
                moves := moves || jsonb_build_array(to_jsonb(r));
            WHEN r.object_type IN ('index', 'table constraint', 'trigger', 'default value',
                                   'policy', 'rule') THEN
                links := links || jsonb_build_array(to_jsonb(r));
            ELSE
                RAISE EXCEPTION USING ERRCODE = '0A000',
                    MESSAGE = format('softguard cannot keep %s %s (dropped by this statement)',
                                     r.object_type, r.object_identity),
                    HINT = 'Run the statement without softguard if losing it is intended.';
        END CASE;
    END LOOP;

    -- 3. Links from live objects to dropped ones, as a real DROP removes them. Constraints
    --    first (a foreign key may need a listed unique index), indexes last.
    FOR r IN SELECT e.* FROM jsonb_to_recordset(links) AS e(classid oid, objid oid,
                  object_type text, object_identity text, original boolean, ord integer)
             ORDER BY CASE e.object_type WHEN 'table constraint' THEN 0 WHEN 'index' THEN 2
                      ELSE 1 END, e.ord LOOP
        steps := steps || softguard._drop_link(r.classid, r.objid, r.object_identity, r.original);
    END LOOP;

    -- 4. Links from leaving relations to live ones: partition bound, inheritance, FKs.
    FOR x IN SELECT c.oid AS child, i.inhparent AS parent, c.relispartition,
                    pg_get_expr(c.relpartbound, c.oid) AS bound
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhrelid = ANY (going) AND NOT (i.inhparent = ANY (going))
                AND c.relkind IN ('r', 'p', 'f')
              ORDER BY i.inhrelid, i.inhseqno LOOP
        IF x.relispartition THEN
            steps := steps || jsonb_build_array(jsonb_build_object(
                'step', 'detach_partition', 'parent', x.parent,
                'parent_name', x.parent::regclass::text, 'child', x.child,
                'child_name', x.child::regclass::text, 'bound', x.bound));
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', x.parent::regclass,
                           x.child::regclass);
        ELSE
            -- NO INHERIT turns inherited columns and constraints into local ones: record
            -- which were inherited only, to put that back.
            steps := steps || jsonb_build_array(jsonb_build_object(
                'step', 'no_inherit', 'parent', x.parent,
                'parent_name', x.parent::regclass::text, 'child', x.child,
                'child_name', x.child::regclass::text,
                'inherited_columns', (SELECT coalesce(jsonb_agg(a.attname), '[]')
                    FROM pg_attribute a WHERE a.attrelid = x.child AND a.attnum > 0
                     AND NOT a.attisdropped AND NOT a.attislocal AND a.attinhcount = 1),
                'inherited_constraints', (SELECT coalesce(jsonb_agg(c.conname), '[]')
                    FROM pg_constraint c WHERE c.conrelid = x.child AND NOT c.conislocal
                     AND c.coninhcount = 1)));
            EXECUTE format('ALTER TABLE %s NO INHERIT %s', x.child::regclass, x.parent::regclass);
        END IF;
    END LOOP;
    FOR x IN SELECT c.oid FROM pg_constraint c
              WHERE c.contype = 'f' AND c.conrelid = ANY (going)
                AND NOT (c.confrelid = ANY (going)) AND c.conparentid = 0
              ORDER BY c.conrelid, c.conname LOOP
        steps := steps || softguard._drop_link('pg_constraint'::regclass, x.oid,
            (pg_identify_object('pg_constraint'::regclass, x.oid, 0)).identity);
    END LOOP;

    -- 5. Dropped schemas: rename, lock out everybody but the owner (privileges recorded).
    FOR r IN SELECT * FROM softguard._list(list) l WHERE l.object_type = 'schema' ORDER BY l.ord LOOP
        n := n + 1;
        qn := softguard._qname(format('softguard_q%s_', op_id), r.object_name);
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
                   'privilege', a.privilege_type, 'grantable', a.is_grantable) ORDER BY a.o), '[]')
          INTO acl
          FROM pg_namespace s, LATERAL aclexplode(s.nspacl) WITH ORDINALITY AS a(grantor, grantee,
               privilege_type, is_grantable, o)
         WHERE s.oid = r.objid AND a.grantee <> s.nspowner;
        steps := steps || jsonb_build_array(jsonb_build_object(
            'step', 'rename_schema', 'oid', r.objid, 'name', r.object_name, 'qname', qn,
            'acl', acl, 'original', r.original));
        EXECUTE format('ALTER SCHEMA %I RENAME TO %I', r.object_name, qn);
        FOR x IN SELECT DISTINCT e->>'grantee' AS grantee FROM jsonb_array_elements(acl) e LOOP
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %s CASCADE', qn,
                           CASE WHEN x.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(x.grantee) END);
        END LOOP;
    END LOOP;

    -- 6. Move into softguard_quarantine under op<id>_<n>_<name>.
    FOR r IN SELECT e.* FROM jsonb_to_recordset(moves) AS e(classid oid, objid oid,
                  object_type text, object_identity text, original boolean, ord integer)
             ORDER BY e.ord LOOP
        IF r.classid = 'pg_class'::regclass THEN
            SELECT c.relkind, c.relname, c.relnamespace INTO x FROM pg_class c WHERE c.oid = r.objid;
            kw := CASE x.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                      WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END;
            IF x.relkind = 'S' THEN
                -- a sequence owned by a live table's column (DROP SEQUENCE ... CASCADE)
                FOR own IN SELECT d.refobjid FROM pg_depend d
                            WHERE d.classid = 'pg_class'::regclass AND d.objid = r.objid
                              AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a' LOOP
                    steps := steps || jsonb_build_array(jsonb_build_object(
                        'step', 'seq_owned_by', 'seq', r.objid, 'table', own,
                        'column', (SELECT a.attname FROM pg_depend d JOIN pg_attribute a
                                     ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                                    WHERE d.classid = 'pg_class'::regclass AND d.objid = r.objid
                                      AND d.refobjid = own AND d.deptype = 'a')));
                    EXECUTE format('ALTER SEQUENCE %s OWNED BY NONE', r.objid::regclass);
                END LOOP;
            END IF;
            -- Indexes, owned sequences, statistics go along; rename them so that the names
            -- are free in the live schema and unique in quarantine.
            FOR own, qn IN
                SELECT i.indexrelid, ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 WHERE i.indrelid = r.objid
                UNION ALL
                SELECT d.objid, sc.relname FROM pg_depend d JOIN pg_class sc ON sc.oid = d.objid
                 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND d.refobjid = r.objid AND d.deptype IN ('a', 'i') AND sc.relkind = 'S'
                ORDER BY 1 LOOP
                n := n + 1;
                steps := steps || jsonb_build_array(jsonb_build_object(
                    'step', 'rename', 'class', 'relation', 'oid', own, 'name', qn,
                    'qname', softguard._qname(format('op%s_%s_', op_id, n), qn), 'parent', r.objid));
                EXECUTE format('ALTER INDEX %s RENAME TO %I', own::regclass,
                               softguard._qname(format('op%s_%s_', op_id, n), qn));
            END LOOP;
            FOR own, qn IN SELECT s.oid, s.stxname FROM pg_statistic_ext s
                            WHERE s.stxrelid = r.objid ORDER BY 1 LOOP
                n := n + 1;
                steps := steps || softguard._move(op_id, n, 'pg_statistic_ext'::regclass, own, false);
            END LOOP;
        END IF;
        IF r.classid = 'pg_type'::regclass THEN
            -- What PostgreSQL made with a range type does not follow it to another schema
            -- or name: its multirange and the constructor functions of both. Move them
            -- too, or re-creating the range in the live schema fails (42710, 42723).
            FOR x IN SELECT 'pg_type'::regclass::oid AS cls, rg.rngmultitypid AS obj
                       FROM pg_range rg WHERE rg.rngtypid = r.objid AND rg.rngmultitypid <> 0
                     UNION ALL
                     SELECT 'pg_proc'::regclass::oid, d.objid FROM pg_depend d
                      WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'i'
                        AND d.refclassid = 'pg_type'::regclass
                        AND d.refobjid IN (SELECT r.objid UNION ALL
                                           SELECT rg.rngmultitypid FROM pg_range rg
                                            WHERE rg.rngtypid = r.objid)
                     ORDER BY 1 DESC, 2 LOOP
                n := n + 1;
                steps := steps || softguard._move(op_id, n, x.cls, x.obj, false);
            END LOOP;
        END IF;
        n := n + 1;
        steps := steps || softguard._move(op_id, n, r.classid, r.objid, r.original);
    END LOOP;

    -- 7. The operation: objects (with where each went), estimates, the plan.
    -- in the statement's order (PostgreSQL lists them in its deletion order)
    SELECT string_agg(l.object_identity, ', '
                      ORDER BY nullif(strpos(lower(stmt), lower(l.object_name)), 0) NULLS LAST,
                               l.ord) INTO targets
      FROM softguard._list(list) l WHERE l.original;
    UPDATE softguard.operations o SET
        restore = steps,
        objects = (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'type', l.object_type, 'identity', l.object_identity,
                       'schema', l.schema_name, 'name', l.object_name,
                       'original', l.original, 'normal', l.normal,
                       'classid', l.classid, 'objid', l.objid, 'objsubid', l.objsubid,
                       'quarantined_as', CASE WHEN h.held_by IS NULL THEN
                           (pg_identify_object(l.classid, l.objid, l.objsubid)).identity END,
                       'held_by', h.held_by) ORDER BY l.ord), '[]')
              FROM softguard._list(list) l,
                   LATERAL (SELECT (held->>format('%s/%s/%s', l.classid, l.objid, l.objsubid))::bigint
                                   AS held_by) h),
        row_counts = jsonb_build_object('estimate', true, 'tables', (
            SELECT coalesce(jsonb_object_agg(l.object_identity,
                       CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END), '{}')
              FROM softguard._list(list) l JOIN pg_class c ON c.oid = l.objid
             WHERE l.classid = 'pg_class'::regclass AND l.objsubid = 0
               AND c.relkind IN ('r', 'm')
               AND NOT held ? format('%s/%s/%s', l.classid, l.objid, l.objsubid)))
     WHERE o.id = op_id;

    RETURN softguard._op_notice(coalesce(ctx->>'action', 'DROP'), targets, op_id, expires);
END $$;
REVOKE ALL ON FUNCTION softguard._quarantine(jsonb, text, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._quarantine(jsonb, text, jsonb, text) TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard._drop_shell(p_oid oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ident text;
BEGIN
    SELECT format('%I.%I', n.nspname, t.typname) INTO ident
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.oid = p_oid AND t.typtype = 'p' AND NOT t.typisdefined;
    IF ident IS NOT NULL THEN
        EXECUTE format('DROP TYPE %s', ident);
    END IF;
END $$;
GRANT EXECUTE ON FUNCTION softguard._drop_shell(oid) TO PUBLIC;

CREATE OR REPLACE PROCEDURE softguard.drop_op(stmt text, stmt_cascade text, ctx jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    saved text := pg_catalog.current_setting('client_min_messages');
    list jsonb;
    clist jsonb;
    msg text;
    n_all integer;
    n_temp integer;
    n_shell integer;
    relist jsonb;
    used text;
BEGIN
    PERFORM pg_catalog.set_config('client_min_messages', 'notice', true);
    RAISE NOTICE USING ERRCODE = 'SGBEG', MESSAGE = coalesce(ctx->>'offset', '0');
    PERFORM pg_catalog.set_config('client_min_messages', saved, true);

    BEGIN
        list := softguard._probe(stmt);
    EXCEPTION WHEN dependent_objects_still_exist THEN
        -- Refused only because of objects in quarantine? Then a real DROP would succeed.
        IF stmt_cascade IS NULL THEN
            RAISE;
        END IF;
        IF saved NOT IN ('error', 'fatal', 'panic') THEN
            PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
        END IF;
        BEGIN
            clist := softguard._probe(stmt_cascade);
        EXCEPTION WHEN OTHERS THEN
            clist := NULL;
        END;
        PERFORM pg_catalog.set_config('client_min_messages', saved, true);
        IF clist IS NULL OR NOT softguard._only_quarantine_blocks(clist) THEN
            RAISE;
        END IF;
        list := clist;
        used := stmt_cascade;
    END;

    -- The probe's locks went with its subtransaction: a concurrent DROP of the same
    -- objects may have probed them too. Lock what was found, then probe again (quietly)
    -- under those locks, as PostgreSQL re-resolves names after waiting for a lock.
    FOR attempt IN 1..5 LOOP
        EXIT WHEN pg_catalog.jsonb_array_length(list) = 0;
        PERFORM softguard._lock_listed(list);
        IF saved NOT IN ('error', 'fatal', 'panic') THEN
            PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
        END IF;
        BEGIN
            relist := softguard._probe(coalesce(used, stmt));
        EXCEPTION WHEN OTHERS THEN
            PERFORM pg_catalog.set_config('client_min_messages', saved, true);
            RAISE;
        END;
        PERFORM pg_catalog.set_config('client_min_messages', saved, true);
        EXIT WHEN softguard._same_objects(list, relist);
        list := relist;
    END LOOP;

    n_all := pg_catalog.jsonb_array_length(list);
    SELECT pg_catalog.count(*) FILTER (WHERE (e->>'is_temporary')::boolean) INTO n_temp
      FROM pg_catalog.jsonb_array_elements(list) e;
    SELECT pg_catalog.count(*) INTO n_shell
      FROM pg_catalog.jsonb_array_elements(list) e
      JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) (e->>'objid')::oid
     WHERE (e->>'classid')::oid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass
       AND NOT t.typisdefined;
    IF n_all > 0 AND n_shell = n_all THEN
        PERFORM softguard._drop_shell((e->>'objid')::oid)
           FROM pg_catalog.jsonb_array_elements(list) e;
    ELSIF n_all > 0 AND n_temp = n_all THEN
        -- Temporary objects cannot be moved and vanish with the session anyway: drop them
        -- for real, unrecorded (notices were already sent by the probe).
        IF saved NOT IN ('error', 'fatal', 'panic') THEN
            PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
        END IF;
        EXECUTE stmt;
        PERFORM pg_catalog.set_config('client_min_messages', saved, true);
    ELSIF n_temp > 0 THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = 'softguard cannot drop temporary and permanent objects in one statement',
            HINT = 'Drop the temporary objects in a separate statement.';
    ELSIF n_all > 0 THEN
        msg := softguard._quarantine(list, stmt, ctx, current_user::text);
        PERFORM pg_catalog.set_config('client_min_messages', 'notice', true);
        RAISE NOTICE '%', msg;
        PERFORM pg_catalog.set_config('client_min_messages', saved, true);
    END IF;

    PERFORM pg_catalog.set_config('client_min_messages', 'notice', true);
    RAISE NOTICE USING ERRCODE = 'SGEND', MESSAGE = coalesce(ctx->>'action', 'DROP');
    PERFORM pg_catalog.set_config('client_min_messages', saved, true);
END $$;
GRANT EXECUTE ON PROCEDURE softguard.drop_op(text, text, jsonb) TO PUBLIC;

CREATE OR REPLACE PROCEDURE softguard.alter_op(stmt text, ctx jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    list jsonb := '[]';
    probed boolean := coalesce(ctx->>'drop_column', 'true') <> 'false';
    op bigint;
    r record;
    cid bigint;
    cids bigint[] := '{}';
    dropped text[] := '{}';
    retyped text[] := '{}';
    action text := coalesce(ctx->>'action', 'ALTER TABLE');
    msg text;
    saved text := pg_catalog.current_setting('client_min_messages');
BEGIN
    PERFORM softguard._notice(coalesce(ctx->>'offset', '0'), 'SGBEG');
    PERFORM softguard._machinery_check();
    IF probed THEN
        list := softguard._probe(stmt);
    END IF;
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
            op := softguard._op_begin(stmt, ctx, 'ALTER TABLE');
        END IF;
        dropped := dropped || softguard._capture_column(op, r.rel, r.attnum);
    END LOOP;

    -- ALTER COLUMN ... TYPE: the columns the proxy names, as the caller's search_path
    -- resolves them; tables the caller does not own are left to the statement's own error.
    FOR r IN SELECT s.rel, pg_catalog.array_agg(s.attnum ORDER BY s.ord) AS attnums,
                    pg_catalog.array_agg(s.attname ORDER BY s.ord) AS names
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
              GROUP BY s.rel ORDER BY pg_catalog.min(s.ord) LOOP
        -- rows written between the copy and the ALTER would be lost: lock as the ALTER does
        EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', r.rel::regclass);
        FOR i IN 1 .. pg_catalog.cardinality(r.attnums) LOOP
            IF op IS NULL THEN
                op := softguard._op_begin(stmt, ctx, 'ALTER TABLE');
            END IF;
            cid := softguard._capture_type(op, r.rel, r.attnums[i], r.names);
            IF cid IS NOT NULL THEN
                cids := cids || cid;
            END IF;
        END LOOP;
    END LOOP;

    -- The probe already sent PostgreSQL's notices (IF EXISTS ... skipping): not twice.
    IF probed AND saved NOT IN ('error', 'fatal', 'panic') THEN
        PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
    END IF;
    EXECUTE stmt;
    PERFORM pg_catalog.set_config('client_min_messages', saved, true);
    FOREACH cid IN ARRAY cids LOOP
        retyped := retyped || softguard._capture_type_after(op, cid);
    END LOOP;
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
GRANT EXECUTE ON PROCEDURE softguard.alter_op(text, jsonb) TO PUBLIC;

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
BEGIN
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
            -- drop_op removes shell types (nothing to keep) for real, through _drop_shell
            GET DIAGNOSTICS stack = PG_CONTEXT;
            CONTINUE WHEN stack ~ '(^|\n)PL/pgSQL function softguard\._drop_shell\(oid\) line [0-9]+ at EXECUTE';
        ELSIF d.object_type = 'table column' AND by_alter THEN
            -- alter_op captured every column its statement drops before running it (it
            -- probes that very statement); a column dropped anywhere else is lost.
            GET DIAGNOSTICS stack = PG_CONTEXT;
            CONTINUE WHEN stack ~ '(^|\n)PL/pgSQL function softguard\.alter_op\(text,jsonb\) line [0-9]+ at EXECUTE';
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
-- end section: kinds --------------------------------------------

-- section: defs ------------------------------------------------
-- Definitions and sequence state are operations too (issue 11 item 6; threat model G11;
-- docs/decisions/0015-definitions-and-sequences.md).
--
-- CREATE OR REPLACE FUNCTION / PROCEDURE / VIEW / RULE / TRIGGER and ALTER SEQUENCE are
-- decided here, in the database, whatever text carried them (a DO block, a function,
-- EXECUTE, a prepared statement): the proxy does not read them.
-- * Definitions. PostgreSQL has no "before" hook that names the object of a CREATE OR
--   REPLACE, so softguard.definitions keeps the current definition of every user function,
--   procedure, view, rule and trigger (one row per live object: the install snapshots them,
--   ddl_command_end refreshes what each CREATE or ALTER touched, sql_drop removes what it
--   dropped). When a CREATE replaces an object the table already holds with a different
--   definition, in a session registered with 'alter' (05_sessions.sql), it records an
--   operation 'CREATE OR REPLACE <TYPE>' whose restore plan holds the previous definition.
-- * Sequences. ddl_command_start of ALTER SEQUENCE (and of ALTER TABLE, for identity
--   columns' sequences: ALTER COLUMN ... RESTART) in such a session keeps the sequences'
--   state (value and parameters) for the command (a transaction-local setting: nothing
--   runs between the two events but the command); ddl_command_end records an operation
--   'ALTER SEQUENCE' for each sequence of the command whose value or parameters changed.
--   setval() is a function call, not DDL: no trigger sees it (README limits, G11).
-- * Undo (72_undo_definitions.sql, called from softguard._undo) puts the old definition or
--   state back; it refuses when a later active operation changed the same object (55006,
--   blocked_by: undo the later first, or --cascade) or when the object changed since
--   outside softguard's operations (the later write is kept, never overwritten).
-- Statements that create or alter nothing of these kinds pay nothing (the event triggers
-- are limited by tag).

CREATE TABLE softguard.definitions (
    classid      oid NOT NULL,
    objid        oid NOT NULL,
    identity     text NOT NULL,            -- 'function public.f(integer)' when recorded
    definition   text NOT NULL,            -- the statement that re-creates it as it was
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (classid, objid)
);
REVOKE ALL ON softguard.definitions FROM PUBLIC;
COMMENT ON TABLE softguard.definitions IS
    'current definition of each user function, procedure, view, rule and trigger: what a '
    'CREATE OR REPLACE keeps as the old one';

-- The definition softguard keeps of an object, or no row when it keeps none: only user
-- objects (not softguard's, not an extension's, not temporary, not in quarantine).
-- Read with search_path = pg_catalog, pg_temp (its callers' SET): every name the
-- definition uses comes out schema-qualified, so it re-creates the same object wherever
-- it is run.
CREATE OR REPLACE FUNCTION softguard._definition_of(p_classid oid, p_objid oid)
RETURNS TABLE (kind text, identity text, target text, definition text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    nsp oid;
    v_kind text;
    v_def text;
BEGIN
    IF p_classid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN
        SELECT p.pronamespace,
               CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END
          INTO nsp, v_kind
          FROM pg_catalog.pg_proc p WHERE p.oid = p_objid AND p.prokind IN ('f', 'p', 'w');
        IF FOUND THEN
            v_def := pg_catalog.pg_get_functiondef(p_objid);
        END IF;
    ELSIF p_classid = 'pg_catalog.pg_class'::pg_catalog.regclass THEN
        SELECT c.relnamespace, 'VIEW',
               pg_catalog.format('CREATE OR REPLACE VIEW %s%s AS%s', c.oid::pg_catalog.regclass,
                   CASE WHEN c.reloptions IS NULL THEN ''
                        ELSE ' WITH (' || pg_catalog.array_to_string(c.reloptions, ', ') || ')' END,
                   CASE WHEN pg_catalog.left(v, 1) IN (' ', E'\n') THEN v ELSE ' ' || v END)
          INTO nsp, v_kind, v_def
          FROM pg_catalog.pg_class c,
               LATERAL pg_catalog.pg_get_viewdef(c.oid) v
         WHERE c.oid = p_objid AND c.relkind = 'v';
    ELSIF p_classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass THEN
        SELECT c.relnamespace, 'RULE',
               pg_catalog.regexp_replace(pg_catalog.pg_get_ruledef(r.oid), '^CREATE RULE',
                                         'CREATE OR REPLACE RULE')
          INTO nsp, v_kind, v_def
          FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
         WHERE r.oid = p_objid AND r.rulename <> '_RETURN';
    ELSIF p_classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass THEN
        -- constraint triggers cannot be replaced; softguard's own are guarded elsewhere
        SELECT c.relnamespace, 'TRIGGER',
               pg_catalog.regexp_replace(pg_catalog.pg_get_triggerdef(t.oid), '^CREATE TRIGGER',
                                         'CREATE OR REPLACE TRIGGER')
          INTO nsp, v_kind, v_def
          FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
         WHERE t.oid = p_objid AND NOT t.tgisinternal AND t.tgconstraint = 0
           AND t.tgname NOT LIKE 'zz\_softguard\_%';
    END IF;
    IF v_def IS NULL
       OR EXISTS (SELECT FROM pg_catalog.pg_namespace n
                   WHERE n.oid = nsp
                     AND (n.nspname IN ('pg_catalog', 'information_schema')
                          OR n.nspname LIKE 'pg\_temp\_%' OR n.nspname LIKE 'pg\_toast%'
                          OR n.nspname LIKE 'softguard%'))
       OR EXISTS (SELECT FROM pg_catalog.pg_depend d
                   WHERE d.classid = p_classid AND d.objid = p_objid AND d.deptype = 'e') THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT v_kind, i.type || ' ' || i.identity, i.identity, v_def
                   FROM pg_catalog.pg_identify_object(p_classid, p_objid, 0) i;
END $$;
REVOKE ALL ON FUNCTION softguard._definition_of(oid, oid) FROM PUBLIC;

-- Keep (or forget) the current definition of one object; returns the one kept before
-- (NULL when none).
CREATE OR REPLACE FUNCTION softguard._definition_keep(p_classid oid, p_objid oid)
RETURNS softguard.definitions
LANGUAGE plpgsql AS $$
DECLARE
    old softguard.definitions;
    cur record;
BEGIN
    SELECT * INTO old FROM softguard.definitions d
     WHERE d.classid = p_classid AND d.objid = p_objid;
    SELECT * INTO cur FROM softguard._definition_of(p_classid, p_objid);
    IF cur.definition IS NULL THEN
        DELETE FROM softguard.definitions d WHERE d.classid = p_classid AND d.objid = p_objid;
    ELSIF old.definition IS DISTINCT FROM cur.definition
          OR old.identity IS DISTINCT FROM cur.identity THEN
        INSERT INTO softguard.definitions AS d (classid, objid, identity, definition)
        VALUES (p_classid, p_objid, cur.identity, cur.definition)
        ON CONFLICT (classid, objid) DO UPDATE
            SET identity = excluded.identity, definition = excluded.definition,
                recorded_at = now();
    END IF;
    RETURN old;
END $$;
REVOKE ALL ON FUNCTION softguard._definition_keep(oid, oid) FROM PUBLIC;

-- An operation of this (registered) session changing definitions or sequence state:
-- `steps` is its restore plan, one step per object; returns its id after raising the
-- operation NOTICE.
CREATE OR REPLACE FUNCTION softguard._definition_op(kind text, target text, objects jsonb, steps jsonb,
                                         reg softguard.sessions)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    op bigint;
    expires timestamptz := now() + softguard._retention(reg, NULL);
BEGIN
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, row_counts, restore)
    VALUES (expires, session_user, softguard._client_role(),
            current_setting('application_name', true), softguard._client_addr(reg),
            coalesce(current_query(), ''), kind, objects, NULL, steps)
    RETURNING id INTO op;
    PERFORM softguard._notice(softguard._op_notice(kind, target, op, expires));
    RETURN op;
END $$;
REVOKE ALL ON FUNCTION softguard._definition_op(text, text, jsonb, jsonb, softguard.sessions)
    FROM PUBLIC;

-- ddl_command_end of CREATE / ALTER of functions, procedures, views, rules, triggers and
-- of what their definitions name (tables, schemas, types): keep the new definitions, and
-- record the replaced ones of a protected session. Dependents are refreshed too: a rename
-- of a table changes the text of its triggers, rules and views.
CREATE OR REPLACE FUNCTION softguard._definitions_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    dep record;
    old softguard.definitions;
    cur record;
    reg softguard.sessions;
    protect boolean;
BEGIN
    IF current_setting('softguard.probe', true) = 'on' THEN
        RETURN;
    END IF;
    reg := softguard._session(false);
    protect := 'alter' = ANY (reg.capture) AND NOT softguard._in_maintenance();
    FOR r IN SELECT DISTINCT c.classid, c.objid, c.command_tag
               FROM pg_event_trigger_ddl_commands() c
              WHERE c.objsubid = 0 ORDER BY c.classid, c.objid LOOP
        IF r.classid IN ('pg_proc'::regclass, 'pg_class'::regclass, 'pg_rewrite'::regclass,
                         'pg_trigger'::regclass) THEN
            old := softguard._definition_keep(r.classid, r.objid);
            IF protect AND r.command_tag LIKE 'CREATE %' AND old.definition IS NOT NULL THEN
                SELECT * INTO cur FROM softguard._definition_of(r.classid, r.objid);
                IF cur.definition IS DISTINCT FROM old.definition THEN
                    PERFORM softguard._definition_op(
                        'CREATE OR REPLACE ' || cur.kind, cur.target,
                        jsonb_build_array(jsonb_build_object(
                            'classid', r.classid, 'objid', r.objid, 'objsubid', 0,
                            'type', lower(cur.kind),
                            'identity', cur.target,
                            'original', true, 'event', 'definition')),
                        jsonb_build_array(jsonb_build_object(
                            'step', 'definition', 'classid', r.classid, 'objid', r.objid,
                            'identity', cur.identity, 'old_identity', old.identity,
                            'old', old.definition, 'new', cur.definition)),
                        reg);
                END IF;
            END IF;
        END IF;
        CONTINUE WHEN r.command_tag LIKE 'CREATE %';
        FOR dep IN SELECT 'pg_trigger'::regclass::oid AS classid, t.oid AS objid
                     FROM pg_trigger t
                    WHERE r.classid = 'pg_class'::regclass AND t.tgrelid = r.objid
                      AND NOT t.tgisinternal
                   UNION ALL
                   SELECT 'pg_rewrite'::regclass, w.oid FROM pg_rewrite w
                    WHERE r.classid = 'pg_class'::regclass AND w.ev_class = r.objid
                   UNION ALL
                   SELECT CASE d.classid WHEN 'pg_rewrite'::regclass THEN 'pg_class'::regclass
                                         ELSE d.classid END,
                          CASE d.classid WHEN 'pg_rewrite'::regclass
                               THEN (SELECT w.ev_class FROM pg_rewrite w WHERE w.oid = d.objid)
                               ELSE d.objid END
                     FROM pg_depend d
                    WHERE d.refclassid = r.classid AND d.refobjid = r.objid
                      AND d.classid IN ('pg_proc'::regclass, 'pg_class'::regclass,
                                        'pg_rewrite'::regclass, 'pg_trigger'::regclass)
                      AND d.deptype = 'n' LOOP
            PERFORM softguard._definition_keep(dep.classid, dep.objid);
        END LOOP;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._definitions_ddl() FROM PUBLIC;

-- sql_drop: forget what was dropped (the table stays one row per live object).
CREATE OR REPLACE FUNCTION softguard._definitions_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('softguard.probe', true) = 'on' THEN
        RETURN;
    END IF;
    DELETE FROM softguard.definitions d
     USING pg_event_trigger_dropped_objects() o
     WHERE d.classid = o.classid AND d.objid = o.objid AND o.objsubid = 0;
END $$;
REVOKE ALL ON FUNCTION softguard._definitions_drop() FROM PUBLIC;

-- The state of every user sequence (identity_only: of those behind identity columns):
-- value and parameters, keyed by oid.
CREATE OR REPLACE FUNCTION softguard._sequence_states(identity_only boolean) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    s record;
    st record;
    out jsonb := '{}';
BEGIN
    FOR s IN SELECT q.seqrelid, q.seqtypid, q.seqstart, q.seqincrement, q.seqmax, q.seqmin,
                    q.seqcache, q.seqcycle
               FROM pg_catalog.pg_sequence q
               JOIN pg_catalog.pg_class c ON c.oid = q.seqrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relpersistence <> 't' AND n.nspname NOT LIKE 'softguard%'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND (NOT identity_only
                     OR EXISTS (SELECT FROM pg_catalog.pg_depend d
                                 WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                   AND d.objid = q.seqrelid AND d.deptype = 'i'))
              ORDER BY q.seqrelid LOOP
        EXECUTE pg_catalog.format('SELECT last_value, is_called FROM %s',
                                  s.seqrelid::pg_catalog.regclass) INTO st;
        out := out || pg_catalog.jsonb_build_object(s.seqrelid::text, pg_catalog.jsonb_build_object(
            'last_value', st.last_value, 'is_called', st.is_called,
            'type', pg_catalog.format_type(s.seqtypid, NULL), 'start', s.seqstart,
            'increment', s.seqincrement, 'max', s.seqmax, 'min', s.seqmin, 'cache', s.seqcache,
            'cycle', s.seqcycle));
    END LOOP;
    RETURN out;
END $$;
REVOKE ALL ON FUNCTION softguard._sequence_states(boolean) FROM PUBLIC;

-- ddl_command_start of ALTER SEQUENCE (every sequence) and ALTER TABLE (identity columns'
-- sequences: ALTER COLUMN ... RESTART) in a protected session: keep the states for the end.
CREATE OR REPLACE FUNCTION softguard._sequences_before() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('softguard.probe', true) = 'on'
       OR NOT coalesce('alter' = ANY ((softguard._session(false)).capture), false)
       OR softguard._in_maintenance() THEN
        PERFORM set_config('softguard.seq_before', '', true);
        RETURN;
    END IF;
    PERFORM set_config('softguard.seq_before',
                       softguard._sequence_states(TG_TAG = 'ALTER TABLE')::text, true);
END $$;
REVOKE ALL ON FUNCTION softguard._sequences_before() FROM PUBLIC;

-- ddl_command_end: an operation for each sequence the command changed - the sequence an
-- ALTER SEQUENCE names, the identity sequences of the tables an ALTER TABLE names (other
-- sequences may move meanwhile: other sessions' nextval).
CREATE OR REPLACE FUNCTION softguard._sequences_after() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    before jsonb := nullif(current_setting('softguard.seq_before', true), '')::jsonb;
    now_ jsonb;
    r record;
    ident text;
    reg softguard.sessions;
BEGIN
    PERFORM set_config('softguard.seq_before', '', true);
    IF before IS NULL OR before = '{}' THEN
        RETURN;
    END IF;
    now_ := softguard._sequence_states(TG_TAG = 'ALTER TABLE');
    reg := softguard._session(false);
    FOR r IN SELECT DISTINCT s.seq
               FROM pg_event_trigger_ddl_commands() c
              CROSS JOIN LATERAL (
                    SELECT c.objid WHERE TG_TAG = 'ALTER SEQUENCE'
                    UNION ALL
                    SELECT d.objid FROM pg_depend d
                     WHERE TG_TAG = 'ALTER TABLE' AND d.classid = 'pg_class'::regclass
                       AND d.refclassid = 'pg_class'::regclass AND d.refobjid = c.objid
                       AND d.deptype = 'i') s(seq)
              WHERE c.classid = 'pg_class'::regclass
              ORDER BY s.seq LOOP
        CONTINUE WHEN NOT before ? r.seq::text OR NOT now_ ? r.seq::text
                      OR before->(r.seq::text) = now_->(r.seq::text);
        ident := r.seq::regclass::text;
        PERFORM softguard._definition_op(
            'ALTER SEQUENCE', ident,
            jsonb_build_array(jsonb_build_object(
                'classid', 'pg_class'::regclass::oid, 'objid', r.seq, 'objsubid', 0,
                'type', 'sequence', 'identity', ident, 'original', true, 'event', 'sequence')),
            jsonb_build_array(jsonb_build_object(
                'step', 'sequence', 'classid', 'pg_class'::regclass::oid, 'objid', r.seq,
                'identity', 'sequence ' || ident,
                'old', before->(r.seq::text), 'new', now_->(r.seq::text))),
            reg);
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._sequences_after() FROM PUBLIC;

-- Every user definition as it stands: the install's (and the upgrade's) snapshot.
CREATE OR REPLACE FUNCTION softguard._definitions_snapshot() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO softguard.definitions (classid, objid, identity, definition)
    SELECT o.classid, o.objid, d.identity, d.definition
      FROM (SELECT 'pg_proc'::regclass::oid, p.oid, p.pronamespace FROM pg_proc p
             WHERE p.prokind IN ('f', 'p', 'w')
            UNION ALL
            SELECT 'pg_class'::regclass::oid, c.oid, c.relnamespace FROM pg_class c
             WHERE c.relkind = 'v'
            UNION ALL
            SELECT 'pg_rewrite'::regclass::oid, r.oid, c.relnamespace
              FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
             WHERE r.rulename <> '_RETURN'
            UNION ALL
            SELECT 'pg_trigger'::regclass::oid, t.oid, c.relnamespace
              FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
             WHERE NOT t.tgisinternal) o(classid, objid, nsp)
      JOIN pg_namespace n ON n.oid = o.nsp
     CROSS JOIN LATERAL softguard._definition_of(o.classid, o.objid) d
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    ON CONFLICT (classid, objid) DO UPDATE
        SET identity = excluded.identity, definition = excluded.definition, recorded_at = now();
END $$;
REVOKE ALL ON FUNCTION softguard._definitions_snapshot() FROM PUBLIC;

SELECT softguard._definitions_snapshot();

-- Undo of definitions and sequence state (65_definitions.sql records them): a separate
-- file after 70_undo.sql, whose dispatch (softguard._undo) calls it and whose helpers and
-- result type (softguard.undo_step) it uses.
--
-- Decided (docs/decisions/0015-definitions-and-sequences.md): undo puts back exactly the
-- recorded old definition or sequence state, or refuses and changes nothing:
-- * a later active operation changed the same object: 55006 blocked_by (undo the later
--   one first; --cascade does both, newest first, back to the first definition);
-- * the object changed since outside softguard's operations (a direct session, ALTER),
--   was renamed, moved or dropped: 55000, the later state is kept;
-- * a view whose old definition cannot replace the current one in place (CREATE OR
--   REPLACE VIEW cannot drop or retype columns): 0A000, drop and re-create by hand;
-- * a sequence that has handed out, since, values beyond the old one in its direction:
--   55000 (they would be handed out again).

-- Undo of a 'CREATE OR REPLACE ...' or 'ALTER SEQUENCE' operation (called by
-- softguard._undo, 70_undo.sql): every step's object back as it was before, or nothing.
CREATE OR REPLACE FUNCTION softguard._undo_definitions(op bigint, rename_to text)
RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    s jsonb;
    later bigint;
    cur record;
    st record;
    lines softguard.undo_step[] := '{}';
    what text;
    err text;
    saved_check text := current_setting('check_function_bodies');
BEGIN
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF o.state = 'undone' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s is already undone (at %s by %s)', op,
                             to_char(o.undone_at, 'YYYY-MM-DD HH24:MI:SS'), o.undone_by);
    END IF;
    IF rename_to IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('--rename-to applies to DROP operations; operation %s is a %s',
                             op, o.kind);
    END IF;
    FOR s IN SELECT x FROM jsonb_array_elements(o.restore) x LOOP
        what := s->>'identity';
        -- A later active operation changed it again: undo that one first (or --cascade).
        SELECT l.id INTO later FROM softguard.operations l, jsonb_array_elements(l.restore) x
         WHERE l.id > op AND l.state = 'active' AND x->>'step' = s->>'step'
           AND (x->>'classid')::oid = (s->>'classid')::oid
           AND (x->>'objid')::oid = (s->>'objid')::oid
         ORDER BY l.id DESC LIMIT 1;
        IF later IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '55006',
                MESSAGE = format('cannot undo operation %s: %s was changed again by operation %s',
                                 op, what, later),
                DETAIL = softguard._blocked_detail(later),
                HINT = format('Undo operation %s first, or use --cascade.', later);
        END IF;
        IF s->>'step' = 'definition' THEN
            SELECT * INTO cur FROM softguard._definition_of((s->>'classid')::oid,
                                                            (s->>'objid')::oid);
            IF cur.definition IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s was dropped since', op, what),
                    HINT = format('softguard show %s prints the definition it replaced.', op);
            ELSIF cur.identity IS DISTINCT FROM s->>'identity'
                  OR s->>'old_identity' IS DISTINCT FROM s->>'identity' THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s was renamed or moved '
                                     '(it is now %s)', op, what, cur.identity),
                    HINT = format('softguard show %s prints the definition it replaced.', op);
            ELSIF cur.definition IS DISTINCT FROM s->>'new' THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s was changed since, outside '
                                     'softguard''s operations; undo would overwrite that change',
                                     op, what),
                    HINT = format('softguard show %s prints the definition it replaced.', op);
            END IF;
            -- a SQL function's body is checked against search_path at CREATE: the old
            -- one was accepted once, in the search_path of its day
            PERFORM set_config('check_function_bodies', 'off', true);
            BEGIN
                EXECUTE s->>'old';
            EXCEPTION WHEN invalid_table_definition OR datatype_mismatch
                           OR invalid_function_definition OR feature_not_supported THEN
                GET STACKED DIAGNOSTICS err = MESSAGE_TEXT;
                RAISE EXCEPTION USING ERRCODE = '0A000',
                    MESSAGE = format('cannot undo operation %s: the old definition of %s cannot '
                                     'replace the current one in place (%s)', op, what, err),
                    HINT = format('Drop it and re-create it from softguard show %s.', op);
            END;
            PERFORM set_config('check_function_bodies', saved_check, true);
            lines := lines || softguard._step(op, 'restored', what,
                                              format('restored the previous definition of %s', what));
        ELSE
            IF to_regclass(((s->>'objid')::oid)::regclass::text) IS NULL
               OR 'sequence ' || ((s->>'objid')::oid)::regclass::text <> what THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s was dropped, renamed or moved '
                                     'since', op, what);
            END IF;
            SELECT (x.v->>'last_value')::bigint AS last_value, (x.v->>'is_called')::boolean
                   AS is_called, x.v - 'last_value' - 'is_called' AS params
              INTO st
              FROM (SELECT softguard._sequence_states(false)->(s->>'objid') AS v) x;
            -- values handed out since would be handed out again: refuse, keep them
            IF (st.last_value, st.is_called) IS DISTINCT FROM
                   ((s->'new'->>'last_value')::bigint, (s->'new'->>'is_called')::boolean)
               AND sign((s->'old'->>'increment')::bigint)
                   * (st.last_value - (s->'old'->>'last_value')::bigint) > 0 THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s has handed out values up to %s '
                                     'since; putting it back to %s would hand them out again',
                                     op, what, st.last_value, s->'old'->>'last_value'),
                    HINT = 'Set it by hand (setval) past the values in use.';
            END IF;
            IF st.params IS DISTINCT FROM (s->'old') - 'last_value' - 'is_called' THEN
                -- RESTART: the bounds are checked against the value, put back just after
                EXECUTE format('ALTER SEQUENCE %s AS %s INCREMENT BY %s MINVALUE %s MAXVALUE %s '
                               'START WITH %s RESTART WITH %s CACHE %s %s',
                               (s->>'objid')::oid::regclass,
                               s->'old'->>'type', s->'old'->>'increment', s->'old'->>'min',
                               s->'old'->>'max', s->'old'->>'start', s->'old'->>'last_value',
                               s->'old'->>'cache',
                               CASE WHEN (s->'old'->>'cycle')::boolean THEN 'CYCLE'
                                    ELSE 'NO CYCLE' END);
            END IF;
            PERFORM setval((s->>'objid')::oid::regclass, (s->'old'->>'last_value')::bigint,
                           (s->'old'->>'is_called')::boolean);
            lines := lines || softguard._step(op, 're-set', what,
                format('re-set %s to last_value %s, is_called %s%s', what,
                       s->'old'->>'last_value', s->'old'->>'is_called',
                       CASE WHEN (st.last_value, st.is_called)
                                 IS DISTINCT FROM ((s->'new'->>'last_value')::bigint,
                                                   (s->'new'->>'is_called')::boolean)
                            THEN format(' (it had moved on to %s since the operation)',
                                        st.last_value)
                            ELSE '' END));
        END IF;
    END LOOP;
    UPDATE softguard.operations SET state = 'undone', undone_at = now(), undone_by = session_user
     WHERE id = op;
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, restore, undo_of)
    VALUES (o.expires_at, session_user, current_user, current_setting('application_name', true),
            inet_client_addr()::text, format('softguard undo %s', op), 'UNDO', o.objects, '[]', op);
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_definitions(bigint, text) FROM PUBLIC;

-- The dispatch of undo learns the new kinds (70_undo.sql).
-- Undo `op`: refuse a purged operation, then undo by kind; with cascade, first undo
-- (newest first) the later operations that hold something it needs: the 55006 errors that
-- say so carry DETAIL 'blocked_by=<op>' (softguard/contract.py), never read from the message.
CREATE OR REPLACE FUNCTION softguard._undo(op bigint, rename_to text, "cascade" boolean,
                                on_conflict text)
RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines softguard.undo_step[] := '{}';
    done softguard.undo_step[];
    detail text;
    holder bigint;
    o softguard.operations;
    finished boolean := false;
    mine boolean := softguard._maintenance_begin();   -- the ledger's guards let undo write
BEGIN
    PERFORM softguard._refuse_purged(op);
    FOR attempt IN 1..1000 LOOP
        BEGIN
            SELECT * INTO o FROM softguard.operations WHERE id = op;
            IF FOUND AND o.kind IN ('DELETE', 'UPDATE', 'MERGE', 'TRUNCATE', 'ALTER TABLE')
               AND o.state = 'active' THEN
                IF rename_to IS NOT NULL THEN
                    RAISE EXCEPTION USING ERRCODE = '22023',
                        MESSAGE = format('--rename-to applies to DROP operations; operation %s is a %s',
                                         op, o.kind);
                END IF;
                done := softguard._undo_rows(op, coalesce(on_conflict, 'fail'));
            ELSIF FOUND AND (o.kind LIKE 'CREATE OR REPLACE %' OR o.kind = 'ALTER SEQUENCE')
                  AND o.state <> 'purged' THEN
                done := softguard._undo_definitions(op, rename_to);   -- 65_definitions.sql
            ELSIF FOUND AND o.kind = 'LARGE OBJECT' THEN
                done := softguard._undo_large_objects(op);   -- 67_large_objects.sql
            ELSE
                done := softguard._undo_one(op, rename_to);
            END IF;
            lines := lines || done;
            finished := true;
            EXIT;
        EXCEPTION WHEN SQLSTATE '55006' THEN
            IF NOT "cascade" THEN
                RAISE;
            END IF;
            GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
            holder := softguard._blocked_by(detail);
            IF holder IS NULL OR holder = op THEN
                RAISE;
            END IF;
            lines := lines || softguard._undo(holder, NULL, true, on_conflict);
        END;
    END LOOP;
    IF NOT finished THEN
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = format('cannot undo operation %s: later operations keep blocking it', op);
    END IF;
    PERFORM softguard._maintenance_end(mine);
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo(bigint, text, boolean, text) FROM PUBLIC;

CREATE EVENT TRIGGER softguard_capture_definitions ON ddl_command_end
    WHEN TAG IN ('CREATE FUNCTION', 'CREATE PROCEDURE', 'CREATE VIEW', 'CREATE RULE',
                 'CREATE TRIGGER', 'ALTER FUNCTION', 'ALTER PROCEDURE', 'ALTER ROUTINE',
                 'ALTER VIEW', 'ALTER TRIGGER', 'ALTER RULE', 'ALTER TABLE', 'ALTER SCHEMA',
                 'ALTER TYPE', 'ALTER DOMAIN')
    EXECUTE FUNCTION softguard._definitions_ddl();
CREATE EVENT TRIGGER softguard_capture_definitions_drop ON sql_drop
    EXECUTE FUNCTION softguard._definitions_drop();
CREATE EVENT TRIGGER softguard_capture_sequences_start ON ddl_command_start
    WHEN TAG IN ('ALTER SEQUENCE', 'ALTER TABLE')
    EXECUTE FUNCTION softguard._sequences_before();
CREATE EVENT TRIGGER softguard_capture_sequences_end ON ddl_command_end
    WHEN TAG IN ('ALTER SEQUENCE', 'ALTER TABLE')
    EXECUTE FUNCTION softguard._sequences_after();
ALTER EVENT TRIGGER softguard_capture_definitions ENABLE ALWAYS;
ALTER EVENT TRIGGER softguard_capture_definitions_drop ENABLE ALWAYS;
ALTER EVENT TRIGGER softguard_capture_sequences_start ENABLE ALWAYS;
ALTER EVENT TRIGGER softguard_capture_sequences_end ENABLE ALWAYS;
-- end section: defs --------------------------------------------

-- section: lo ------------------------------------------------
-- Large objects (issue 11 item 5; docs/decisions/0016-large-objects.md): the tables, the
-- wrappers and the REVOKEs of 67_large_objects.sql, the undo of a LARGE OBJECT operation
-- and _undo's dispatch to it (70_undo.sql).

CREATE TABLE softguard.large_objects (
    op_id       bigint NOT NULL REFERENCES softguard.operations (id),
    loid        oid NOT NULL,
    owner_name  text NOT NULL,                   -- the owner's name when kept
    acl         aclitem[],
    n_bytes     bigint NOT NULL,
    kept_by     text NOT NULL,                   -- lo_put, lo_unlink, lo_open for writing
    stmt_at     timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (op_id, loid)
);
CREATE INDEX large_objects_loid_idx ON softguard.large_objects (loid);
REVOKE ALL ON softguard.large_objects FROM PUBLIC;
COMMENT ON TABLE softguard.large_objects IS
    'large objects kept before a write through softguard (pages in large_object_pages)';

CREATE TABLE softguard.large_object_pages (
    op_id   bigint NOT NULL,
    loid    oid NOT NULL,
    pageno  integer NOT NULL,
    data    bytea NOT NULL,
    PRIMARY KEY (op_id, loid, pageno),
    FOREIGN KEY (op_id, loid) REFERENCES softguard.large_objects (op_id, loid)
);
REVOKE ALL ON softguard.large_object_pages FROM PUBLIC;
COMMENT ON TABLE softguard.large_object_pages IS
    'the pg_largeobject pages of each kept large object, as they were';

CREATE TRIGGER guard_ledger BEFORE DELETE OR TRUNCATE ON softguard.large_objects
    FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_ledger();
ALTER TABLE softguard.large_objects ENABLE ALWAYS TRIGGER guard_ledger;
CREATE TRIGGER guard_ledger BEFORE DELETE OR UPDATE OR TRUNCATE ON softguard.large_object_pages
    FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_ledger();
ALTER TABLE softguard.large_object_pages ENABLE ALWAYS TRIGGER guard_ledger;

-- Descriptors softguard.lo_open opened for writing (their object kept), per backend. A row
-- counts only in the transaction that wrote it: descriptors close when it ends.
CREATE TABLE softguard.large_object_fds (
    pid   integer NOT NULL,
    fd    integer NOT NULL,
    txid  xid8 NOT NULL,
    loid  oid NOT NULL,
    PRIMARY KEY (pid, fd)
);
REVOKE ALL ON softguard.large_object_fds FROM PUBLIC;

REVOKE EXECUTE ON FUNCTION pg_catalog.lo_put(oid, bigint, bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.lo_unlink(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.lowrite(integer, bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.lo_truncate(integer, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.lo_truncate64(integer, bigint) FROM PUBLIC;

-- Whether the client's role may do `what` ('SELECT', 'UPDATE', or 'OWNER') to large object
-- `lo`, as PostgreSQL decides it (wrappers run as their owner, so they check for it).
CREATE OR REPLACE FUNCTION softguard._lo_may(lo oid, what text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT current_setting('lo_compat_privileges')::boolean
        OR EXISTS (SELECT FROM pg_roles r
                    WHERE r.rolname = softguard._client_role() AND r.rolsuper)
        OR EXISTS (SELECT FROM pg_largeobject_metadata m
                    WHERE m.oid = lo
                      AND CASE WHEN what = 'OWNER'
                               THEN pg_has_role(softguard._client_role(), m.lomowner, 'USAGE')
                               ELSE EXISTS (
                                   SELECT FROM aclexplode(coalesce(m.lomacl,
                                                                   acldefault('L', m.lomowner))) a
                                    WHERE a.privilege_type = what
                                      AND (a.grantee = 0 OR pg_has_role(softguard._client_role(),
                                                                       a.grantee, 'USAGE')))
                          END)
$$;
REVOKE ALL ON FUNCTION softguard._lo_may(oid, text) FROM PUBLIC;

-- Refuse as PostgreSQL does when the client may not; a missing object is left to the
-- function itself (42704, its own message).
CREATE OR REPLACE FUNCTION softguard._lo_check(lo oid, what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_largeobject_metadata WHERE oid = lo)
       OR softguard._lo_may(lo, what) THEN
        RETURN;
    END IF;
    IF what = 'OWNER' THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('must be owner of large object %s', lo);
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('permission denied for large object %s', lo);
END $$;
REVOKE ALL ON FUNCTION softguard._lo_check(oid, text) FROM PUBLIC;

-- Keep large object `lo` (pages, owner, ACL) in this transaction's operation for the
-- current client message, opening the operation on the first object. Nothing when the
-- object does not exist (the write fails by itself) or is kept in this operation already.
CREATE OR REPLACE FUNCTION softguard._lo_keep(lo oid, why text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    op bigint;
    m record;
    reg softguard.sessions;
    expires timestamptz;
    sent text;
BEGIN
    SELECT l.oid, r.rolname, l.lomacl INTO m
      FROM pg_largeobject_metadata l JOIN pg_roles r ON r.oid = l.lomowner
     WHERE l.oid = lo;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- Only this transaction's own operations can be joined: their txid is this one.
    SELECT o.id INTO op
      FROM softguard.operations o
     WHERE o.txid = pg_current_xact_id() AND o.kind = 'LARGE OBJECT' AND o.state = 'active'
       AND EXISTS (SELECT FROM softguard.large_objects k
                    WHERE k.op_id = o.id AND k.stmt_at = statement_timestamp())
     ORDER BY o.id DESC LIMIT 1;
    IF op IS NOT NULL AND EXISTS (SELECT FROM softguard.large_objects k
                                   WHERE k.op_id = op AND k.loid = lo) THEN
        RETURN;
    END IF;
    IF op IS NULL THEN
        reg := softguard._session(true);
        expires := now() + softguard._retention(
            reg, nullif(current_setting('softguard.retention', true), '')::integer);
        -- The client's spelling: the proxy only qualified the function names.
        sent := regexp_replace(softguard._client_text(current_query()),
                               'softguard\.(lo_put|lo_unlink|lo_open|lo_close|lowrite|'
                               'lo_truncate64|lo_truncate)\M', '\1', 'g');
        INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                          client_addr, statement, kind, objects, row_counts,
                                          restore)
        VALUES (expires, session_user, softguard._client_role(),
                current_setting('application_name', true), softguard._client_addr(reg),
                coalesce(sent, ''), 'LARGE OBJECT', '[]', NULL, '[]')
        RETURNING id INTO op;
    END IF;
    INSERT INTO softguard.large_objects (op_id, loid, owner_name, acl, n_bytes, kept_by)
    SELECT op, lo, m.rolname, m.lomacl,
           coalesce((SELECT sum(length(p.data)) FROM pg_largeobject p WHERE p.loid = lo), 0),
           why;
    INSERT INTO softguard.large_object_pages (op_id, loid, pageno, data)
    SELECT op, p.loid, p.pageno, p.data FROM pg_largeobject p WHERE p.loid = lo;
    UPDATE softguard.operations o
       SET objects = o.objects || jsonb_build_array(jsonb_build_object(
               'type', 'large object', 'identity', lo::text, 'schema', NULL,
               'name', lo::text, 'classid', 'pg_largeobject'::regclass::oid, 'objid', lo,
               'objsubid', 0, 'original', true, 'normal', true, 'held_by', NULL))
     WHERE o.id = op;
    SELECT expires_at INTO expires FROM softguard.operations WHERE id = op;
    PERFORM softguard._notice(softguard._op_notice(why, format('large object %s', lo), op,
                                                   expires));
END $$;
REVOKE ALL ON FUNCTION softguard._lo_keep(oid, text) FROM PUBLIC;

-- A descriptor the wrappers may write through: opened by softguard.lo_open for writing in
-- this transaction (its object kept). Anything else is refused.
CREATE OR REPLACE FUNCTION softguard._lo_fd_kept(fd integer, what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT FROM softguard.large_object_fds f
                WHERE f.pid = pg_backend_pid() AND f.fd = _lo_fd_kept.fd
                  AND f.txid = pg_current_xact_id_if_assigned()) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('softguard: %s on large object descriptor %s is refused: softguard did '
                         'not open it for writing, so it could not keep the object first',
                         what, fd),
        HINT = 'Open the object with lo_open(oid, mode) in a statement sent through softguard '
               '(not a FunctionCall, DO block or function), in the same transaction.';
END $$;
REVOKE ALL ON FUNCTION softguard._lo_fd_kept(integer, text) FROM PUBLIC;

-- The wrappers the proxy calls instead of pg_catalog's (same arguments, same results).
CREATE OR REPLACE FUNCTION softguard.lo_put(lo oid, "offset" bigint, data bytea) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM softguard._lo_check(lo, 'UPDATE');
    PERFORM softguard._lo_keep(lo, 'lo_put');
    PERFORM pg_catalog.lo_put(lo, "offset", data);
END $$;
REVOKE ALL ON FUNCTION softguard.lo_put(oid, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lo_put(oid, bigint, bytea) TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard.lo_unlink(lo oid) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM softguard._lo_check(lo, 'OWNER');
    PERFORM softguard._lo_keep(lo, 'lo_unlink');
    RETURN pg_catalog.lo_unlink(lo);
END $$;
REVOKE ALL ON FUNCTION softguard.lo_unlink(oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lo_unlink(oid) TO PUBLIC;

-- INV_WRITE = 0x20000, INV_READ = 0x40000 (libpq/libpq-fs.h). Writing needs SELECT too.
CREATE OR REPLACE FUNCTION softguard.lo_open(lo oid, mode integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    opened integer;
BEGIN
    IF mode & 393216 <> 0 THEN
        PERFORM softguard._lo_check(lo, 'SELECT');
    END IF;
    IF mode & 131072 <> 0 THEN
        PERFORM softguard._lo_check(lo, 'UPDATE');
        PERFORM softguard._lo_keep(lo, 'lo_open for writing');
    END IF;
    opened := pg_catalog.lo_open(lo, mode);
    IF mode & 131072 <> 0 THEN
        INSERT INTO softguard.large_object_fds (pid, fd, txid, loid)
        VALUES (pg_backend_pid(), opened, pg_current_xact_id(), lo)
        ON CONFLICT ON CONSTRAINT large_object_fds_pkey
        DO UPDATE SET txid = excluded.txid, loid = excluded.loid;
    END IF;
    -- Opened for reading: nothing written (read-only transactions, standbys). A row this
    -- transaction left for the same number (closed by FunctionCall) is harmless: the
    -- descriptor is not writable, so PostgreSQL refuses a write through it.
    RETURN opened;
END $$;
REVOKE ALL ON FUNCTION softguard.lo_open(oid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lo_open(oid, integer) TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard.lo_close(fd integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r integer := pg_catalog.lo_close(fd);
BEGIN
    -- Only a descriptor this transaction opened for writing has a row (read-only
    -- transactions write nothing here).
    IF EXISTS (SELECT FROM softguard.large_object_fds f
                WHERE f.pid = pg_backend_pid() AND f.fd = lo_close.fd
                  AND f.txid = pg_current_xact_id_if_assigned()) THEN
        DELETE FROM softguard.large_object_fds f
         WHERE f.pid = pg_backend_pid() AND f.fd = lo_close.fd;
    END IF;
    RETURN r;
END $$;
REVOKE ALL ON FUNCTION softguard.lo_close(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lo_close(integer) TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard.lowrite(fd integer, data bytea) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM softguard._lo_fd_kept(fd, 'lowrite');
    RETURN pg_catalog.lowrite(fd, data);
END $$;
REVOKE ALL ON FUNCTION softguard.lowrite(integer, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lowrite(integer, bytea) TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard.lo_truncate(fd integer, len integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM softguard._lo_fd_kept(fd, 'lo_truncate');
    RETURN pg_catalog.lo_truncate(fd, len);
END $$;
REVOKE ALL ON FUNCTION softguard.lo_truncate(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lo_truncate(integer, integer) TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard.lo_truncate64(fd integer, len bigint) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM softguard._lo_fd_kept(fd, 'lo_truncate64');
    RETURN pg_catalog.lo_truncate64(fd, len);
END $$;
REVOKE ALL ON FUNCTION softguard.lo_truncate64(integer, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lo_truncate64(integer, bigint) TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard._undo_large_objects(op bigint) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines softguard.undo_step[] := '{}';
    o softguard.operations;
    k softguard.large_objects;
    later bigint;
    recreated boolean;
    a record;
BEGIN
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF o.state <> 'active' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s is %s, not active', op, o.state);
    END IF;
    FOR k IN SELECT * FROM softguard.large_objects WHERE op_id = op ORDER BY loid LOOP
        SELECT min(l.op_id) INTO later
          FROM softguard.large_objects l JOIN softguard.operations lo ON lo.id = l.op_id
         WHERE l.loid = k.loid AND l.op_id > op AND lo.state = 'active';
        IF later IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '55006',
                MESSAGE = format('cannot undo operation %s: operation %s wrote large object %s '
                                 'since', op, later, k.loid),
                DETAIL = softguard._blocked_detail(later),
                HINT = format('Undo operation %s first, or use --cascade.', later);
        END IF;
        recreated := NOT EXISTS (SELECT FROM pg_largeobject_metadata WHERE oid = k.loid);
        IF recreated THEN
            PERFORM pg_catalog.lo_create(k.loid);
            EXECUTE format('ALTER LARGE OBJECT %s OWNER TO %I', k.loid, k.owner_name);
            -- GRANTs record the grantees' dependencies; the exact ACL is then set as kept.
            FOR a IN SELECT * FROM aclexplode(k.acl) x
                      WHERE x.grantee <> (SELECT oid FROM pg_roles WHERE rolname = k.owner_name)
            LOOP
                EXECUTE format('GRANT %s ON LARGE OBJECT %s TO %s%s', a.privilege_type, k.loid,
                               CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                    ELSE quote_ident((SELECT rolname FROM pg_roles
                                                       WHERE oid = a.grantee)) END,
                               CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
            END LOOP;
            UPDATE pg_largeobject_metadata SET lomacl = k.acl WHERE oid = k.loid;
        END IF;
        DELETE FROM pg_largeobject WHERE loid = k.loid;
        INSERT INTO pg_largeobject (loid, pageno, data)
        SELECT p.loid, p.pageno, p.data FROM softguard.large_object_pages p
         WHERE p.op_id = op AND p.loid = k.loid ORDER BY p.pageno;
        lines := lines || softguard._step(op, CASE WHEN recreated THEN 're-created'
                                                   ELSE 'restored' END,
                                          format('large object %s', k.loid),
                                          format('large object %s %s (%s bytes)', k.loid,
                                                 CASE WHEN recreated
                                                      THEN 're-created with its contents, owner '
                                                           || quote_ident(k.owner_name)
                                                      ELSE 'contents restored' END,
                                                 k.n_bytes));
    END LOOP;
    UPDATE softguard.operations SET state = 'undone', undone_at = now(), undone_by = session_user
     WHERE id = op;
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, restore, undo_of)
    VALUES (o.expires_at, session_user, current_user, current_setting('application_name', true),
            inet_client_addr()::text, format('softguard undo %s', op), 'UNDO', o.objects, '[]',
            op);
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_large_objects(bigint) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._undo(op bigint, rename_to text, "cascade" boolean,
                                on_conflict text)
RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines softguard.undo_step[] := '{}';
    done softguard.undo_step[];
    detail text;
    holder bigint;
    o softguard.operations;
    finished boolean := false;
    mine boolean := softguard._maintenance_begin();   -- the ledger's guards let undo write
BEGIN
    PERFORM softguard._refuse_purged(op);
    FOR attempt IN 1..1000 LOOP
        BEGIN
            SELECT * INTO o FROM softguard.operations WHERE id = op;
            IF FOUND AND o.kind IN ('DELETE', 'UPDATE', 'MERGE', 'TRUNCATE', 'ALTER TABLE')
               AND o.state = 'active' THEN
                IF rename_to IS NOT NULL THEN
                    RAISE EXCEPTION USING ERRCODE = '22023',
                        MESSAGE = format('--rename-to applies to DROP operations; operation %s is a %s',
                                         op, o.kind);
                END IF;
                done := softguard._undo_rows(op, coalesce(on_conflict, 'fail'));
            ELSIF FOUND AND (o.kind LIKE 'CREATE OR REPLACE %' OR o.kind = 'ALTER SEQUENCE')
                  AND o.state <> 'purged' THEN
                done := softguard._undo_definitions(op, rename_to);   -- 65_definitions.sql
            ELSIF FOUND AND o.kind = 'LARGE OBJECT' THEN
                done := softguard._undo_large_objects(op);   -- 67_large_objects.sql
            ELSE
                done := softguard._undo_one(op, rename_to);
            END IF;
            lines := lines || done;
            finished := true;
            EXIT;
        EXCEPTION WHEN SQLSTATE '55006' THEN
            IF NOT "cascade" THEN
                RAISE;
            END IF;
            GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
            holder := softguard._blocked_by(detail);
            IF holder IS NULL OR holder = op THEN
                RAISE;
            END IF;
            lines := lines || softguard._undo(holder, NULL, true, on_conflict);
        END;
    END LOOP;
    IF NOT finished THEN
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = format('cannot undo operation %s: later operations keep blocking it', op);
    END IF;
    PERFORM softguard._maintenance_end(mine);
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo(bigint, text, boolean, text) FROM PUBLIC;
-- end section: lo --------------------------------------------


DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
END $$;
