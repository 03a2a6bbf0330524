-- softguard's event triggers, all ENABLE ALWAYS (session_replication_role = replica must
-- not switch them off), all named softguard_capture_* (the proxy refuses any statement
-- naming them, softguard/sql/tamper.py; PostgreSQL fires no event trigger for
-- ALTER/DROP EVENT TRIGGER) and all checked by softguard._machinery_check before protected
-- work (drop_op through _probe, truncate_op, alter_op):
-- * softguard_capture_sql_drop / softguard_capture_ddl_end: the probe (softguard._probe
--   arms them to report what a statement would drop) and the backstop that refuses any
--   DROP of the ledger or the quarantine from SQL softguard cannot see.
-- * softguard_capture_install: new tables get the capture triggers (40_capture.sql).
-- * softguard_capture_tamper_ddl / softguard_capture_tamper_drop: the capture triggers
--   defend themselves (threat model G7): no statement may leave a table that must carry
--   them without one, with one renamed, changed or in any state but enabled ALWAYS. They
--   fire after the others of their event (event triggers fire in name order).
-- * softguard_capture_remote: new foreign tables (and tables a foreign table becomes a
--   partition or child of) get the remote guard (40_capture.sql, decision 0013).
-- The install puts the capture triggers on every existing table and the remote guard on
-- every existing foreign table, then arms the guard.

-- ---------------------------------------------------------------------------------------
-- Capture triggers. Silent unless softguard.probe = 'on' (transaction-local, set only by
-- softguard._probe around the statement it probes): then they abort the statement with
-- the private SQLSTATE SGPRB, DETAIL = JSON array of what it would drop ('[]' when nothing).
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION softguard._capture_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    detail text;
    victim text;
BEGIN
    IF current_setting('softguard.probe', true) IS DISTINCT FROM 'on' THEN
        -- Backstop: SQL softguard cannot see (a DO block, a function, a direct session)
        -- must not destroy the ledger or what is in quarantine. Only softguard's own
        -- maintenance (purge) marks its transaction (softguard.maintenance).
        IF NOT softguard._in_maintenance() THEN
            SELECT d.object_identity INTO victim
              FROM pg_event_trigger_dropped_objects() d
             WHERE NOT d.is_temporary
               AND (d.schema_name IN ('softguard', 'softguard_quarantine')
                    OR d.schema_name ~ '^softguard_q[0-9]+_'
                    OR (d.object_type = 'schema'
                        AND (d.object_name IN ('softguard', 'softguard_quarantine')
                             OR d.object_name ~ '^softguard_q[0-9]+_'))
                    -- a kept foreign server or language is in no schema: its name says
                    -- it is kept (and its user mappings', which DROP OWNED BY their user
                    -- would take)
                    OR (d.object_type IN ('server', 'language')
                        AND d.object_identity ~ '^"?softguard_q[0-9]+_')
                    OR (d.object_type = 'user mapping'
                        AND d.object_identity ~ ' on server "?softguard_q[0-9]+_'))
             LIMIT 1;
            IF victim IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = '42501',
                    MESSAGE = format('softguard: %s belongs to softguard''s ledger or '
                                     'quarantine and cannot be dropped', victim),
                    HINT = 'Quarantined objects leave through softguard undo or softguard purge.';
            END IF;
        END IF;
        PERFORM softguard._backstop_drop();
        RETURN;
    END IF;
    SELECT coalesce(json_agg(json_build_object(
               'classid', d.classid, 'objid', d.objid, 'objsubid', d.objsubid,
               'original', d.original, 'normal', d.normal, 'is_temporary', d.is_temporary,
               'object_type', d.object_type, 'schema_name', d.schema_name,
               'object_name', d.object_name, 'object_identity', d.object_identity,
               'address_names', d.address_names, 'address_args', d.address_args)), '[]')::text
      INTO detail
      FROM pg_event_trigger_dropped_objects() d;
    RAISE EXCEPTION USING ERRCODE = 'SGPRB', MESSAGE = 'softguard probe', DETAIL = detail;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_sql_drop() FROM PUBLIC;

