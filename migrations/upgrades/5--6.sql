-- Version 6: <leave this line as is>

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', e.evtname);
    END LOOP;
END $$;

-- section: managed ---------------------------------------------------------------------
-- Managed PostgreSQL (docs/decisions/0025-managed-postgresql.md): an install records
-- whether it has its event triggers; an install made before had them (a superuser's).
ALTER TABLE softguard.settings ADD COLUMN event_triggers boolean NOT NULL DEFAULT true;

CREATE OR REPLACE FUNCTION softguard._create_event_trigger(name text, definition text) RETURNS boolean
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
CREATE OR REPLACE FUNCTION softguard._settings_event_triggers(present boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mine boolean := softguard._maintenance_begin();
BEGIN
    UPDATE softguard.settings SET event_triggers = present, updated_at = now();
    PERFORM softguard._maintenance_end(mine);
END $$;
REVOKE ALL ON FUNCTION softguard._settings_event_triggers(boolean) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._event_trigger_names() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['softguard_capture_ddl_end', 'softguard_capture_install',
                 'softguard_capture_sql_drop', 'softguard_capture_tamper_ddl',
                 'softguard_capture_tamper_drop', 'softguard_capture_inherit',
                 'softguard_capture_remote', 'softguard_capture_definitions',
                 'softguard_capture_definitions_drop', 'softguard_capture_sequences_start',
                 'softguard_capture_sequences_end', 'softguard_mode_guard']
$$;
GRANT EXECUTE ON FUNCTION softguard._event_trigger_names() TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._has_event_triggers() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT s.event_triggers FROM softguard.settings s), true)
$$;
REVOKE ALL ON FUNCTION softguard._has_event_triggers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._has_event_triggers() TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._machinery_check() RETURNS void
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
CREATE OR REPLACE FUNCTION softguard._require_event_triggers() RETURNS void
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
CREATE OR REPLACE FUNCTION softguard._probe(stmt text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    detail text;
BEGIN
    PERFORM softguard._require_event_triggers();  -- nothing fires the probe without them
    PERFORM pg_catalog.set_config('softguard.probe', 'on', true);
    BEGIN
        EXECUTE stmt;
    EXCEPTION
        WHEN SQLSTATE 'SGPRB' THEN
            GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
        WHEN OTHERS THEN
            PERFORM pg_catalog.set_config('softguard.probe', 'off', true);
            RAISE;
    END;
    PERFORM pg_catalog.set_config('softguard.probe', 'off', true);
    IF detail IS NULL THEN
        -- The statement ran for real without the capture triggers: abort everything.
        RAISE EXCEPTION USING ERRCODE = 'XX000',
            MESSAGE = 'softguard: capture trigger did not fire; refusing the DROP';
    END IF;
    PERFORM softguard._machinery_check();
    RETURN detail::jsonb;
END $$;
CREATE OR REPLACE FUNCTION softguard.capture_sweep() RETURNS TABLE (rel regclass, done boolean)
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
CREATE OR REPLACE FUNCTION softguard._can_set_replica() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
        RETURN true;
    END IF;
    IF current_setting('server_version_num')::integer < 150000 THEN
        RETURN false;  -- SET privileges on parameters came with PostgreSQL 15
    END IF;
    RETURN has_parameter_privilege('session_replication_role', 'SET');
END $$;
REVOKE ALL ON FUNCTION softguard._can_set_replica() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._can_set_replica() TO PUBLIC;
CREATE OR REPLACE FUNCTION softguard._replica(value text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF softguard._can_set_replica() THEN
        PERFORM set_config('session_replication_role', value, true);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._replica(text) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._undo_triggers_off(op bigint) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    saved jsonb := '[]';
    -- without replica mode (_replica), the triggers and rules of origin mode are off too
    origin boolean := NOT softguard._can_set_replica();
BEGIN
    FOR t IN WITH RECURSIVE tree(rel, depth) AS (
                 SELECT DISTINCT c.relid, 0 FROM softguard.captures c WHERE c.op_id = op
                 UNION
                 SELECT i.inhrelid, tr.depth + 1 FROM pg_inherits i JOIN tree tr ON i.inhparent = tr.rel
                  WHERE tr.depth < 100)
             SELECT 'TRIGGER' AS kind, g.tgrelid AS rel, g.tgname::text AS name,
                    g.tgenabled::text AS state, min(tree.depth) AS depth
               FROM pg_trigger g JOIN tree ON tree.rel = g.tgrelid
              WHERE NOT g.tgisinternal AND (g.tgenabled IN ('A', 'R') OR (g.tgenabled = 'O' AND origin))
                AND g.tgfoid NOT IN (SELECT p.oid FROM pg_proc p
                                      WHERE p.pronamespace = 'softguard'::regnamespace)
              GROUP BY 1, 2, 3, 4
             UNION ALL
             SELECT 'RULE', w.ev_class, w.rulename::text, w.ev_enabled::text, min(tree.depth)
               FROM pg_rewrite w JOIN tree ON tree.rel = w.ev_class
              WHERE (w.ev_enabled IN ('A', 'R') OR (w.ev_enabled = 'O' AND origin))
                AND w.rulename <> '_RETURN'
              GROUP BY 1, 2, 3, 4
             ORDER BY 5, 2, 3 LOOP
        EXECUTE format('ALTER TABLE %s DISABLE %s %I', t.rel::regclass, t.kind, t.name);
        saved := saved || jsonb_build_array(jsonb_build_object(
            'kind', t.kind, 'rel', t.rel, 'name', t.name, 'state', t.state));
    END LOOP;
    RETURN saved;
END $$;
CREATE OR REPLACE FUNCTION softguard._undo_triggers_back(saved jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t jsonb;
BEGIN
    FOR t IN SELECT x FROM jsonb_array_elements(saved) WITH ORDINALITY AS s(x, i) ORDER BY s.i LOOP
        EXECUTE format('ALTER TABLE %s ENABLE %s %s %I', (t->>'rel')::oid::regclass,
                       CASE t->>'state' WHEN 'A' THEN 'ALWAYS' WHEN 'R' THEN 'REPLICA' ELSE '' END,
                       t->>'kind', t->>'name');
    END LOOP;
END $$;
CREATE OR REPLACE FUNCTION softguard._undo_rows(op bigint, on_conflict text) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines softguard.undo_step[] := '{}';
    rest softguard.undo_step[];
    c softguard.captures;
    saved_srr text := current_setting('session_replication_role');
    done bigint;
    quiet jsonb;
BEGIN
    PERFORM FROM softguard.operations WHERE id = op FOR UPDATE;
    quiet := softguard._undo_triggers_off(op);
    FOR c IN SELECT * FROM softguard.captures
              WHERE op_id = op AND event = 'soft_delete' AND n_rows > 0 ORDER BY id LOOP
        PERFORM softguard._need_table(op, c.relid, c.table_identity);
        IF c.info ? 'purging' THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('cannot undo operation %s: purge began hard-deleting its rows'
                                 ' of %s at %s', op, c.table_identity, c.info->>'purging'),
                HINT = 'Run softguard purge again to finish it.';
        END IF;
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE %s t SET %I = s.sg_old_mark%s FROM (%s) s WHERE %s',
                       c.relid::regclass, c.info->>'column',
                       CASE WHEN c.info->>'by_column' IS NULL THEN ''
                            ELSE format(', %I = s.sg_old_by', c.info->>'by_column') END,
                       softguard._sd_source(c), softguard._sd_match(c));
        GET DIAGNOSTICS done = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
        lines := lines || softguard._step(op, 'cleared', c.relid::regclass::text,
                             format('cleared the soft-delete mark (%I) of %s rows of %s%s',
                                 c.info->>'column', done, c.relid::regclass,
                                 CASE WHEN done < c.n_rows THEN format(
                                     ' (%s left alone: deleted, or marked again, since)',
                                     c.n_rows - done) ELSE '' END), done);
    END LOOP;
    rest := softguard._undo_captures(op, on_conflict);
    PERFORM softguard._undo_triggers_back(quiet);
    IF cardinality(lines) > 0 THEN
        rest := ARRAY(SELECT r FROM unnest(rest) r WHERE r.action <> 'nothing');
    END IF;
    RETURN lines || rest;
END $$;
CREATE OR REPLACE FUNCTION softguard._undo_captures(op bigint, on_conflict text) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    lines softguard.undo_step[] := '{}';
    saved_srr text := current_setting('session_replication_role');
    rel oid;
    g record;
    cap softguard.captures;
    sq record;
    cols text[];
    ids bigint[];
    rtype text;
    src text;
    key text[];
    total bigint;
    done bigint;
    bad text;
    nbad bigint;
    msg text;
    detail text;
    have_identity boolean;
BEGIN
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF on_conflict NOT IN ('fail', 'skip') THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = format('--on-conflict must be fail or skip, not %s', on_conflict);
    END IF;
    -- every table must be live (a later DROP may hold it)
    FOR g IN SELECT DISTINCT cp.relid, cp.table_identity FROM softguard.captures cp
              WHERE cp.op_id = op ORDER BY cp.relid LOOP
        PERFORM softguard._need_table(op, g.relid, g.table_identity);
    END LOOP;

    -- ALTER TABLE: the column first (rows of other captures may need it)
    FOR cap IN SELECT * FROM softguard.captures WHERE op_id = op AND event = 'column' LOOP
        lines := lines || softguard._undo_column(op, cap);
    END LOOP;

    PERFORM softguard._replica('replica');

    -- 1. rows removed (DELETE, TRUNCATE), parents first
    FOREACH rel IN ARRAY softguard._parents_first(ARRAY(
            SELECT DISTINCT relid FROM softguard.captures
             WHERE op_id = op AND event IN ('delete', 'truncate') AND n_rows > 0)) LOOP
        FOR g IN SELECT c.columns, array_agg(c.id ORDER BY c.id) AS ids, sum(c.n_rows) AS n,
                        min(c.id) AS first_id
                   FROM softguard.captures c
                  WHERE c.op_id = op AND c.relid = rel AND c.event IN ('delete', 'truncate')
                    AND c.n_rows > 0
                  GROUP BY c.columns ORDER BY min(c.id) LOOP
            rtype := softguard._row_type(g.columns, g.first_id::text);
            -- columns to insert: captured ones still in the table, not generated
            cols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                           WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                             AND a.attgenerated = ''
                             AND a.attname IN (SELECT x->>0 FROM jsonb_array_elements(g.columns) x)
                           ORDER BY a.attnum);
            -- OFFSET 0: the row text is parsed once, not once per column
            src := format('SELECT (q.x).* FROM (SELECT r."row"::%s AS x FROM softguard.captured_rows r'
                          ' WHERE r.capture_id = ANY (%L::bigint[]) OFFSET 0) q', rtype, g.ids);
            have_identity := EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = rel
                                      AND a.attidentity = 'a' AND a.attname = ANY (cols));
            IF on_conflict = 'skip' THEN
                EXECUTE format('INSERT INTO %s (%s) %s SELECT %s FROM (%s) s ON CONFLICT DO NOTHING',
                               rel::regclass,
                               (SELECT string_agg(format('%I', x), ', ') FROM unnest(cols) x),
                               CASE WHEN have_identity THEN 'OVERRIDING SYSTEM VALUE' ELSE '' END,
                               (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(cols) x),
                               src);
                GET DIAGNOSTICS done = ROW_COUNT;
            ELSE
                BEGIN
                    EXECUTE format('INSERT INTO %s (%s) %s SELECT %s FROM (%s) s',
                                   rel::regclass,
                                   (SELECT string_agg(format('%I', x), ', ') FROM unnest(cols) x),
                                   CASE WHEN have_identity THEN 'OVERRIDING SYSTEM VALUE' ELSE '' END,
                                   (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(cols) x),
                                   src);
                    GET DIAGNOSTICS done = ROW_COUNT;
                EXCEPTION WHEN unique_violation THEN
                    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
                    key := softguard._row_key(rel);
                    bad := NULL;
                    IF key IS NOT NULL THEN
                        EXECUTE format('SELECT count(*), string_agg(k, '', '') FILTER (WHERE n <= 5)'
                                       ' FROM (SELECT format(%L, %s) AS k, row_number() OVER () AS n'
                                       ' FROM (%s) s WHERE EXISTS (SELECT FROM %s t WHERE %s)) x',
                                       '(' || array_to_string(key, ', ') || ')=(' ||
                                           array_to_string(array_fill('%s'::text, ARRAY[cardinality(key)]), ', ') || ')',
                                       (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(key) x),
                                       src, rel::regclass,
                                       (SELECT string_agg(format('t.%I = s.%I', x, x), ' AND ')
                                          FROM unnest(key) x))
                          INTO nbad, bad;
                    END IF;
                    IF bad IS NULL OR nbad = 0 THEN
                        bad := coalesce(detail, 'a unique key');
                        nbad := NULL;
                    END IF;
                    RAISE EXCEPTION USING ERRCODE = '23505',
                        MESSAGE = format('cannot undo operation %s: %s of %s re-used since: %s%s',
                                         op, CASE WHEN nbad IS NULL THEN 'a key'
                                                  WHEN nbad = 1 THEN '1 key'
                                                  ELSE nbad || ' keys' END,
                                         rel::regclass, bad,
                                         CASE WHEN nbad > 5 THEN ', ...' ELSE '' END),
                        HINT = 'use --on-conflict skip';
                END;
            END IF;
            IF done < g.n AND on_conflict = 'fail' THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: only %s of its %s rows of %s'
                                     ' could be put back', op, done, g.n, rel::regclass);
            END IF;
            PERFORM softguard._check_fks(op, rel, src);
            lines := lines || softguard._step(op, 'restored', rel::regclass::text,
                                 format('restored %s rows into %s%s', done,
                                     rel::regclass,
                                     CASE WHEN done < g.n THEN format(' (%s skipped: key re-used since)',
                                                                      g.n - done) ELSE '' END), done);
        END LOOP;
    END LOOP;

    -- 2. rows changed (UPDATE, MERGE, SET NULL / SET DEFAULT of a DELETE): old values back,
    --    found by key; the first image of a row in the operation is its value before it.
    --    Tables where the operation changed keys, or without a key: _undo_changed.
    FOR rel IN SELECT c.relid FROM softguard.captures c
                WHERE c.op_id = op AND c.event = 'update' AND c.n_rows > 0 AND c.info ? 'key'
                GROUP BY c.relid ORDER BY min(c.id) LOOP
        lines := lines || softguard._undo_changed(op, rel, on_conflict);
    END LOOP;
    FOR g IN SELECT c.relid, c.columns, array_agg(c.id ORDER BY c.id) AS ids, min(c.id) AS first_id
               FROM softguard.captures c
              WHERE c.op_id = op AND c.event = 'update' AND c.n_rows > 0
                AND c.relid NOT IN (SELECT x.relid FROM softguard.captures x
                                     WHERE x.op_id = op AND x.event = 'update' AND x.info ? 'key')
              GROUP BY c.relid, c.columns ORDER BY min(c.id) LOOP
        key := softguard._row_key(g.relid);
        IF key IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('cannot undo operation %s: %s has no primary key to find the changed rows by',
                                 op, g.relid::regclass);
        END IF;
        rtype := softguard._row_type(g.columns, g.first_id::text);
        cols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = g.relid AND a.attnum > 0 AND NOT a.attisdropped
                         AND a.attgenerated = '' AND a.attidentity <> 'a'
                         AND a.attname IN (SELECT x->>0 FROM jsonb_array_elements(g.columns) x)
                       ORDER BY a.attnum);
        src := format('SELECT DISTINCT ON (%s) * FROM (SELECT (p.x).*, p.sg_cid FROM'
                      ' (SELECT r."row"::%s AS x, r.capture_id AS sg_cid FROM softguard.captured_rows r'
                      ' WHERE r.capture_id = ANY (%L::bigint[]) OFFSET 0) p) q ORDER BY %s, q.sg_cid',
                      (SELECT string_agg(format('q.%I', x), ', ') FROM unnest(key) x), rtype, g.ids,
                      (SELECT string_agg(format('q.%I', x), ', ') FROM unnest(key) x));
        EXECUTE format('SELECT count(*) FROM (%s) s', src) INTO total;
        EXECUTE format('UPDATE %s t SET (%s) = ROW(%s) FROM (%s) s WHERE %s',
                       g.relid::regclass,
                       (SELECT string_agg(format('%I', x), ', ') FROM unnest(cols) x),
                       (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(cols) x),
                       src,
                       (SELECT string_agg(format('t.%I = s.%I', x, x), ' AND ') FROM unnest(key) x));
        GET DIAGNOSTICS done = ROW_COUNT;
        PERFORM softguard._check_fks(op, g.relid, src);
        lines := lines || softguard._step(op, 'restored', g.relid::regclass::text,
                             format('restored old values of %s rows of %s%s', done,
                                 g.relid::regclass,
                                 CASE WHEN done < total THEN format(' (%s no longer exist)', total - done)
                                      ELSE '' END), done);
    END LOOP;

    -- 3. sequences restarted by TRUNCATE ... RESTART IDENTITY (never moved backwards)
    FOR cap IN SELECT * FROM softguard.captures WHERE op_id = op AND event = 'sequence' ORDER BY id LOOP
        CONTINUE WHEN NOT EXISTS (SELECT FROM pg_class WHERE oid = (cap.info->>'seq')::oid);
        EXECUTE format('SELECT last_value, is_called FROM %s', (cap.info->>'seq')::oid::regclass) INTO sq;
        IF sq.last_value < (cap.info->>'last_value')::bigint
           OR (sq.last_value = (cap.info->>'last_value')::bigint AND NOT sq.is_called
               AND (cap.info->>'is_called')::boolean) THEN
            PERFORM setval((cap.info->>'seq')::oid::regclass, (cap.info->>'last_value')::bigint,
                           (cap.info->>'is_called')::boolean);
            lines := lines || softguard._step(op, 'restored', (cap.info->>'seq')::oid::regclass::text,
                format('restored sequence %s to %s',
                       (cap.info->>'seq')::oid::regclass, cap.info->>'last_value'));
        END IF;
    END LOOP;

    PERFORM softguard._replica(saved_srr);

    PERFORM softguard._record_undo(o, CASE WHEN on_conflict = 'skip'
                                           THEN ' --on-conflict skip' ELSE '' END);
    IF cardinality(lines) = 0 THEN
        lines := ARRAY[softguard._step(op, 'nothing', '', 'nothing to restore')];
    END IF;
    RETURN lines;
