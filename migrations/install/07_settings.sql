-- The capture budget (issue 11 item 7; docs/decisions/0014-capture-budget.md): how much a
-- single statement may copy into the ledger, so that no capture fills the disk.
--
-- What always holds:
-- * The budget lives in softguard.settings, one row, which only softguard's own
--   connections change (softguard init, and serve's ledger connection, keep it equal to
--   the configuration through _settings_set). A protected session cannot raise it: no
--   privilege on the table for PUBLIC, a guard (ENABLE ALWAYS) refusing every write outside
--   _settings_set, and _settings_set refusing registered (proxied) sessions.
-- * A session may lower its own budget with the setting softguard.max_capture_bytes, never
--   raise it (_capture_budget takes the least).
-- * The row always exists: an install without configuration gets the defaults (1 GiB per
--   statement, 10 % of the disk kept free once a disk sample is known).

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
    updated_at             timestamptz NOT NULL DEFAULT now(),
    -- UPDATE capture triggers on every table (decision 0023): off when no rule protects
    -- UPDATE, so that UPDATEs pay nothing (softguard init sets it from the policy; a
    -- registration that protects UPDATE switches it on)
    capture_updates        boolean NOT NULL DEFAULT true,
    -- whether the install could create softguard's event triggers (decision 0025): false
    -- on a managed server whose owner role may not, and then what depends on them (DROP,
    -- DROP COLUMN, capture on tables created later, the backstops) is refused or missing
    event_triggers         boolean NOT NULL DEFAULT true
);
REVOKE ALL ON softguard.settings FROM PUBLIC;
INSERT INTO softguard.settings DEFAULT VALUES;
COMMENT ON TABLE softguard.settings IS
    'the capture budget and whether UPDATEs are captured, kept equal to softguard''s configuration (softguard init, serve)';

