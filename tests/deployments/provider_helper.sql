-- A stand-in for a managed provider's event-trigger privilege (decision 0025), created by a
-- superuser: like Supabase's supautils, it creates an event trigger on behalf of the
-- privileged role. Only softguard's own event triggers, calling softguard's functions.
CREATE SCHEMA sg_provider;
CREATE FUNCTION sg_provider.create_event_trigger(name text, definition text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF name !~ '^softguard_[a-z_]+$'
       OR definition !~ 'EXECUTE FUNCTION softguard\._[a-z_]+\(\)$'
       OR position(';' IN definition) > 0 THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('sg_provider: not a softguard event trigger: %s', name);
    END IF;
    EXECUTE format('CREATE EVENT TRIGGER %I %s', name, definition);
    EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', name);
END $$;
REVOKE ALL ON FUNCTION sg_provider.create_event_trigger(text, text) FROM PUBLIC;