END $$;
CREATE OR REPLACE FUNCTION softguard._undo_drop_column(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i jsonb := c.info;
    rel regclass := c.relid::regclass;
    rtype text;
    key text[] := ARRAY(SELECT jsonb_array_elements_text(c.info->'key'));
    x jsonb;
    n bigint;
    saved_srr text := current_setting('session_replication_role');
BEGIN
    IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = c.relid AND attname = i->>'name'
                AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION USING ERRCODE = '42701',
            MESSAGE = format('cannot undo operation %s: column %I of %s exists again (added after the DROP)',
                             op, i->>'name', rel);
    END IF;
    IF i->>'generated' IS NOT NULL THEN
        -- its values follow from the other columns (50_alter.sql kept none)
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s%s GENERATED ALWAYS AS (%s) %s', rel,
                       i->>'name', i->>'type',
                       CASE WHEN i->>'collation' IS NOT NULL THEN ' COLLATE ' || (i->>'collation') ELSE '' END,
                       i->>'default', i->>'generated');
    ELSE
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s%s', rel, i->>'name', i->>'type',
                       CASE WHEN i->>'collation' IS NOT NULL THEN ' COLLATE ' || (i->>'collation') ELSE '' END);
    END IF;
    n := 0;
    IF i->>'generated' IS NULL THEN
        rtype := softguard._row_type(c.columns, c.id::text);
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE %s t SET %I = s.sg_value FROM (SELECT (p.x).* FROM (SELECT r."row"::%s AS x'
                       ' FROM softguard.captured_rows r WHERE r.capture_id = %s OFFSET 0) p) s WHERE %s',
                       rel, i->>'name', rtype, c.id,
                       (SELECT string_agg(format('t.%I = s.%I', k, k), ' AND ') FROM unnest(key) k));
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
    END IF;
    IF i->>'default' IS NOT NULL AND i->>'generated' IS NULL THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', rel, i->>'name', i->>'default');
    END IF;
    IF (i->>'not_null')::boolean THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', rel, i->>'name');
    END IF;
    FOR x IN SELECT e FROM jsonb_array_elements(i->'constraints') e LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', rel, x->>'name', x->>'def');
        IF x->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON CONSTRAINT %I ON %s IS %L', x->>'name', rel, x->>'comment');
        END IF;
    END LOOP;
    FOR x IN SELECT e FROM jsonb_array_elements(i->'indexes') e LOOP
        EXECUTE x->>'def';
        IF x->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON INDEX %s IS %L',
                           format('%I.%I', (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = c.relid),
                                  x->>'name'), x->>'comment');
        END IF;
    END LOOP;
    IF i->>'comment' IS NOT NULL THEN
        EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', rel, i->>'name', i->>'comment');
    END IF;
    RETURN ARRAY[softguard._step(op, 're-added', format('%s.%I', rel, i->>'name'),
                                 format('re-added column %s.%I with %s values', rel, i->>'name', n), n)];
