-- softguard's event triggers, all ENABLE ALWAYS (session_replication_role = replica must
-- not switch them off):
-- * softguard_capture_sql_drop / softguard_capture_ddl_end: the probe (softguard._probe
--   arms them to report what a statement would drop) and the backstop that refuses any
--   DROP of the ledger or the quarantine from SQL softguard cannot see.
-- * softguard_capture_install: new tables get the capture triggers (40_capture.sql).
-- * softguard_capture_remote: new foreign tables (and tables a foreign table becomes a
--   partition or child of) get the remote guard (40_capture.sql, decision 0013).
-- The install ends by putting the capture triggers on every existing table, and the remote
-- guard on every existing foreign table.

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
        -- maintenance (purge) sets softguard.internal.
        IF current_setting('softguard.internal', true) IS DISTINCT FROM 'on' THEN
            SELECT d.object_identity INTO victim
              FROM pg_event_trigger_dropped_objects() d
             WHERE NOT d.is_temporary
               AND (d.schema_name IN ('softguard', 'softguard_quarantine')
                    OR d.schema_name ~ '^softguard_q[0-9]+_'
                    OR (d.object_type = 'schema'
                        AND (d.object_name IN ('softguard', 'softguard_quarantine')
                             OR d.object_name ~ '^softguard_q[0-9]+_')))
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
END $$;
REVOKE ALL ON FUNCTION softguard._capture_ddl_end() FROM PUBLIC;

CREATE EVENT TRIGGER softguard_capture_sql_drop ON sql_drop
    EXECUTE FUNCTION softguard._capture_sql_drop();
CREATE EVENT TRIGGER softguard_capture_ddl_end ON ddl_command_end
    EXECUTE FUNCTION softguard._capture_ddl_end();
-- ALWAYS: session_replication_role = replica must not switch them off.
ALTER EVENT TRIGGER softguard_capture_sql_drop ENABLE ALWAYS;
ALTER EVENT TRIGGER softguard_capture_ddl_end ENABLE ALWAYS;

-- Tables created later get the triggers too (CREATE TABLE, PARTITION OF, AS, SELECT INTO).
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

CREATE EVENT TRIGGER softguard_capture_install ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
    EXECUTE FUNCTION softguard._capture_install_ddl();
ALTER EVENT TRIGGER softguard_capture_install ENABLE ALWAYS;

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

CREATE EVENT TRIGGER softguard_capture_remote ON ddl_command_end
    WHEN TAG IN ('CREATE FOREIGN TABLE', 'IMPORT FOREIGN SCHEMA', 'ALTER TABLE',
                 'ALTER FOREIGN TABLE')
    EXECUTE FUNCTION softguard._capture_remote_ddl();
ALTER EVENT TRIGGER softguard_capture_remote ENABLE ALWAYS;

SELECT softguard._install_capture(c.oid) FROM pg_class c WHERE c.relkind IN ('r', 'p')
 ORDER BY c.oid;
SELECT softguard._install_remote_guard(c.oid) FROM pg_class c WHERE c.relkind = 'f'
 ORDER BY c.oid;
