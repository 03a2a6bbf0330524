-- Version 5: <leave this line as is>
DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', e.evtname);
    END LOOP;
END $$;

-- section: fidelity ------------------------------------------------
CREATE OR REPLACE FUNCTION softguard._lock_listed(list jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e jsonb;
    r record;
BEGIN
    FOR e IN SELECT x FROM jsonb_array_elements(list) x
             ORDER BY (x->>'classid')::oid, (x->>'objid')::oid LOOP
        PERFORM pg_advisory_xact_lock(((e->>'classid')::oid::bigint << 32)
                                      | (e->>'objid')::oid::bigint);
        IF (e->>'classid')::oid = 'pg_class'::regclass AND (e->>'objsubid')::int = 0 THEN
            SELECT n.nspname, c.relname, c.relkind INTO r
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = (e->>'objid')::oid;
            -- Not views: LOCK TABLE on a view locks (and needs rights on) every relation
            -- it reads, system catalogs included, which DROP VIEW never does. The advisory
            -- lock serialises softguard's own DROPs; the move itself locks the view.
            IF FOUND AND r.relkind IN ('r', 'p', 'f') THEN
                BEGIN
                    EXECUTE format('LOCK TABLE ONLY %I.%I IN ACCESS EXCLUSIVE MODE',
                                   r.nspname, r.relname);
                EXCEPTION WHEN undefined_table OR wrong_object_type THEN
                    NULL;
                END;
            END IF;
        END IF;
    END LOOP;
END $$;
-- end section: fidelity --------------------------------------------

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
END $$;