-- Create one of softguard's event triggers, enabled ALWAYS (decision 0025): as a superuser
-- directly; through the provider's helper function when softguard init names one
-- (--event-trigger-helper: the transaction-local setting softguard.event_trigger_helper,
-- a function (name text, definition text) that runs CREATE EVENT TRIGGER <name>
-- <definition> and ENABLE ALWAYS on the installer's behalf, as Supabase's supautils does);
-- otherwise tried directly (RDS lets rds_superuser members create them), and false when
-- PostgreSQL refuses the privilege: the install goes on without it, and records so.
CREATE FUNCTION softguard._create_event_trigger(name text, definition text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    helper text := nullif(current_setting('softguard.event_trigger_helper', true), '');
BEGIN
    IF helper IS NOT NULL THEN
        EXECUTE format('SELECT %s($1, $2)', helper::regproc) USING name, definition;
        RETURN true;
    END IF;
    IF (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
        EXECUTE format('CREATE EVENT TRIGGER %I %s', name, definition);
    ELSE
        BEGIN
            EXECUTE format('CREATE EVENT TRIGGER %I %s', name, definition);
        EXCEPTION WHEN insufficient_privilege THEN
            RETURN false;
        END;
    END IF;
    -- ALWAYS: session_replication_role = replica must not switch it off.
    EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', name);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION softguard._create_event_trigger(text, text) FROM PUBLIC;

-- Record whether the install has every softguard event trigger (its last step, 90).
CREATE FUNCTION softguard._settings_event_triggers(present boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mine boolean := softguard._maintenance_begin();
BEGIN
    UPDATE softguard.settings SET event_triggers = present, updated_at = now();
    PERFORM softguard._maintenance_end(mine);
END $$;
REVOKE ALL ON FUNCTION softguard._settings_event_triggers(boolean) FROM PUBLIC;

-- Every write outside _settings_set is refused (a superuser's too, unless it also forges
-- the maintenance mark: best effort against A2, as for the ledger).
CREATE FUNCTION softguard._guard_settings() RETURNS trigger
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
CREATE FUNCTION softguard._settings_set(max_bytes bigint, min_free_percent real,
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
-- Neither SECURITY DEFINER nor SET (read on every captured statement, decision 0024): only
-- _budget_take and _budget_fits call it, from SECURITY DEFINER callers that pin
-- search_path; what it names is qualified or built in.
CREATE FUNCTION softguard._capture_budget(OUT bytes bigint, OUT why text)
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
REVOKE ALL ON FUNCTION softguard._capture_budget() FROM PUBLIC;

-- Refuse a capture over the budget (54000): nothing was changed, the statement's
-- transaction aborts.
CREATE FUNCTION softguard._budget_refuse(what text, target text, need bigint, budget bigint,
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
-- No FROM clause: the planner inlines it into the caller's cached plan (a SQL function it
-- cannot inline is planned again at every call: most of a captured single-row DELETE's
-- budget check, decision 0024).
CREATE FUNCTION softguard._budget_used(key text) RETURNS bigint
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
REVOKE ALL ON FUNCTION softguard._budget_used(text) FROM PUBLIC;

-- Check that statement `key` may keep `need` more bytes (refuse with 54000 when not); with
-- `keep`, count them into its running total. Returns the statement's total with `need`
-- (a value, so that the capture trigger calls it in an assignment, not a PERFORM, which
-- runs the executor). No SET clause (each costs a setting saved and restored per call, on
-- every captured statement: decision 0024): its callers, all SECURITY DEFINER, pin
-- search_path, and what it names is qualified or built in.
CREATE FUNCTION softguard._budget_take(key text, need bigint, keep boolean, what text,
                                       target text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    used bigint := softguard._budget_used(key);
    -- an expression, not SELECT ... FROM: no executor run and tuplestore for one row
    -- (a third of this function's cost on a captured single-row DELETE, decision 0024)
    b record := softguard._capture_budget();
    noted text;
BEGIN
    IF used + need > b.bytes THEN
        PERFORM softguard._budget_refuse(what, target, used + need, b.bytes, b.why);
    END IF;
    IF keep THEN
        noted := set_config('softguard.capture_bytes', key || '/' || (used + need), true);
    END IF;
    RETURN used + need;
END $$;
REVOKE ALL ON FUNCTION softguard._budget_take(text, bigint, boolean, text, text) FROM PUBLIC;

-- The fast path of a DELETE / UPDATE capture: when the whole table fits in what statement
-- `key` may still keep, its size is counted (an upper bound of what the statement
-- removes) and the rows need not be measured. False when it does not fit, or when the
-- table has children (a partitioned or inheritance parent's own size says nothing): the
-- capture trigger then measures its transition table and calls _budget_take. No SET
-- clause, as _budget_take.
CREATE FUNCTION softguard._budget_fits(key text, rel oid) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    size bigint;
    used bigint;
    b record;
    noted text;                            -- set_config's answer (an assignment: no executor)
BEGIN
    SELECT CASE WHEN c.relhassubclass THEN NULL ELSE pg_catalog.pg_table_size(c.oid) END
      INTO size FROM pg_catalog.pg_class c WHERE c.oid = rel;
    IF size IS NULL THEN
        RETURN false;
    END IF;
    used := softguard._budget_used(key);
    b := softguard._capture_budget();      -- an expression: as in _budget_take
    IF used + size > b.bytes THEN
        RETURN false;
    END IF;
    noted := set_config('softguard.capture_bytes', key || '/' || (used + size), true);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION softguard._budget_fits(text, oid) FROM PUBLIC;

-- Before a TRUNCATE copies table `rel` for operation `op`: every table this backend holds
-- ACCESS EXCLUSIVE (PostgreSQL locks all the tables a TRUNCATE empties - listed, CASCADE,
-- partitions - before it fires the first BEFORE TRUNCATE trigger) that the operation has
-- not copied yet is measured (pg_table_size: heap and TOAST), so the first table's trigger
-- refuses before anything is copied. Over-counts only tables the same transaction locked
-- earlier and does not truncate now (refused where the copy might have fitted).
CREATE FUNCTION softguard._budget_truncate(op bigint, rel oid) RETURNS void
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
