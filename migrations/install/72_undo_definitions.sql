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
CREATE FUNCTION softguard._undo_definitions(op bigint, rename_to text)
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
    PERFORM softguard._record_undo(o, '');
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_definitions(bigint, text) FROM PUBLIC;
