-- Modes held by the database (docs/decisions/0019-modes-for-agents.md): a session the
-- proxy registered with 'schema' (mode data or read-only) may not change the schema,
-- whatever text carries the DDL: a DO block, a function, EXECUTE. The proxy refuses the
-- DDL it can read first, with the rule's name; this is the backstop for the rest.

CREATE FUNCTION softguard._mode_guard() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    reg softguard.sessions := softguard._session(false);
BEGIN
    IF reg.pid IS NULL OR NOT ('schema' = ANY (reg.capture)) THEN
        RETURN;
    END IF;
    IF softguard._in_maintenance() THEN  -- softguard's own: e.g. switching UPDATE capture on
        RETURN;                          -- for this very registration (decision 0023)
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

SELECT softguard._create_event_trigger('softguard_mode_guard', $$ON ddl_command_start
    EXECUTE FUNCTION softguard._mode_guard()$$);
