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
CREATE FUNCTION softguard._definition_of(p_classid oid, p_objid oid)
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
CREATE FUNCTION softguard._definition_keep(p_classid oid, p_objid oid)
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
CREATE FUNCTION softguard._definition_op(kind text, target text, objects jsonb, steps jsonb,
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
CREATE FUNCTION softguard._definitions_ddl() RETURNS event_trigger
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
        -- not softguard's capture triggers: _definition_of keeps none of them, and every
        -- ALTER TABLE of a protected table looked at its four (decision 0041)
        FOR dep IN SELECT 'pg_trigger'::regclass::oid AS classid, t.oid AS objid
                     FROM pg_trigger t
                    WHERE r.classid = 'pg_class'::regclass AND t.tgrelid = r.objid
                      AND NOT t.tgisinternal AND t.tgname NOT LIKE 'zz\_softguard\_%'
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
CREATE FUNCTION softguard._definitions_drop() RETURNS event_trigger
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
-- value and parameters, keyed by oid. The values are read a hundred sequences per query (a
-- UNION ALL of their relations, each locked as a SELECT of it locks it): every ALTER TABLE
-- of a protected session (the three of a DROP's move too) reads them all, and one query per
-- sequence, each opening its relation on its own, made a DROP TABLE through softguard in a
-- database with 300 identity columns cost ~200 ms (decision 0041).
CREATE FUNCTION softguard._sequence_states(identity_only boolean) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    params jsonb;           -- oid -> its parameters (pg_sequence)
    reads text[];           -- one SELECT of its relation per sequence, in oid order
    vals jsonb := '{}';     -- oid -> last_value, is_called
    done integer := 0;
    part jsonb;
BEGIN
    SELECT coalesce(pg_catalog.jsonb_object_agg(q.seqrelid::text, pg_catalog.jsonb_build_object(
               'type', pg_catalog.format_type(q.seqtypid, NULL), 'start', q.seqstart,
               'increment', q.seqincrement, 'max', q.seqmax, 'min', q.seqmin,
               'cache', q.seqcache, 'cycle', q.seqcycle)), '{}'),
           coalesce(pg_catalog.array_agg(pg_catalog.format(
               'SELECT %s::pg_catalog.oid AS seq, last_value, is_called FROM %s',
               q.seqrelid, q.seqrelid::pg_catalog.regclass) ORDER BY q.seqrelid), '{}')
      INTO params, reads
      FROM pg_catalog.pg_sequence q
      JOIN pg_catalog.pg_class c ON c.oid = q.seqrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relpersistence <> 't' AND n.nspname NOT LIKE 'softguard%'
       AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND (NOT identity_only
            OR EXISTS (SELECT FROM pg_catalog.pg_depend d
                        WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                          AND d.objid = q.seqrelid AND d.deptype = 'i'));
    -- a hundred per query: a UNION ALL of thousands would nest as deep in the parser
    WHILE done < pg_catalog.cardinality(reads) LOOP
        EXECUTE 'SELECT pg_catalog.jsonb_object_agg(r.seq::pg_catalog.text, '
                || 'pg_catalog.jsonb_build_object(''last_value'', r.last_value, '
                || '''is_called'', r.is_called)) FROM ('
                || pg_catalog.array_to_string(reads[done + 1 : done + 100], ' UNION ALL ')
                || ') r' INTO part;
        vals := vals || part;
        done := done + 100;
    END LOOP;
    RETURN (SELECT coalesce(pg_catalog.jsonb_object_agg(p.key, p.value || (vals -> p.key)), '{}')
              FROM pg_catalog.jsonb_each(params) p);
END $$;
REVOKE ALL ON FUNCTION softguard._sequence_states(boolean) FROM PUBLIC;

-- The same for the sequences `seqs` only, one lookup each: what _sequences_after compares
-- (decision 0041). One query per sequence by oid keeps one plan for the session, where
-- `= ANY (seqs)` was planned again at every call (its custom plan looked cheaper).
CREATE FUNCTION softguard._sequence_states_of(seqs oid[], identity_only boolean)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    one oid;
    s record;
    st record;
    out jsonb := '{}';
BEGIN
    FOREACH one IN ARRAY seqs LOOP
        SELECT q.seqrelid, q.seqtypid, q.seqstart, q.seqincrement, q.seqmax, q.seqmin,
               q.seqcache, q.seqcycle
          INTO s
          FROM pg_catalog.pg_sequence q
          JOIN pg_catalog.pg_class c ON c.oid = q.seqrelid
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE q.seqrelid = one
           AND c.relpersistence <> 't' AND n.nspname NOT LIKE 'softguard%'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND (NOT identity_only
                OR EXISTS (SELECT FROM pg_catalog.pg_depend d
                            WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                              AND d.objid = q.seqrelid AND d.deptype = 'i'));
        CONTINUE WHEN NOT FOUND;
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
REVOKE ALL ON FUNCTION softguard._sequence_states_of(oid[], boolean) FROM PUBLIC;

-- ddl_command_start of ALTER SEQUENCE (every sequence) and ALTER TABLE (identity columns'
-- sequences: ALTER COLUMN ... RESTART) in a protected session: keep the states for the end.
CREATE FUNCTION softguard._sequences_before() RETURNS event_trigger
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
CREATE FUNCTION softguard._sequences_after() RETURNS event_trigger
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
        -- the states now of the command's own sequences (those this loop visits), read
        -- once: not of every sequence again (decision 0041)
        now_ := coalesce(now_, softguard._sequence_states_of(ARRAY(
                    SELECT c.objid FROM pg_event_trigger_ddl_commands() c
                     WHERE TG_TAG = 'ALTER SEQUENCE' AND c.classid = 'pg_class'::regclass
                    UNION ALL
                    SELECT d.objid FROM pg_event_trigger_ddl_commands() c
                      JOIN pg_depend d ON d.refobjid = c.objid
                     WHERE TG_TAG = 'ALTER TABLE' AND c.classid = 'pg_class'::regclass
                       AND d.classid = 'pg_class'::regclass
                       AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'i'),
                    TG_TAG = 'ALTER TABLE'));
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
CREATE FUNCTION softguard._definitions_snapshot() RETURNS void
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