CREATE FUNCTION softguard._capture_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- Reached in probe mode only when sql_drop did not fire: nothing was dropped.
    IF current_setting('softguard.probe', true) = 'on' THEN
        RAISE EXCEPTION USING ERRCODE = 'SGPRB', MESSAGE = 'softguard probe', DETAIL = '[]';
    END IF;
    PERFORM softguard._probe_rewrite_check();  -- probe mode left mid-statement (85_backstop.sql)
END $$;
REVOKE ALL ON FUNCTION softguard._capture_ddl_end() FROM PUBLIC;

SELECT softguard._create_event_trigger('softguard_capture_sql_drop', $$ON sql_drop
    EXECUTE FUNCTION softguard._capture_sql_drop()$$);
SELECT softguard._create_event_trigger('softguard_capture_ddl_end', $$ON ddl_command_end
    EXECUTE FUNCTION softguard._capture_ddl_end()$$);

-- Tables created later get the triggers too (CREATE TABLE, PARTITION OF, AS, SELECT INTO,
-- CREATE SCHEMA ... CREATE TABLE).
CREATE FUNCTION softguard._capture_install_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF current_setting('softguard.probe', true) = 'on' THEN
        RETURN;
    END IF;
    FOR r IN SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() c
              WHERE c.classid = 'pg_class'::regclass AND c.objsubid = 0
                AND c.object_type IN ('table', 'partitioned table') LOOP
        PERFORM softguard._install_capture(r.objid);
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_install_ddl() FROM PUBLIC;

-- CREATE SCHEMA: its embedded CREATE TABLE reports the tag of the CREATE SCHEMA.
SELECT softguard._create_event_trigger('softguard_capture_install', $$ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'CREATE SCHEMA')
    EXECUTE FUNCTION softguard._capture_install_ddl()$$);

-- ---------------------------------------------------------------------------------------
-- The capture triggers defend themselves (threat model G7). A table owner may drop,
-- disable, rename or replace triggers on its tables, in any spelling, inside DO blocks,
-- functions and procedures; a superuser may also set session_replication_role = replica.
-- So the capture triggers are enabled ALWAYS, and after every statement that touched a
-- table (ddl_command_end) or dropped a trigger (sql_drop) the tables it touched must still
-- carry them exactly as installed, else the statement fails (42501) and rolls back whole.
-- softguard's own DDL passes the same check: it moves tables with their triggers and
-- never leaves one without them. The one exemption is the install itself (each CREATE
-- TRIGGER of _install_capture leaves the table half-equipped until the ALTER TABLE that
-- enables the three ALWAYS): a CREATE TRIGGER of a capture trigger exactly as installed,
-- on a table none of whose capture triggers is enabled ALWAYS yet. Only softguard's own
-- functions and superusers can create a trigger that runs softguard's capture functions
-- (EXECUTE on them is revoked from PUBLIC), and on a table already equipped it is refused.
-- ---------------------------------------------------------------------------------------

-- The guard's helpers run at every ALTER TABLE: like the capture trigger's helpers
-- (20_catalog.sql, top) they are PL/pgSQL (plans kept per session) without a SET of their
-- own (their callers pin search_path; tables and functions are schema-qualified).

-- How each capture trigger stands on those of `rels` that must carry them: 'ok' (as
-- installed, enabled ALWAYS), 'missing', 'changed' (another function, timing, event,
-- condition, column list or transition table than installed), 'disabled', 'replica'
-- (fires only in replica mode) or 'origin' (session_replication_role = replica silences
-- it). No row for a relation that need not carry them. Which must, the installer
-- (_install_capture) and the guard decide here: the tables softguard._protected_table
-- protects (its conditions, inline: a SQL function is planned again at every call), and
-- the tables softguard holds in quarantine (undo brings them back as they are).
-- Does `rel` carry the UPDATE capture trigger (decision 0023)? Every table while UPDATEs
-- are captured (softguard.settings.capture_updates); otherwise the tables that a DELETE
-- changes by ON DELETE SET NULL / SET DEFAULT, whose changes are part of the DELETE.
CREATE FUNCTION softguard._updates_captured(rel oid) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT s.capture_updates FROM softguard.settings s), true)
        OR EXISTS (SELECT FROM pg_catalog.pg_constraint k
                    WHERE k.conrelid = rel AND k.contype = 'f' AND k.confdeltype IN ('n', 'd'))
