-- Version 9: see the sections below.
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

-- section: mine ------------------------------------------------------------------------
-- Marks compared as hashes (decision 0028, "Since then").
CREATE OR REPLACE FUNCTION softguard._marked(stmt text, ctx jsonb, mark text) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k bytea;
BEGIN
    SELECT s.key INTO k FROM softguard.session_keys s
     WHERE s.pid = pg_backend_pid() AND s.backend_start = softguard._backend_start();
    IF k IS NULL THEN
        RETURN NULL;
    END IF;
    -- compared as hashes: how long a wrong mark takes to refuse says nothing of the right one
    RETURN mark IS NOT NULL
           AND sha256(convert_to(mark, 'UTF8'))
               = sha256(convert_to(encode(softguard._hmac(k, convert_to(stmt, 'UTF8') || '\x00'::bytea
                                                         || convert_to(ctx::text, 'UTF8')), 'hex'),
                                   'UTF8'));
END $$;
-- end section: mine --------------------------------------------------------------------

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
