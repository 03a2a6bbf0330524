-- The backstop: what a protected session destroys through SQL the proxy does not read (a DO
-- block, a function, a procedure, a trigger, dynamic SQL) is refused in the database (issue
-- 11; threat model G11; decision 0012).
--
-- Which sessions: those registered (05_sessions.sql) with the category - the proxy
-- registers 'drop', 'truncate' and 'alter' when the session's policy protects or denies
-- them. Their reversible forms never reach these checks: drop_op moves objects instead of
-- dropping them, truncate_op marks its TRUNCATE (softguard.truncate_op, honoured only for
-- its own open operation), alter_op captures every column its statement drops before it
-- runs it. Anything else that would destroy data is refused with 0A000, the whole
-- statement rolled back. Sessions that are not registered are not affected.

-- Refuse, naming what was about to be destroyed.
CREATE FUNCTION softguard._backstop_refuse(what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '0A000',
        MESSAGE = format('softguard: %s cannot be made reversible here', what),
        DETAIL = 'softguard keeps what a DROP, TRUNCATE or DROP COLUMN destroys only when the '
                 'statement comes through softguard on its own, not from a function, procedure, '
                 'trigger or DO block, nor as the cascade of a statement it does not rewrite.',
        HINT = 'Run the DROP, TRUNCATE or ALTER TABLE ... DROP COLUMN as its own statement.';
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_refuse(text) FROM PUBLIC;

-- sql_drop, outside the probe: objects a DROP by a protected session removed.
CREATE FUNCTION softguard._backstop_drop() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events text[] := (softguard._session(false)).capture;
    d record;
    stack text;
BEGIN
    IF events IS NULL OR NOT (events && ARRAY['drop', 'alter']) THEN
        RETURN;
    END IF;
    -- Members of a dropped extension go with it (no normal dependency): not data.
    FOR d IN SELECT * FROM pg_event_trigger_dropped_objects() o
              WHERE NOT o.is_temporary AND (o.original OR o.normal) LOOP
        IF d.object_type IN ('table', 'materialized view', 'schema', 'sequence', 'view',
                             'function', 'procedure', 'type', 'domain')
           AND 'drop' = ANY (events) THEN
            PERFORM softguard._backstop_refuse(format('DROP %s %s', upper(d.object_type),
                                                      d.object_identity));
        END IF;
        IF d.object_type = 'table column' AND 'alter' = ANY (events) THEN
            -- alter_op captured every column its statement drops before running it (it
            -- probes that very statement); a column dropped anywhere else is lost.
            GET DIAGNOSTICS stack = PG_CONTEXT;
            IF stack !~ '(^|\n)PL/pgSQL function softguard\.alter_op\(text,jsonb\) line [0-9]+ at EXECUTE' THEN
                PERFORM softguard._backstop_refuse(format('ALTER TABLE DROP COLUMN %s',
                                                          d.object_identity));
            END IF;
        END IF;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_drop() FROM PUBLIC;
-- The event trigger runs as the session's role; this only ever refuses.
GRANT EXECUTE ON FUNCTION softguard._backstop_drop() TO PUBLIC;

-- BEFORE TRUNCATE, outside truncate_op: a protected session's TRUNCATE would keep nothing.
CREATE FUNCTION softguard._backstop_truncate(rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF 'truncate' = ANY ((softguard._session(false)).capture) THEN
        PERFORM softguard._backstop_refuse(format('TRUNCATE %s', rel));
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_truncate(regclass) FROM PUBLIC;