$$;
REVOKE ALL ON FUNCTION softguard._updates_captured(oid) FROM PUBLIC;

CREATE FUNCTION softguard._capture_state(rels oid[])
RETURNS TABLE (rel oid, name text, state text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    -- to_regprocedure: NULL, not an error, while a DROP FUNCTION is being refused
    rows_fn oid := pg_catalog.to_regprocedure('softguard._capture_rows()');
    truncate_fn oid := pg_catalog.to_regprocedure('softguard._capture_truncate()');
    statement_fn oid := pg_catalog.to_regprocedure('softguard._capture_statement()');
    one oid;
    updates boolean;
BEGIN
    -- one relation per query: its generic plan (kept per session) is index lookups
    FOREACH one IN ARRAY rels LOOP
        updates := softguard._updates_captured(one);
        RETURN QUERY
        SELECT c.oid, e.name::text,
               CASE WHEN t.oid IS NULL THEN 'missing'
                    WHEN t.tgfoid IS DISTINCT FROM e.fn OR t.tgtype <> e.type
                         OR pg_catalog.pg_get_expr(t.tgqual, t.tgrelid) IS DISTINCT FROM e.qual
                         OR t.tgnargs <> 0
                         OR pg_catalog.cardinality(t.tgattr::pg_catalog.int2[]) <> 0
                         OR t.tgoldtable::text IS DISTINCT FROM e.old
                         OR t.tgnewtable::text IS DISTINCT FROM e.new
                         THEN 'changed'
                    WHEN t.tgenabled = 'A' THEN 'ok'
                    WHEN t.tgenabled = 'D' THEN 'disabled'
                    WHEN t.tgenabled = 'R' THEN 'replica'
                    ELSE 'origin' END
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         CROSS JOIN (VALUES                -- tgtype: AFTER DELETE, AFTER UPDATE, BEFORE
                                           -- TRUNCATE, BEFORE DELETE [OR UPDATE]
                      ('zz_softguard_capture_delete'::name, rows_fn, 8, 'sg_old', NULL::text,
                       NULL::text, true),
                      ('zz_softguard_capture_update'::name, rows_fn, 16, 'sg_old', 'sg_new', NULL,
                       updates),
                      ('zz_softguard_capture_truncate'::name, truncate_fn, 34, NULL, NULL, NULL,
                       true),
                      ('zz_softguard_capture_statement'::name, statement_fn,
                       CASE WHEN updates THEN 26 ELSE 10 END, NULL, NULL,
                       '(pg_trigger_depth() = 0)', true))
               e(name, fn, type, old, new, qual, wanted)
          LEFT JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid AND t.tgname = e.name
         WHERE c.oid = one AND e.wanted AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
           AND ((n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                 AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
                 AND n.nspname NOT LIKE 'softguard%')
                OR n.nspname = 'softguard_quarantine' OR n.nspname ~ '^softguard_q[0-9]+_')
         ORDER BY e.name;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_state(oid[]) FROM PUBLIC;

-- Refuse (42501) if any of these relations must carry the capture triggers and does not.
CREATE FUNCTION softguard._capture_refuse_tampering(rels oid[]) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    bad record;
BEGIN
    SELECT s.rel, s.name, s.state INTO bad
      FROM softguard._capture_state(rels) s WHERE s.state <> 'ok' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = pg_catalog.format(
                'softguard: this statement would leave trigger %I on %s %s; softguard''s '
                'capture triggers cannot be dropped, disabled, renamed or replaced',
                bad.name, bad.rel::pg_catalog.regclass,
                CASE bad.state WHEN 'missing' THEN 'missing'
                     WHEN 'changed' THEN 'not as softguard installed it'
                     WHEN 'disabled' THEN 'disabled'
                     WHEN 'replica' THEN 'firing only in replica mode'
                     ELSE 'not enabled ALWAYS' END),
            HINT = 'They keep DELETE, UPDATE and TRUNCATE of the table reversible. To switch '
                   'the table''s own triggers, name them (ALTER TABLE ... DISABLE TRIGGER '
                   'name) instead of USER or ALL.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_refuse_tampering(oid[]) FROM PUBLIC;

-- The guard, for both events: only the tables the statement touched. ddl_command_end: its
-- commands' tables, a trigger's table, every table of a renamed schema (unrelated DDL
-- costs one scan of its own command list). sql_drop: the tables that lost a trigger and
-- are still there (a dropped table takes its triggers along: the DROP backstops decide
-- about the table).
CREATE FUNCTION softguard._capture_tamper() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rels oid[] := '{}';
    r record;
    t record;
BEGIN
    IF TG_EVENT = 'sql_drop' THEN
        SELECT coalesce(array_agg(DISTINCT c.oid), '{}') INTO rels
          FROM pg_event_trigger_dropped_objects() d
          JOIN pg_namespace n ON n.nspname = d.address_names[1]
          JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = d.address_names[2]
         WHERE d.object_type = 'trigger';
    ELSE
        -- a loop, not a join: a join with pg_class by namespace would scan pg_class for
        -- every ALTER TABLE
        FOR r IN SELECT c.classid, c.objid, c.command_tag FROM pg_event_trigger_ddl_commands() c
        LOOP
            IF r.classid = 'pg_class'::regclass THEN
                rels := rels || r.objid;
            ELSIF r.classid = 'pg_trigger'::regclass THEN
                SELECT g.tgrelid, g.tgname INTO t FROM pg_trigger g WHERE g.oid = r.objid;
                CONTINUE WHEN r.command_tag = 'CREATE TRIGGER'       -- the install, see above
                    AND (SELECT pg_catalog.bool_or(s.name = t.tgname AND s.state = 'origin')
                                AND NOT pg_catalog.bool_or(s.state = 'ok')
                           FROM softguard._capture_state(ARRAY[t.tgrelid]) s);
                rels := rels || t.tgrelid;
            ELSIF r.classid = 'pg_namespace'::regclass AND r.command_tag = 'ALTER SCHEMA' THEN
                rels := rels || ARRAY(SELECT k.oid FROM pg_class k
                                       WHERE k.relnamespace = r.objid AND k.relkind IN ('r', 'p'));
            END IF;
        END LOOP;
    END IF;
    IF cardinality(rels) = 0 OR softguard._in_maintenance() THEN
        RETURN;                    -- softguard's own switch of UPDATE capture (40_capture.sql)
    END IF;
    IF NOT (SELECT g.capture_updates FROM softguard.settings g) THEN
        -- While UPDATEs are not captured (decision 0023), a table needs the UPDATE capture
        -- trigger only while an ON DELETE SET NULL / SET DEFAULT key points from it; the
        -- statement changing that is repaired, not refused, since it asked for nothing to
        -- be switched off:
        -- * such a key added: the UPDATE capture trigger installed (ddl_command_end only;
        --   and only where none exists under any name: a renamed one is tampering, refused
        --   below);
        -- * the last such key gone (ALTER TABLE ... DROP CONSTRAINT, or a DROP through
        --   softguard taking it along; sql_drop reports the key's RI triggers): the extra
        --   capture (a statement trigger firing on UPDATE too) trimmed.
        FOR r IN SELECT DISTINCT s.rel FROM softguard._capture_state(rels) s
                   LEFT JOIN pg_trigger g ON g.tgrelid = s.rel AND g.tgname = s.name
                  WHERE (TG_EVENT <> 'sql_drop'
                         AND s.name = 'zz_softguard_capture_update' AND s.state = 'missing'
                         AND NOT EXISTS (SELECT FROM pg_trigger u
                                          WHERE u.tgrelid = s.rel AND (u.tgtype & 16) <> 0
                                            AND u.tgfoid = 'softguard._capture_rows()'::regprocedure))
                     OR (s.name = 'zz_softguard_capture_statement' AND s.state = 'changed'
                         AND g.tgtype = 26
                         AND g.tgfoid = 'softguard._capture_statement()'::regprocedure)
        LOOP
            PERFORM softguard._install_capture_maintained(r.rel);
        END LOOP;
    END IF;
    PERFORM softguard._capture_refuse_tampering(rels);
END $$;
REVOKE ALL ON FUNCTION softguard._capture_tamper() FROM PUBLIC;

-- The event triggers a full install has (87_modes.sql's mode guard and this file's).
CREATE FUNCTION softguard._event_trigger_names() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['softguard_capture_ddl_end', 'softguard_capture_install',
                 'softguard_capture_sql_drop', 'softguard_capture_tamper_ddl',
                 'softguard_capture_tamper_drop', 'softguard_capture_inherit',
                 'softguard_capture_remote', 'softguard_capture_definitions',
                 'softguard_capture_definitions_drop', 'softguard_capture_sequences_start',
                 'softguard_capture_sequences_end', 'softguard_mode_guard',
                 'softguard_backstop_rewrite']
$$;
GRANT EXECUTE ON FUNCTION softguard._event_trigger_names() TO PUBLIC;

-- Whether the install created the event triggers (softguard.settings.event_triggers,
-- decision 0025). SECURITY DEFINER: clients call it and cannot read the settings; the
-- answer is the same for everyone. PL/pgSQL: each probe asks twice, and a SQL function
-- with a SET is planned on every call.
CREATE FUNCTION softguard._has_event_triggers() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN coalesce((SELECT s.event_triggers FROM softguard.settings s), true);
END $$;
REVOKE ALL ON FUNCTION softguard._has_event_triggers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._has_event_triggers() TO PUBLIC;

-- Protected work refuses to run (55000) unless every softguard event trigger is there and
-- enabled ALWAYS: ALTER / DROP EVENT TRIGGER fire no event trigger, so nothing else sees
-- them switched off. Called by _probe (drop_op, alter_op's DROP COLUMN), truncate_op and
-- alter_op. An install made without event triggers (decision 0025) expects none; what
-- needs them refuses through _require_event_triggers instead.
CREATE FUNCTION softguard._machinery_check() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    off text;
    expected text[] := CASE WHEN softguard._has_event_triggers()
                            THEN softguard._event_trigger_names() ELSE '{}' END;
BEGIN
    SELECT string_agg(x.name, ', ' ORDER BY x.name) INTO off
      FROM (SELECT w.name FROM unnest(expected) w(name)
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
REVOKE ALL ON FUNCTION softguard._machinery_check() FROM PUBLIC;
-- the protected statements run as the client: they call it as the client
GRANT EXECUTE ON FUNCTION softguard._machinery_check() TO PUBLIC;

-- What only the event triggers can keep (the probe of a DROP or DROP COLUMN) refuses,
-- before running anything, in an install made without them (decision 0025).
CREATE FUNCTION softguard._require_event_triggers() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT softguard._has_event_triggers() THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = 'softguard: this statement cannot be made reversible here: softguard '
                      'was installed without event triggers (the installing role may not '
                      'create them); refusing it',
            HINT = 'Run softguard init as a role that may create event triggers (a superuser, '
                   'or through the provider''s helper: --event-trigger-helper); see the '
                   'runbook, "Managed PostgreSQL".';
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._require_event_triggers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._require_event_triggers() TO PUBLIC;

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

SELECT softguard._create_event_trigger('softguard_capture_inherit', $$ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION softguard._capture_inherit_ddl()$$);

-- Foreign tables created later, and those that become a partition or child of another
-- table, get the remote guard (40_capture.sql) - on them and on the tables above them.
CREATE FUNCTION softguard._capture_remote_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF current_setting('softguard.probe', true) = 'on' THEN
        RETURN;
    END IF;
    FOR r IN WITH RECURSIVE d(rel) AS (
                 SELECT c.objid FROM pg_event_trigger_ddl_commands() c
                  WHERE c.classid = 'pg_class'::regclass AND c.objsubid = 0
                 UNION SELECT i.inhrelid FROM pg_inherits i JOIN d ON i.inhparent = d.rel)
             SELECT d.rel FROM d JOIN pg_class k ON k.oid = d.rel
              WHERE k.relkind = 'f' ORDER BY d.rel LOOP
        PERFORM softguard._install_remote_guard(r.rel);
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_remote_ddl() FROM PUBLIC;

SELECT softguard._create_event_trigger('softguard_capture_remote', $$ON ddl_command_end
    WHEN TAG IN ('CREATE FOREIGN TABLE', 'IMPORT FOREIGN SCHEMA', 'ALTER TABLE',
                 'ALTER FOREIGN TABLE')
    EXECUTE FUNCTION softguard._capture_remote_ddl()$$);

-- Definitions and sequence state (65_definitions.sql): kept for what CREATE OR REPLACE
-- and ALTER SEQUENCE replace. The tags: every command that creates or alters a function,
-- procedure, view, rule or trigger, or renames what their text names.
SELECT softguard._create_event_trigger('softguard_capture_definitions', $$ON ddl_command_end
    WHEN TAG IN ('CREATE FUNCTION', 'CREATE PROCEDURE', 'CREATE VIEW', 'CREATE RULE',
                 'CREATE TRIGGER', 'ALTER FUNCTION', 'ALTER PROCEDURE', 'ALTER ROUTINE',
                 'ALTER VIEW', 'ALTER TRIGGER', 'ALTER RULE', 'ALTER TABLE', 'ALTER SCHEMA',
                 'ALTER TYPE', 'ALTER DOMAIN')
    EXECUTE FUNCTION softguard._definitions_ddl()$$);
SELECT softguard._create_event_trigger('softguard_capture_definitions_drop', $$ON sql_drop
    EXECUTE FUNCTION softguard._definitions_drop()$$);
SELECT softguard._create_event_trigger('softguard_capture_sequences_start', $$ON ddl_command_start
    WHEN TAG IN ('ALTER SEQUENCE', 'ALTER TABLE')
    EXECUTE FUNCTION softguard._sequences_before()$$);
SELECT softguard._create_event_trigger('softguard_capture_sequences_end', $$ON ddl_command_end
    WHEN TAG IN ('ALTER SEQUENCE', 'ALTER TABLE')
    EXECUTE FUNCTION softguard._sequences_after()$$);

SELECT softguard._install_capture(c.oid) FROM pg_class c WHERE c.relkind IN ('r', 'p')
 ORDER BY c.oid;
SELECT softguard._install_remote_guard(c.oid) FROM pg_class c WHERE c.relkind = 'f'
 ORDER BY c.oid;

-- Armed last: the install above must not be checked half-done. The tags: every command
-- that can create, move or rename a table or change a trigger (other DDL never calls it).
SELECT softguard._create_event_trigger('softguard_capture_tamper_ddl', $$ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER TRIGGER', 'CREATE TRIGGER', 'ALTER SCHEMA',
                 'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'CREATE SCHEMA')
    EXECUTE FUNCTION softguard._capture_tamper()$$);
SELECT softguard._create_event_trigger('softguard_capture_tamper_drop', $$ON sql_drop
    EXECUTE FUNCTION softguard._capture_tamper()$$);
-- A column type change by a protected session outside alter_op (85_backstop.sql).
SELECT softguard._create_event_trigger('softguard_backstop_rewrite', $$ON table_rewrite
    EXECUTE FUNCTION softguard._backstop_rewrite()$$);

-- Without event triggers (decision 0025) nothing equips a table created later, and nothing
-- stops a table owner from dropping or disabling a capture trigger: softguard's own
-- connections (softguard init, and serve's ledger checks, as the installer) call this to put
-- every capture trigger back. Returns the tables it equipped (done) and those it could not
-- (not the installer's: their DELETEs stay uncaptured, which init and serve say).
CREATE FUNCTION softguard.capture_sweep() RETURNS TABLE (rel regclass, done boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    one oid;
BEGIN
    FOR one IN SELECT DISTINCT s.rel FROM softguard._capture_state(ARRAY(
                   SELECT c.oid FROM pg_class c WHERE c.relkind IN ('r', 'p'))) s
                WHERE s.state <> 'ok' ORDER BY s.rel LOOP
        rel := one::regclass;
        BEGIN
            PERFORM softguard._install_capture_maintained(one);
            done := true;
        EXCEPTION WHEN insufficient_privilege THEN
            done := false;
        END;
        RETURN NEXT;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard.capture_sweep() FROM PUBLIC;

-- Last: record whether every event trigger exists (an owner role without the privilege
-- gets none; softguard init and serve then say what is not protected).
SELECT softguard._settings_event_triggers(count(*) = cardinality(softguard._event_trigger_names()))
  FROM pg_event_trigger e WHERE e.evtname = ANY (softguard._event_trigger_names());