END $$;
CREATE OR REPLACE FUNCTION softguard._undo_type(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i jsonb := c.info;
    rel regclass := c.relid::regclass;
    col text := c.info->>'name';
    old_type text := c.info->>'type';
    key text[] := ARRAY(SELECT jsonb_array_elements_text(c.info->'key'));
    cn softguard.captures;
    a record;
    later bigint;
    later_stmt text;
    later_kind text;
    other text;
    rt_old text;
    rt_new text;
    tmp_name text := 'sg_type_undo_' || c.id;
    tmp text := format('pg_temp.%I', 'sg_type_undo_' || c.id);
    fn text := format('pg_temp.%I', 'sg_type_back_' || c.id);
    nbad bigint;
    bad text;
    n bigint;
    total bigint;
    unset_not_null boolean;
    x jsonb;
    saved_srr text := current_setting('session_replication_role');
BEGIN
    -- a later operation still active that dropped the column or changed its type again
    SELECT cp.op_id, o.statement, coalesce(cp.info->>'kind', 'drop')
      INTO later, later_stmt, later_kind
      FROM softguard.captures cp JOIN softguard.operations o ON o.id = cp.op_id
     WHERE cp.relid = c.relid AND cp.event = 'column' AND cp.info->>'name' = col
       AND coalesce(cp.info->>'kind', 'drop') IN ('drop', 'type') AND cp.op_id > op
       AND o.state = 'active'
     ORDER BY cp.op_id DESC LIMIT 1;
    IF later IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = format('cannot undo operation %s: column %s.%I was %s since, held by operation %s (%s)',
                             op, rel, col,
                             CASE later_kind WHEN 'drop' THEN 'dropped' ELSE 'changed again' END,
                             later, later_stmt),
            DETAIL = softguard._blocked_detail(later),
            HINT = format('Undo operation %s first, or use --cascade.', later);
    END IF;
    SELECT at.attnum, at.attnotnull, format_type(at.atttypid, at.atttypmod) AS typ,
           pg_get_expr(d.adbin, d.adrelid) AS def
      INTO a
      FROM pg_attribute at
      LEFT JOIN pg_attrdef d ON d.adrelid = at.attrelid AND d.adnum = at.attnum
     WHERE at.attrelid = c.relid AND at.attname = col AND at.attnum > 0 AND NOT at.attisdropped;
    IF NOT FOUND THEN
        SELECT at.attname INTO other FROM pg_attribute at
         WHERE at.attrelid = c.relid AND at.attnum = (i->>'attnum')::integer AND NOT at.attisdropped;
        IF other IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('cannot undo operation %s: column %s.%I was renamed to %I since',
                                 op, rel, col, other),
                HINT = format('Rename it back first (ALTER TABLE %s RENAME COLUMN %I TO %I).',
                              rel, other, col);
        END IF;
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: column %s.%I was dropped since', op, rel, col);
    END IF;
    IF a.typ IS DISTINCT FROM i->>'new_type' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: column %s.%I is of type %s now, not %s as the operation left it',
                             op, rel, col, a.typ, i->>'new_type');
    END IF;
    SELECT * INTO cn FROM softguard.captures WHERE id = (i->>'new_capture')::bigint;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: the values of %s.%I after the change were not kept',
                             op, rel, col);
    END IF;

    -- 1. the rows to restore: captured, and still holding the value the ALTER gave them
    --    (compared as text of the current type, read back in this session)
    rt_old := softguard._row_type(c.columns, c.id::text);
    rt_new := softguard._row_type(cn.columns, cn.id::text);
    EXECUTE format('DROP TABLE IF EXISTS %s', tmp);
    EXECUTE format('CREATE TEMP TABLE %I AS SELECT %s, o.sg_value'
                   ' FROM (SELECT (p.x).* FROM (SELECT r."row"::%s AS x FROM softguard.captured_rows r'
                   ' WHERE r.capture_id = %s OFFSET 0) p) o'
                   ' JOIN (SELECT (p.x).* FROM (SELECT r."row"::%s AS x FROM softguard.captured_rows r'
                   ' WHERE r.capture_id = %s OFFSET 0) p) w ON %s'
                   ' JOIN %s t ON %s'
                   ' WHERE t.%I::text IS NOT DISTINCT FROM w.sg_new::text',
                   tmp_name,
                   (SELECT string_agg(format('o.%I', k), ', ') FROM unnest(key) k),
                   rt_old, c.id, rt_new, cn.id,
                   (SELECT string_agg(format('w.%I = o.%I', k, k), ' AND ') FROM unnest(key) k),
                   rel,
                   (SELECT string_agg(format('t.%I = o.%I', k, k), ' AND ') FROM unnest(key) k),
                   col);

    -- 2. a per-row conversion back: explicit cast, else through text, else NULL
    EXECUTE format('DROP FUNCTION IF EXISTS %s(%s)', fn, a.typ);
    EXECUTE format('CREATE FUNCTION %s(v %s) RETURNS %s LANGUAGE plpgsql AS %L', fn, a.typ, old_type,
                   format('BEGIN RETURN v::%s; EXCEPTION WHEN OTHERS THEN BEGIN RETURN v::text::%s;'
                          ' EXCEPTION WHEN OTHERS THEN RETURN NULL; END; END', old_type, old_type));

    -- 3. rows added or changed since must convert back: a write made since is never lost
    EXECUTE format('SELECT count(*), string_agg(k, '', '') FILTER (WHERE n <= 5)'
                   ' FROM (SELECT format(%L, %s) AS k, row_number() OVER () AS n FROM %s t'
                   ' WHERE t.%I IS NOT NULL AND %s(t.%I) IS NULL'
                   ' AND NOT EXISTS (SELECT FROM %s s WHERE %s)) x',
                   '(' || array_to_string(key, ', ') || ')=(' ||
                       array_to_string(array_fill('%s'::text, ARRAY[cardinality(key)]), ', ') || ')',
                   (SELECT string_agg(format('t.%I', k), ', ') FROM unnest(key) k),
                   rel, col, fn, col, tmp,
                   (SELECT string_agg(format('s.%I = t.%I', k, k), ' AND ') FROM unnest(key) k))
      INTO nbad, bad;
    IF nbad > 0 THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: %s of %s added or changed since %s a value of %I'
                             ' that does not convert back to %s: %s%s',
                             op, CASE WHEN nbad = 1 THEN '1 row' ELSE nbad || ' rows' END, rel,
                             CASE WHEN nbad = 1 THEN 'holds' ELSE 'hold' END, col, old_type, bad,
                             CASE WHEN nbad > 5 THEN ', ...' ELSE '' END),
            HINT = 'Change or delete those rows, then undo again.';
    END IF;

    -- 4. the type back. Rows to restore may not convert (their captured value comes next):
    --    NOT NULL is lifted meanwhile (unless the column is in the primary key), the
    --    default dropped (it may not cast back).
    unset_not_null := a.attnotnull AND NOT EXISTS (
        SELECT FROM pg_index x WHERE x.indrelid = c.relid AND x.indisprimary AND a.attnum = ANY (x.indkey));
    IF unset_not_null THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP NOT NULL', rel, col);
    END IF;
    IF a.def IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I DROP DEFAULT', rel, col);
    END IF;
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s%s USING %s(%I)', rel, col, old_type,
                   CASE WHEN i->>'collation' IS NOT NULL THEN ' COLLATE ' || (i->>'collation') ELSE '' END,
                   fn, col);

    -- 5. the captured values back, by key (user triggers off, as for the other undos)
    PERFORM softguard._replica('replica');
    EXECUTE format('UPDATE %s t SET %I = s.sg_value FROM %s s WHERE %s', rel, col, tmp,
                   (SELECT string_agg(format('t.%I = s.%I', k, k), ' AND ') FROM unnest(key) k));
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM softguard._replica(saved_srr);
    IF unset_not_null THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', rel, col);
    END IF;
    IF i->>'default' IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', rel, col, i->>'default');
    END IF;
    -- 6. CHECK constraints on the column as they were written (the two conversions added casts)
    FOR x IN SELECT e FROM jsonb_array_elements(coalesce(i->'checks', '[]')) e LOOP
        CONTINUE WHEN NOT EXISTS (SELECT FROM pg_constraint co
                                   WHERE co.conrelid = c.relid AND co.conname = x->>'name'
                                     AND co.contype = 'c'
                                     AND pg_get_constraintdef(co.oid) IS DISTINCT FROM x->>'def');
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', rel, x->>'name');
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', rel, x->>'name', x->>'def');
        IF x->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON CONSTRAINT %I ON %s IS %L', x->>'name', rel, x->>'comment');
        END IF;
    END LOOP;
    EXECUTE format('SELECT count(*) FROM %s', rel) INTO total;
    EXECUTE format('DROP TABLE %s', tmp);
    EXECUTE format('DROP FUNCTION %s(%s)', fn, a.typ);
    RETURN ARRAY[softguard._step(op, 'restored', format('%s.%I', rel, col),
                 format('column %s.%I back to %s, %s values restored%s', rel, col,
                        old_type, n,
                        CASE WHEN total > n
                             THEN format(' (%s added or changed since: converted back)',
                                         CASE WHEN total - n = 1 THEN '1 row'
                                              ELSE (total - n) || ' rows' END)
                             ELSE '' END), n)];
END $$;
-- end section: managed -----------------------------------------------------------------

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
END $$;
