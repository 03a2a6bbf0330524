-- Version 14 (section mappings, decision 0043): DROP SERVER ... CASCADE through softguard
-- drops the kept server's user mappings as a direct one does, so their users can be dropped;
-- each is recorded in softguard.kept_mappings (options there, never granted, forgotten at
-- undo or purge: trigger forget_mappings) by _keep_mappings (_quarantine's step 6), and
-- undo makes it again (_undo_mapping, restore step "user_mapping" in _undo_one).
-- Section keeper: _disown leaves a kept foreign server with its owner where softguard_keeper
-- may not use its wrapper and the ledger's owner is no superuser (the DROP failed, 42501).
--
-- Version 14 (section dropcost, decision 0041): a DROP through softguard and its undo do the
-- same work for less: helpers planned once per session (PL/pgSQL) or inlined, the probe
-- list read once (_listed), no reader walk without kept columns, one catalog walk at undo,
-- at ddl_command_end the states of the command's own sequences only (_sequence_states_of).
--
-- Version 14 (section capture1, decision 0042): the capture trigger returns at once for a
-- DELETE or UPDATE that removed or changed no row (no capture id, column list or ledger
-- statement). Undo: its check of the code writing rows would run (_foreign_code) is plpgsql
-- and skips its catalog walk where no function of another non-superuser role exists;
-- deleted and updated rows are read back through the table's own row type while its
-- columns are the captured ones (_capture_row_type, new; no CREATE TYPE);
-- _undo_triggers_off probes pg_proc per trigger; _parents_first returns one table as it is.
--
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

-- section: mappings -----------------------------------------------------------------

-- The user mappings a kept foreign server had (decision 0043): a DROP SERVER ... CASCADE
-- drops them as a direct one does, so that their users are free to go (DROP ROLE, DROP
-- OWNED BY); undo makes each again from its row here. The options can hold a remote
-- password, which pg_user_mappings shows only to the mapping's user and superusers (the
-- server's owner sees PUBLIC's only): so they are kept out of softguard.operations (which
-- `softguard grant --ops` lets a role read) in this table, which no grant ever reaches.
-- Only drop_op's _keep_mappings writes it (the ledger's owner); undo reads it as that
-- owner and prints no option; a row leaves with its operation's undo or purge (the
-- trigger below), never otherwise (guard_ledger: only maintenance removes or changes
-- rows), so that no password outlives the operation keeping it.
CREATE TABLE softguard.kept_mappings (
    op_id      bigint NOT NULL,       -- softguard.operations.id
    server     oid NOT NULL,          -- the kept server
    umuser     oid NOT NULL,          -- the mapping's role (0: PUBLIC), by oid only
    user_name  text NOT NULL,         -- its name at the DROP ('public': PUBLIC), for messages
    options    text[],                -- umoptions as they were
    PRIMARY KEY (op_id, server, umuser)
);
REVOKE ALL ON softguard.kept_mappings FROM PUBLIC;
COMMENT ON TABLE softguard.kept_mappings IS
    'user mappings of kept foreign servers, with their options (never granted to anyone)';
CREATE TRIGGER guard_ledger BEFORE DELETE OR UPDATE OR TRUNCATE ON softguard.kept_mappings
    FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_ledger();
ALTER TABLE softguard.kept_mappings ENABLE ALWAYS TRIGGER guard_ledger;

-- An operation undone or purged keeps no mapping's options: made again, or gone with the
-- server. Fires only on a change of state (undo, purge: maintenance, which the guard lets
-- delete).
CREATE OR REPLACE FUNCTION softguard._forget_mappings() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM softguard.kept_mappings WHERE op_id = NEW.id;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._forget_mappings() FROM PUBLIC;
CREATE TRIGGER forget_mappings AFTER UPDATE OF state ON softguard.operations
    FOR EACH ROW WHEN (OLD.state = 'active' AND NEW.state <> 'active')
    EXECUTE FUNCTION softguard._forget_mappings();
ALTER TABLE softguard.operations ENABLE ALWAYS TRIGGER forget_mappings;

CREATE OR REPLACE FUNCTION softguard._keep_mappings(op_id bigint, srv oid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m record;
    steps jsonb := '[]';
    is_super boolean := (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user);
BEGIN
    -- the view (pg_user_mapping is superuser-only); its options are NULL where hidden,
    -- which is told apart from "no options" by the view's own rule for who sees them
    FOR m IN SELECT um.umid, um.umuser, um.usename, um.umoptions, um.srvname, s.srvowner
               FROM pg_user_mappings um JOIN pg_foreign_server s ON s.oid = um.srvid
              WHERE um.srvid = srv ORDER BY um.umuser LOOP
        CONTINUE WHEN NOT pg_has_role(current_user, m.srvowner, 'MEMBER');
        CONTINUE WHEN m.umoptions IS NULL AND NOT (
            is_super
            OR (m.umuser = 0 AND pg_has_role(m.srvowner, 'USAGE'))
            OR (m.umuser <> 0 AND m.usename = current_user
                AND (pg_has_role(m.srvowner, 'USAGE') OR has_server_privilege(srv, 'USAGE'))));
        INSERT INTO softguard.kept_mappings (op_id, server, umuser, user_name, options)
        VALUES (op_id, srv, m.umuser, m.usename, m.umoptions);
        steps := steps || jsonb_build_array(jsonb_build_object(
            'step', 'user_mapping', 'server', srv, 'server_name', m.srvname,
            'user_oid', m.umuser, 'user', m.usename));
        EXECUTE format('DROP USER MAPPING FOR %s SERVER %I',
                       CASE WHEN m.umuser = 0 THEN 'PUBLIC' ELSE quote_ident(m.usename) END,
                       m.srvname);
    END LOOP;
    RETURN steps;
END $$;
REVOKE ALL ON FUNCTION softguard._keep_mappings(bigint, oid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._quarantine(list jsonb, stmt text, ctx jsonb, invoker text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    op_id bigint;
    n integer := 0;
    steps jsonb := '[]';
    r record;
    x record;
    own oid;
    going oid[];            -- listed relations leaving the live schema (moved or with a schema)
    dropped_schemas text[];
    moves jsonb := '[]';    -- the listed objects to move, in list order
    links jsonb := '[]';    -- links on live objects to record and drop
    cols jsonb := '[]';     -- columns of live tables it takes (a type's CASCADE): kept
    stubbed oid[] := '{}';  -- views reading such a column: moved before the columns go (3a)
    readers jsonb;          -- views and materialized views reading one (_column_readers)
    in_schema jsonb := '[]'; -- relations staying in a dropped schema (step 5)
    remade oid[] := '{}';   -- materialized views reading one: recorded, dropped, re-made (3a)
    kw text;
    qn text;
    acl jsonb;
    expires timestamptz;
    targets text;
    is_super boolean;
    held jsonb;             -- 'classid/objid/objsubid' -> the earlier operation holding it
    reg softguard.sessions := softguard._session(true);
    items jsonb;            -- softguard._list(list), read once (_listed)
BEGIN
    SELECT rolsuper INTO is_super FROM pg_roles WHERE rolname = session_user;
    IF NOT coalesce((SELECT pg_has_role(session_user, g.oid, 'MEMBER')
                       FROM pg_roles g WHERE g.rolname = invoker), false) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: role %s is not a role of this session', invoker);
    END IF;
    IF coalesce(ctx->>'action', 'DROP') !~ '^DROP( [A-Z]+)*$' THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: %s is not a DROP', ctx->>'action');
    END IF;

    -- 1. The list must be what a DROP by this session would remove.
    --    Every step reads the list's rows (_list) as they are now, before anything moves:
    --    read once, each query expands them (decision 0041).
    items := coalesce((SELECT jsonb_agg(to_jsonb(l) ORDER BY l.ord)
                         FROM softguard._list(list) l), '[]');
    FOR r IN SELECT * FROM softguard._listed(items) l WHERE l.original LOOP
        own := softguard._owner(r.classid, r.objid);
        IF own IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('softguard cannot keep %s %s', r.object_type, r.object_identity);
        END IF;
        IF NOT is_super AND NOT pg_has_role(session_user, own, 'MEMBER') THEN
            RAISE EXCEPTION USING ERRCODE = '42501',
                MESSAGE = format('must be owner of %s %s', r.object_type, r.object_identity);
        END IF;
    END LOOP;
    IF EXISTS (
        SELECT FROM softguard._listed(items) l
         WHERE NOT l.original
           AND NOT EXISTS (
               SELECT FROM pg_depend d
                WHERE d.classid = l.classid AND d.objid = l.objid
                  AND (d.refclassid, d.refobjid) IN (
                      SELECT (e->>'classid')::oid, (e->>'objid')::oid
                        FROM jsonb_array_elements(list) e))
           AND NOT EXISTS (   -- e.g. a view: its listed _RETURN rule depends on the table
               SELECT FROM pg_depend d
                WHERE d.refclassid = l.classid AND d.refobjid = l.objid AND d.deptype = 'i'
                  AND (d.classid, d.objid) IN (
                      SELECT (e->>'classid')::oid, (e->>'objid')::oid
                        FROM jsonb_array_elements(list) e))) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'softguard: the object list does not match what the statement drops';
    END IF;

    expires := now() + softguard._retention(reg, (ctx->>'retention_seconds')::integer);
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, restore)
    VALUES (expires, session_user, invoker, current_setting('application_name', true),
            softguard._client_addr(reg), stmt,
            coalesce(ctx->>'action', 'DROP'), '[]', '[]')
    RETURNING id INTO op_id;

    SELECT coalesce(jsonb_object_agg(format('%s/%s/%s', l.classid, l.objid, l.objsubid),
                                     softguard._holder(l.classid, l.objid, l.objsubid)), '{}')
      INTO held
      FROM softguard._listed(items) l
     WHERE coalesce(softguard._is_quarantine_schema(l.home), false);
    SELECT coalesce(array_agg(l.object_name), '{}') INTO dropped_schemas
      FROM softguard._listed(items) l WHERE l.object_type = 'schema';
    SELECT coalesce(array_agg(l.objid), '{}') INTO going
      FROM softguard._listed(items) l
     WHERE l.classid = 'pg_class'::regclass AND l.objsubid = 0
       AND NOT coalesce(softguard._is_quarantine_schema(l.home), false);

    -- 1b. Publications (decision 0038): what goes leaves them as after a direct DROP.
    --     First in the plan, so that undo adds the memberships back last, with every
    --     table, column and schema in place again. Those of a kept column: _keep_column.
    steps := steps || softguard._publications_step(going, ARRAY(
        SELECT l.objid FROM softguard._listed(items) l
         WHERE l.object_type = 'schema'
           AND NOT coalesce(softguard._is_quarantine_schema(l.home), false)));

    -- 2. Classify: what moves, what is a link to record and drop, what cannot be kept.
    FOR r IN SELECT * FROM softguard._listed(items) l ORDER BY l.ord LOOP
        CONTINUE WHEN coalesce(softguard._is_quarantine_schema(r.home), false);  -- held already
        CONTINUE WHEN r.object_type = 'schema';
        IF r.home = ANY (dropped_schemas) THEN                 -- stays in its renamed schema
            IF r.classid = 'pg_class'::regclass AND r.objsubid = 0 THEN
                in_schema := in_schema || jsonb_build_array(to_jsonb(r));  -- unless it reads
            END IF;                                                        -- a kept column
            CONTINUE;
        END IF;
        -- a column goes with its listed table or view (`owned` would also count a
        -- partition's column, whose table depends on its listed parent's)
        CONTINUE WHEN r.objsubid <> 0
                  AND EXISTS (SELECT FROM softguard._listed(items) t
                               WHERE t.classid = r.classid AND t.objid = r.objid
                                 AND t.objsubid = 0);
        IF r.objsubid <> 0 AND r.object_type <> 'table column' THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',   -- e.g. a composite type's attribute
                MESSAGE = format('softguard cannot keep %s %s (dropped by this statement)',
                                 r.object_type, r.object_identity),
                HINT = 'Run the statement without softguard if losing it is intended.';
        END IF;
        IF r.object_type = 'table column' THEN
            -- a column of a live table (DROP TYPE/DOMAIN ... CASCADE): kept as ALTER TABLE
            -- ... DROP COLUMN keeps it, step 3b (decision 0029)
            IF NOT softguard._protected_table(r.objid) THEN
                RAISE EXCEPTION USING ERRCODE = '0A000',
                    MESSAGE = format('softguard cannot keep column %s (dropped by this statement)',
                                     r.object_identity),
                    HINT = 'Drop the column with ALTER TABLE first, or run the statement without softguard.';
            END IF;
            cols := cols || jsonb_build_array(to_jsonb(r));
            CONTINUE;
        END IF;
        IF r.classid = 'pg_class'::regclass THEN
            SELECT c.relkind INTO x FROM pg_class c WHERE c.oid = r.objid;
            IF x.relkind IN ('r', 'p', 'f', 'v', 'm') THEN
                moves := moves || jsonb_build_array(to_jsonb(r));  -- partitions move one by one
                CONTINUE;
            END IF;
        END IF;
        -- a membership in a publication: left with its table or schema (1b), or with
        -- the kept column its column list or row filter uses (_keep_column, 3b)
        CONTINUE WHEN r.object_type IN ('publication relation', 'publication namespace')
                  AND (EXISTS (SELECT FROM jsonb_array_elements(steps) st,
                                    jsonb_array_elements((st->'tables') || (st->'schemas')) m
                                WHERE st->>'step' = 'publications'
                                  AND (m->>'member')::oid = r.objid)
                       OR EXISTS (SELECT FROM pg_publication_rel pr
                                    JOIN softguard._listed(items) k ON k.objid = pr.prrelid
                                   WHERE pr.oid = r.objid AND k.object_type = 'table column'));
        CONTINUE WHEN r.owned;                                   -- goes with its owner
        -- a user mapping goes with its server, kept by a rename (_move): recorded and
        -- dropped (_keep_mappings, step 6), or left on it when it cannot be (decision 0043)
        CONTINUE WHEN r.object_type = 'user mapping'
                  -- (the view: pg_user_mapping is superuser-only, the ledger owner may not be)
                  AND EXISTS (SELECT FROM pg_user_mappings um
                                JOIN softguard._listed(items) sv
                                  ON sv.classid = 'pg_foreign_server'::regclass
                                 AND sv.objid = um.srvid
                               WHERE um.umid = r.objid);
        CASE
            WHEN r.object_type IN ('sequence', 'function', 'procedure', 'aggregate', 'type',
                                   'domain', 'collation', 'text search configuration',
                                   'text search dictionary', 'operator',
                                   'operator family', 'server', 'language') THEN
                moves := moves || jsonb_build_array(to_jsonb(r));
            WHEN r.object_type IN ('index', 'table constraint', 'trigger', 'default value',
                                   'policy', 'rule') THEN
                links := links || jsonb_build_array(to_jsonb(r));
            ELSE
                RAISE EXCEPTION USING ERRCODE = '0A000',
                    MESSAGE = format('softguard cannot keep %s %s (dropped by this statement)',
                                     r.object_type, r.object_identity),
                    HINT = 'Run the statement without softguard if losing it is intended.';
        END CASE;
    END LOOP;

    -- What reads a kept column (decision 0029 and its "Since then"): views move into
    -- quarantine with their query set aside, materialized views are recorded and dropped
    -- (3a, decision 0035), also when they stood in a schema the statement drops (they
    -- then leave it for quarantine, or are re-made in it, instead of staying in it
    -- renamed); rules are links like any other (3). Any other rule reading one (a view an
    -- earlier operation holds) would still hold the column: not kept.
    readers := CASE WHEN cols = '[]' THEN '[]'   -- no kept column: nothing reads one
                    ELSE softguard._column_readers(cols, list) END;
    moves := moves || coalesce((SELECT jsonb_agg(e) FROM jsonb_array_elements(in_schema) e
                                 WHERE softguard._is_reader(readers, (e->>'objid')::oid, NULL)),
                         '[]');
    SELECT w.ev_class, w.rulename, k.object_identity INTO x
      FROM jsonb_to_recordset(cols) AS k(objid oid, objsubid integer, object_identity text)
      JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = k.objid
                      AND d.refobjsubid = k.objsubid AND d.classid = 'pg_rewrite'::regclass
      JOIN pg_rewrite w ON w.oid = d.objid
     WHERE NOT (w.rulename = '_RETURN' AND softguard._is_reader(readers, w.ev_class, NULL))
       AND NOT (w.rulename <> '_RETURN'
                AND EXISTS (SELECT FROM jsonb_to_recordset(links) AS l(classid oid, objid oid)
                             WHERE l.classid = 'pg_rewrite'::regclass AND l.objid = w.oid))
     ORDER BY 1, 2 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard cannot keep %s, which reads column %s (dropped by '
                             'this statement)', CASE WHEN x.rulename = '_RETURN'
                                 THEN (SELECT CASE c.relkind WHEN 'm' THEN 'materialized view '
                                              ELSE 'view ' END FROM pg_class c
                                        WHERE c.oid = x.ev_class) || x.ev_class::regclass::text
                                 ELSE format('rule %I on %s', x.rulename, x.ev_class::regclass) END,
                             x.object_identity),
            HINT = 'An earlier operation keeps it: undo or purge that one first, or run the '
                   'statement without softguard if losing it is intended.';
    END IF;
    -- 3. Links from live objects to dropped ones, as a real DROP removes them. Constraints
    --    first (a foreign key may need a listed unique index), indexes last. What goes
    --    with a kept column (its default, indexes, constraints) is kept with it (3b).
    FOR r IN SELECT e.* FROM jsonb_to_recordset(links) AS e(classid oid, objid oid,
                  object_type text, object_identity text, original boolean, ord integer)
             ORDER BY CASE e.object_type WHEN 'table constraint' THEN 0 WHEN 'index' THEN 2
                      ELSE 1 END, e.ord LOOP
        CONTINUE WHEN softguard._with_columns(r.classid, r.objid, cols);
        steps := steps || softguard._drop_link(r.classid, r.objid, r.object_identity, r.original);
    END LOOP;

    -- 3a. What reads a kept column, each before what it reads (so that undo gives back
    --     each after what it reads: a view's query needs the materialized views it reads
    --     re-made, a materialized view needs the views it reads back in place):
    --   - views (decision 0029, since then): moved into quarantine now, as step 6 moves
    --     the others, and their query set aside (_stub_view) so that the column can go;
    --     undo puts the query back once the columns are back. Views on them that the
    --     CASCADE takes move in step 6, their columns unchanged.
    --   - materialized views (decision 0035): PostgreSQL cannot replace their query, so
    --     the definition, storage, indexes, comments, owner and privileges are recorded
    --     and they are dropped; undo re-makes them after the columns, and refreshes those
    --     that were populated (as their owner, as REFRESH runs).
    FOR r IN SELECT e.classid, e.objid, e.original, v.relkind
               FROM jsonb_to_recordset(readers) AS v(oid oid, relkind "char", depth integer)
               JOIN jsonb_to_recordset(moves) AS e(classid oid, objid oid, original boolean,
                                                   ord integer)
                 ON e.classid = 'pg_class'::regclass AND e.objid = v.oid
              ORDER BY v.depth DESC, e.ord LOOP
        IF r.relkind = 'v' THEN
            n := n + 1;
            qn := r.objid::regclass::text;    -- its name before the move, for undo's messages
            steps := steps || softguard._move(op_id, n, r.classid, r.objid, r.original)
                           || softguard._without_deps(softguard._stub_view(r.objid, qn), readers)
                           || softguard._disown(r.classid, r.objid);
            stubbed := stubbed || r.objid;
            CONTINUE;
        END IF;
        steps := steps || softguard._remake_step(op_id, r.objid, readers);
        UPDATE softguard.operations o SET restore = steps WHERE o.id = op_id;  -- the backstop's mark
        BEGIN
            EXECUTE format('DROP MATERIALIZED VIEW %s', r.objid::regclass);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            -- something else uses it (a routine or a column of its row type): not kept yet
            GET STACKED DIAGNOSTICS qn = PG_EXCEPTION_DETAIL;
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('softguard cannot yet keep materialized view %s, which reads '
                                 'a column dropped by this statement: %s', r.objid::regclass, qn),
                HINT = 'Drop what uses it first (through softguard, which keeps it), then run '
                       'this statement again.';
        END;
        remade := remade || r.objid;
    END LOOP;

    -- 3b. Columns of live tables (decision 0029): locked, kept as alter_op keeps a
    --     dropped column (_keep_column: definition, values by key or row image), parents
    --     first, then dropped (a parent's DROP COLUMN takes its partitions' along).
    IF cols <> '[]' THEN
        FOR x IN SELECT DISTINCT k.objid FROM jsonb_to_recordset(cols) AS k(objid oid)
                  ORDER BY 1 LOOP
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', x.objid::regclass);
        END LOOP;
        FOR x IN SELECT k.objid AS rel, k.objsubid AS attnum FROM softguard._kept_order(cols) k LOOP
            PERFORM softguard._keep_column(op_id, x.rel, x.attnum,
                                           softguard._alter_changing(list, '[]', x.rel));
        END LOOP;
        -- foreign keys from kept columns first: one may reference a unique key of another
        -- kept column (the captures hold their definitions; undo adds them back last)
        FOR x IN SELECT DISTINCT co.conrelid, co.conname FROM pg_constraint co
                   JOIN softguard._kept_order(cols) k
                     ON co.conrelid = k.objid AND k.objsubid = ANY (co.conkey)
                  WHERE co.contype = 'f' AND co.conparentid = 0 ORDER BY 1, 2 LOOP
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', x.conrelid::regclass, x.conname);
        END LOOP;
        FOR x IN SELECT k.objid AS rel, k.objsubid AS attnum FROM softguard._kept_order(cols) k
                  ORDER BY k.drop_ord LOOP
            PERFORM softguard._drop_kept_column(x.rel, x.attnum);
        END LOOP;
        steps := steps || jsonb_build_array(jsonb_build_object(
            'step', 'drop_columns', 'columns',
            (SELECT jsonb_agg(k.object_identity) FROM softguard._kept_order(cols) k)));
    END IF;

    -- 4. Links from leaving relations to live ones: partition bound, inheritance, FKs.
    FOR x IN SELECT c.oid AS child, i.inhparent AS parent, c.relispartition,
                    pg_get_expr(c.relpartbound, c.oid) AS bound
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhrelid = ANY (going) AND NOT (i.inhparent = ANY (going))
                AND c.relkind IN ('r', 'p', 'f')
              ORDER BY i.inhrelid, i.inhseqno LOOP
        IF x.relispartition THEN
            steps := steps || jsonb_build_array(jsonb_build_object(
                'step', 'detach_partition', 'parent', x.parent,
                'parent_name', x.parent::regclass::text, 'child', x.child,
                'child_name', x.child::regclass::text, 'bound', x.bound));
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', x.parent::regclass,
                           x.child::regclass);
        ELSE
            -- NO INHERIT turns inherited columns and constraints into local ones: record
            -- which were inherited only, to put that back.
            steps := steps || jsonb_build_array(jsonb_build_object(
                'step', 'no_inherit', 'parent', x.parent,
                'parent_name', x.parent::regclass::text, 'child', x.child,
                'child_name', x.child::regclass::text,
                'inherited_columns', (SELECT coalesce(jsonb_agg(a.attname), '[]')
                    FROM pg_attribute a WHERE a.attrelid = x.child AND a.attnum > 0
                     AND NOT a.attisdropped AND NOT a.attislocal AND a.attinhcount = 1),
                'inherited_constraints', (SELECT coalesce(jsonb_agg(c.conname), '[]')
                    FROM pg_constraint c WHERE c.conrelid = x.child AND NOT c.conislocal
                     AND c.coninhcount = 1)));
            EXECUTE format('ALTER TABLE %s NO INHERIT %s', x.child::regclass, x.parent::regclass);
        END IF;
    END LOOP;
    FOR x IN SELECT c.oid FROM pg_constraint c
              WHERE c.contype = 'f' AND c.conrelid = ANY (going)
                AND NOT (c.confrelid = ANY (going)) AND c.conparentid = 0
              ORDER BY c.conrelid, c.conname LOOP
        steps := steps || softguard._drop_link('pg_constraint'::regclass, x.oid,
            (pg_identify_object('pg_constraint'::regclass, x.oid, 0)).identity);
    END LOOP;

    -- 5. Dropped schemas: rename, lock out everybody but the owner (privileges recorded).
    FOR r IN SELECT * FROM softguard._listed(items) l WHERE l.object_type = 'schema' ORDER BY l.ord LOOP
        n := n + 1;
        qn := softguard._qname(format('softguard_q%s_', op_id), r.object_name);
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
                   'privilege', a.privilege_type, 'grantable', a.is_grantable) ORDER BY a.o), '[]')
          INTO acl
          FROM pg_namespace s, LATERAL aclexplode(s.nspacl) WITH ORDINALITY AS a(grantor, grantee,
               privilege_type, is_grantable, o)
         WHERE s.oid = r.objid AND a.grantee <> s.nspowner;
        steps := steps || jsonb_build_array(jsonb_build_object(
            'step', 'rename_schema', 'oid', r.objid, 'name', r.object_name, 'qname', qn,
            'acl', acl, 'original', r.original));
        EXECUTE format('ALTER SCHEMA %I RENAME TO %I', r.object_name, qn);
        FOR x IN SELECT DISTINCT e->>'grantee' AS grantee FROM jsonb_array_elements(acl) e LOOP
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %s CASCADE', qn,
                           CASE WHEN x.grantee = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(x.grantee) END);
        END LOOP;
        -- the schema first (a non-superuser may give an object only to a role that may
        -- create in its schema), then what stays in it: the objects that own others (a
        -- table its indexes and sequences, a type its array) take those along; every
        -- other object with an owner, of whatever kind the catalogs hold
        steps := steps || softguard._disown('pg_namespace'::regclass, r.objid);
        FOR x IN SELECT 'pg_class'::regclass::oid AS cls, c.oid AS obj FROM pg_class c
                  WHERE c.relnamespace = r.objid AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                    AND NOT EXISTS (SELECT FROM pg_depend d  -- linked: with its table
                                     WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                       AND d.refclassid = 'pg_class'::regclass
                                       AND d.deptype IN ('a', 'i') AND c.relkind = 'S')
                 UNION ALL
                 SELECT 'pg_proc'::regclass::oid, p.oid FROM pg_proc p WHERE p.pronamespace = r.objid
                 UNION ALL
                 SELECT 'pg_type'::regclass::oid, t.oid FROM pg_type t
                  WHERE t.typnamespace = r.objid AND t.typtype IN ('b', 'c', 'd', 'e', 'r', 'm')
                 UNION ALL  -- statistics, operators, collations, text search objects, ...
                 SELECT o.classid, o.objid FROM softguard._schema_objects(r.objid) o
                 ORDER BY 1, 2 LOOP
            steps := steps || softguard._disown(x.cls, x.obj);
        END LOOP;
    END LOOP;

    -- 6. Move into softguard_quarantine under op<id>_<n>_<name>.
    FOR r IN SELECT e.* FROM jsonb_to_recordset(moves) AS e(classid oid, objid oid,
                  object_type text, object_identity text, original boolean, ord integer)
             ORDER BY e.ord LOOP
        CONTINUE WHEN r.classid = 'pg_class'::regclass
                  AND (r.objid = ANY (stubbed) OR r.objid = ANY (remade));      -- 3a
        IF r.classid = 'pg_class'::regclass THEN
            SELECT c.relkind, c.relname, c.relnamespace INTO x FROM pg_class c WHERE c.oid = r.objid;
            kw := CASE x.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                      WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END;
            IF x.relkind = 'S' THEN
                -- a sequence owned by a live table's column (DROP SEQUENCE ... CASCADE)
                FOR own IN SELECT d.refobjid FROM pg_depend d
                            WHERE d.classid = 'pg_class'::regclass AND d.objid = r.objid
                              AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a' LOOP
                    steps := steps || jsonb_build_array(jsonb_build_object(
                        'step', 'seq_owned_by', 'seq', r.objid, 'table', own,
                        'column', (SELECT a.attname FROM pg_depend d JOIN pg_attribute a
                                     ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                                    WHERE d.classid = 'pg_class'::regclass AND d.objid = r.objid
                                      AND d.refobjid = own AND d.deptype = 'a')));
                    EXECUTE format('ALTER SEQUENCE %s OWNED BY NONE', r.objid::regclass);
                END LOOP;
            END IF;
            -- Indexes, owned sequences, statistics go along; rename them so that the names
            -- are free in the live schema and unique in quarantine.
            FOR own, qn IN
                SELECT i.indexrelid, ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 WHERE i.indrelid = r.objid
                UNION ALL
                SELECT d.objid, sc.relname FROM pg_depend d JOIN pg_class sc ON sc.oid = d.objid
                 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                   AND d.refobjid = r.objid AND d.deptype IN ('a', 'i') AND sc.relkind = 'S'
                ORDER BY 1 LOOP
                n := n + 1;
                steps := steps || jsonb_build_array(jsonb_build_object(
                    'step', 'rename', 'class', 'relation', 'oid', own, 'name', qn,
                    'qname', softguard._qname(format('op%s_%s_', op_id, n), qn), 'parent', r.objid));
                EXECUTE format('ALTER INDEX %s RENAME TO %I', own::regclass,
                               softguard._qname(format('op%s_%s_', op_id, n), qn));
            END LOOP;
            FOR own, qn IN SELECT s.oid, s.stxname FROM pg_statistic_ext s
                            WHERE s.stxrelid = r.objid ORDER BY 1 LOOP
                n := n + 1;
                steps := steps || softguard._move(op_id, n, 'pg_statistic_ext'::regclass, own, false)
                               || softguard._disown('pg_statistic_ext'::regclass, own);
            END LOOP;
        END IF;
        IF r.classid = 'pg_type'::regclass THEN
            -- What PostgreSQL made with a range type does not follow it to another schema
            -- or name: its multirange and the constructor functions of both. Move them
            -- too, or re-creating the range in the live schema fails (42710, 42723).
            FOR x IN SELECT 'pg_type'::regclass::oid AS cls, rg.rngmultitypid AS obj
                       FROM pg_range rg WHERE rg.rngtypid = r.objid AND rg.rngmultitypid <> 0
                     UNION ALL
                     SELECT 'pg_proc'::regclass::oid, d.objid FROM pg_depend d
                      WHERE d.classid = 'pg_proc'::regclass AND d.deptype = 'i'
                        AND d.refclassid = 'pg_type'::regclass
                        AND d.refobjid IN (SELECT r.objid UNION ALL
                                           SELECT rg.rngmultitypid FROM pg_range rg
                                            WHERE rg.rngtypid = r.objid)
                     ORDER BY 1 DESC, 2 LOOP
                n := n + 1;
                steps := steps || softguard._move(op_id, n, x.cls, x.obj, false)
                               || softguard._disown(x.cls, x.obj);
            END LOOP;
        END IF;
        IF r.classid = 'pg_opfamily'::regclass THEN
            -- its operator classes go with it (and its operators and support functions,
            -- which are entries of the family): moved along, so that their names are free
            -- as after the DROP (decision 0036)
            FOR own IN SELECT c.oid FROM pg_opclass c WHERE c.opcfamily = r.objid ORDER BY 1 LOOP
                n := n + 1;
                steps := steps || softguard._move(op_id, n, 'pg_opclass'::regclass, own, false)
                               || softguard._disown('pg_opclass'::regclass, own);
            END LOOP;
        END IF;
        IF r.classid = 'pg_foreign_server'::regclass THEN
            -- its user mappings go as directly, recorded (decision 0043), before the rename
            steps := steps || softguard._keep_mappings(op_id, r.objid);
        END IF;
        n := n + 1;
        steps := steps || softguard._move(op_id, n, r.classid, r.objid, r.original)
                       || softguard._disown(r.classid, r.objid);
    END LOOP;

    -- 7. The operation: objects (with where each went), estimates, the plan.
    -- in the statement's order (PostgreSQL lists them in its deletion order)
    SELECT string_agg(l.object_identity, ', '
                      ORDER BY nullif(strpos(lower(stmt), lower(l.object_name)), 0) NULLS LAST,
                               l.ord) INTO targets
      FROM softguard._listed(items) l WHERE l.original;
    UPDATE softguard.operations o SET
        restore = steps,
        objects = (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'type', l.object_type, 'identity', l.object_identity,
                       'schema', l.schema_name, 'name', l.object_name,
                       'original', l.original, 'normal', l.normal,
                       'classid', l.classid, 'objid', l.objid, 'objsubid', l.objsubid,
                       'quarantined_as', CASE WHEN h.held_by IS NULL
                                                   AND NOT cols @> jsonb_build_array(jsonb_build_object(
                                                       'objid', l.objid, 'objsubid', l.objsubid)) THEN
                           (pg_identify_object(l.classid, l.objid, l.objsubid)).identity END,
                       'held_by', h.held_by) ORDER BY l.ord), '[]')
              FROM softguard._listed(items) l,
                   LATERAL (SELECT (held->>format('%s/%s/%s', l.classid, l.objid, l.objsubid))::bigint
                                   AS held_by) h),
        row_counts = jsonb_build_object('estimate', true, 'tables', (
            SELECT coalesce(jsonb_object_agg(l.object_identity,
                       CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END), '{}')
              FROM softguard._listed(items) l JOIN pg_class c ON c.oid = l.objid
             WHERE l.classid = 'pg_class'::regclass AND l.objsubid = 0
               AND c.relkind IN ('r', 'm')
               AND NOT held ? format('%s/%s/%s', l.classid, l.objid, l.objsubid)))
     WHERE o.id = op_id;

    RETURN softguard._op_notice(coalesce(ctx->>'action', 'DROP'), targets, op_id, expires);
END $$;

CREATE OR REPLACE FUNCTION softguard._undo_mapping(op bigint, s jsonb) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    srv oid := (s->>'server')::oid;
    who oid := (s->>'user_oid')::oid;
    srv_name name;
    role_sql text := 'PUBLIC';
    k softguard.kept_mappings;
BEGIN
    SELECT f.srvname INTO srv_name FROM pg_foreign_server f WHERE f.oid = srv;
    IF srv_name IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: server %s, whose user mapping for %s '
                             'it keeps, no longer exists', op, s->>'server_name', s->>'user');
    END IF;
    IF who <> 0 THEN
        SELECT quote_ident(r.rolname) INTO role_sql FROM pg_roles r WHERE r.oid = who;
        IF role_sql IS NULL THEN
            RETURN ARRAY[softguard._step(op, 'skipped', quote_ident(srv_name),
                format('user mapping for role %s on server %I not made again: the role no '
                       'longer exists', s->>'user', srv_name))];
        END IF;
    END IF;
    IF EXISTS (SELECT FROM pg_user_mappings um WHERE um.srvid = srv AND um.umuser = who) THEN
        RAISE EXCEPTION USING ERRCODE = '42710',
            MESSAGE = format('cannot undo operation %s: a user mapping for %s on server %I '
                             'exists again (made after the DROP)', op, role_sql, srv_name),
            -- made on the kept server (a superuser's doing: no other role may), whose
            -- mappings the quarantine's guard keeps from being dropped outside maintenance
            HINT = format('As a superuser, in a transaction marked as softguard''s maintenance '
                          '(docs/runbook.md, "Who may read the ledger and undo"): DROP USER '
                          'MAPPING FOR %s SERVER %I; then undo: the mapping is made again as '
                          'it was, with its options.', role_sql,
                          coalesce((SELECT x->>'qname' FROM softguard.operations o,
                                           jsonb_array_elements(o.restore) x
                                     WHERE o.id = op AND x->>'step' = 'move'
                                       AND (x->>'oid')::oid = srv LIMIT 1), srv_name));
    END IF;
    SELECT * INTO k FROM softguard.kept_mappings m
     WHERE m.op_id = op AND m.server = srv AND m.umuser = who;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: the record of its user mapping for %s '
                             'on server %I is missing', op, s->>'user', srv_name);
    END IF;
    -- umoptions are 'name=value' (the first '=' ends the name)
    EXECUTE format('CREATE USER MAPPING FOR %s SERVER %I%s', role_sql, srv_name,
                   (SELECT ' OPTIONS (' || string_agg(format('%I %L', split_part(o, '=', 1),
                                                             substr(o, strpos(o, '=') + 1)),
                                                      ', ' ORDER BY i) || ')'
                      FROM unnest(k.options) WITH ORDINALITY AS t(o, i)));
    RETURN ARRAY[softguard._step(op, 'restored', quote_ident(srv_name),
        format('made user mapping for %s on server %I again', role_sql, srv_name))];
END $$;
REVOKE ALL ON FUNCTION softguard._undo_mapping(bigint, jsonb) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._undo_one(op bigint, rename_to text) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    s jsonb;
    e jsonb;
    d jsonb;
    k record;
    target text;
    nsp_name text;
    nsp oid;
    lines softguard.undo_step[] := '{}';
    n_orig integer;
    renamed jsonb := '{}';   -- parent oid -> [old name, new name] when --rename-to renamed it
    ddl text;
    cur text;
    cap softguard.captures;
    quiet jsonb;
BEGIN
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('softguard: operation %s does not exist', op);
    END IF;
    IF o.kind = 'UNDO' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s is the record of an undo (of operation %s), not reversible',
                             op, o.undo_of);
    ELSIF o.state = 'undone' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s is already undone (at %s by %s)', op,
                             to_char(o.undone_at, 'YYYY-MM-DD HH24:MI:SS'), o.undone_by);
    ELSIF o.state = 'purged' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s was purged (at %s by %s): nothing is left to restore',
                             op, to_char(o.purged_at, 'YYYY-MM-DD HH24:MI:SS'), o.purged_by);
    END IF;
    IF rename_to IS NOT NULL THEN
        SELECT count(*) INTO n_orig FROM jsonb_array_elements(o.restore) x
         WHERE (x->>'original')::boolean
           AND x->>'step' IN ('move', 'rename_schema', 'drop_index');
        IF n_orig <> 1 THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('--rename-to needs an operation on a single object; operation %s has %s',
                                 op, n_orig);
        END IF;
    END IF;

    FOR s IN SELECT x FROM jsonb_array_elements(o.restore) WITH ORDINALITY AS t(x, i)
              ORDER BY t.i DESC LOOP
        CASE s->>'step'
        WHEN 'move' THEN
            k := softguard._kw((s->>'classid')::oid, (s->>'oid')::oid);
            IF s->>'class' IN ('server', 'language') THEN  -- in no schema: a rename only
                lines := lines || softguard._undo_rename_global(op, s, k.name, rename_to);
                CONTINUE;
            END IF;
            -- an operator is kept under its name in a schema of its own (_move)
            IF k.keyword IS NULL
               OR (s->>'class' = 'operator'
                   AND (k.name <> s->>'name'
                        OR k.nsp IS DISTINCT FROM to_regnamespace(quote_ident(s->>'qname'))))
               OR (s->>'class' <> 'operator'
                   AND (k.name <> s->>'qname' OR k.nsp <> 'softguard_quarantine'::regnamespace))
            THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s %s.%s is no longer where it was '
                                     'kept (%s)', op, lower(s->>'keyword'), s->>'schema',
                                     s->>'name', CASE WHEN s->>'class' = 'operator'
                                         THEN 'schema ' || (s->>'qname')
                                         ELSE 'softguard_quarantine.' || (s->>'qname') END);
            END IF;
            IF s->>'class' = 'operator' AND (s->>'original')::boolean
               AND rename_to IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = '0A000',
                    MESSAGE = format('cannot undo operation %s under another name: an operator '
                                     'cannot be renamed', op);
            END IF;
            nsp := (s->>'schema_oid')::oid;
            SELECT n.nspname INTO nsp_name FROM pg_namespace n WHERE n.oid = nsp;
            IF nsp_name IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: schema %s no longer exists',
                                     op, s->>'schema'),
                    HINT = format('CREATE SCHEMA %I first.', s->>'schema');
            END IF;
            PERFORM softguard._need_live(op, 'pg_namespace'::regclass, nsp,
                format('%s %s.%s', lower(s->>'keyword'), s->>'schema', s->>'name'));
            target := CASE WHEN (s->>'original')::boolean AND rename_to IS NOT NULL
                           THEN rename_to ELSE s->>'name' END;
            IF softguard._name_taken(s->>'class', nsp, target, (s->>'oid')::oid) THEN
                RAISE EXCEPTION USING ERRCODE = CASE s->>'class' WHEN 'routine' THEN '42723'
                        WHEN 'relation' THEN '42P07' ELSE '42710' END,
                    MESSAGE = format('cannot undo operation %s: %s %s already exists (created after the DROP)',
                                     op, lower(s->>'keyword'), format('%I.%I', nsp_name, target)),
                    HINT = CASE WHEN s->>'class' = 'operator'   -- no --rename-to for it
                                THEN 'drop the new operator first'
                                ELSE 'use --rename-to NEW_NAME' END;
            END IF;
            IF s->>'class' = 'operator' THEN
                EXECUTE format('ALTER OPERATOR %s SET SCHEMA %I', k.ident, nsp_name);
                EXECUTE format('DROP SCHEMA %I', s->>'qname');   -- empty now: it held only it
            ELSE
                EXECUTE format('ALTER %s %s RENAME TO %I', s->>'keyword', k.ident, target);
                k := softguard._kw((s->>'classid')::oid, (s->>'oid')::oid);
                EXECUTE format('ALTER %s %s SET SCHEMA %I', s->>'keyword', k.ident, nsp_name);
            END IF;
            IF target <> s->>'name' THEN
                renamed := renamed || jsonb_build_object(s->>'oid',
                                                         jsonb_build_array(s->>'name', target));
            END IF;
            cur := (softguard._kw((s->>'classid')::oid, (s->>'oid')::oid)).ident;
            lines := lines || softguard._step(op, 'restored', cur,
                                              format('restored %s %s', lower(s->>'keyword'), cur));
        WHEN 'rename' THEN
            SELECT c.relname, c.relnamespace, c.oid::regclass::text AS ident INTO k
              FROM pg_class c WHERE c.oid = (s->>'oid')::oid;
            IF NOT FOUND OR k.relname <> s->>'qname' THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s is no longer named %s',
                                     op, s->>'name', s->>'qname');
            END IF;
            target := s->>'name';
            IF renamed ? (s->>'parent')
               AND starts_with(target, renamed->(s->>'parent')->>0) THEN
                target := (renamed->(s->>'parent')->>1)
                          || substr(target, length(renamed->(s->>'parent')->>0) + 1);
            END IF;
            IF softguard._name_taken('relation', k.relnamespace, target, 0) THEN
                RAISE EXCEPTION USING ERRCODE = '42P07',
                    MESSAGE = format('cannot undo operation %s: relation %s already exists (created after the DROP)',
                                     op, format('%I.%I', k.relnamespace::regnamespace, target)),
                    HINT = 'use --rename-to NEW_NAME';
            END IF;
            EXECUTE format('ALTER INDEX %s RENAME TO %I', k.ident, target);
        WHEN 'rename_schema' THEN
            SELECT n.nspname INTO nsp_name FROM pg_namespace n WHERE n.oid = (s->>'oid')::oid;
            IF nsp_name IS DISTINCT FROM s->>'qname' THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: schema %s is no longer kept as %s',
                                     op, s->>'name', s->>'qname');
            END IF;
            target := CASE WHEN (s->>'original')::boolean AND rename_to IS NOT NULL
                           THEN rename_to ELSE s->>'name' END;
            IF EXISTS (SELECT FROM pg_namespace n WHERE n.nspname = target) THEN
                RAISE EXCEPTION USING ERRCODE = '42P06',
                    MESSAGE = format('cannot undo operation %s: schema %I already exists (created after the DROP)',
                                     op, target),
                    HINT = 'use --rename-to NEW_NAME';
            END IF;
            EXECUTE format('ALTER SCHEMA %I RENAME TO %I', nsp_name, target);
            FOR e IN SELECT x FROM jsonb_array_elements(s->'acl') x LOOP
                IF e->>'grantee' <> 'PUBLIC'
                   AND to_regrole(e->>'grantee') IS NULL THEN
                    lines := lines || softguard._step(op, 'skipped', quote_ident(target),
                        format('%s on schema %I not given back to role %s: it no longer exists',
                               e->>'privilege', target, e->>'grantee'));
                    CONTINUE;
                END IF;
                EXECUTE format('GRANT %s ON SCHEMA %I TO %s%s', e->>'privilege', target,
                               CASE WHEN e->>'grantee' = 'PUBLIC' THEN 'PUBLIC'
                                    ELSE quote_ident(e->>'grantee') END,
                               CASE WHEN (e->>'grantable')::boolean THEN ' WITH GRANT OPTION' ELSE '' END);
            END LOOP;
            lines := lines || softguard._step(op, 'restored', quote_ident(target),
                                              format('restored schema %I', target));
        WHEN 'owner' THEN
            lines := lines || softguard._undo_owner(op, s);
        WHEN 'user_mapping' THEN
            lines := lines || softguard._undo_mapping(op, s);   -- decision 0043
        WHEN 'publications' THEN
            -- the memberships what the DROP took had (decision 0038); last of all
            lines := lines || softguard._rejoin_publications(op, s->'tables', s->'schemas');
        WHEN 'seq_owned_by' THEN
            EXECUTE format('ALTER SEQUENCE %s OWNED BY %s.%I', (s->>'seq')::oid::regclass,
                           (s->>'table')::oid::regclass, s->>'column');
        WHEN 'no_inherit' THEN
            PERFORM softguard._need_live(op, 'pg_class'::regclass, (s->>'parent')::oid,
                                         'table ' || (s->>'child_name'));
            EXECUTE format('ALTER TABLE %s INHERIT %s', (s->>'child')::oid::regclass,
                           (s->>'parent')::oid::regclass);
            UPDATE pg_attribute SET attislocal = false
             WHERE attrelid = (s->>'child')::oid
               AND attname IN (SELECT jsonb_array_elements_text(s->'inherited_columns'));
            UPDATE pg_constraint SET conislocal = false
             WHERE conrelid = (s->>'child')::oid
               AND conname IN (SELECT jsonb_array_elements_text(s->'inherited_constraints'));
            lines := lines || softguard._step(op, 're-established', (s->>'child')::oid::regclass::text,
                format('re-established inheritance of %s from %s',
                       (s->>'child')::oid::regclass, (s->>'parent')::oid::regclass));
        WHEN 'drop_columns' THEN
            -- the columns a DROP ... CASCADE took (decision 0029), their type back already:
            -- re-added as the undo of ALTER TABLE ... DROP COLUMN re-adds them, parents first
            -- (their foreign keys last: one may reference another of these columns)
            quiet := softguard._undo_triggers_off(op);
            FOR cap IN SELECT * FROM softguard.captures c
                        WHERE c.op_id = op AND c.event = 'column' ORDER BY c.id LOOP
                PERFORM softguard._need_table(op, cap.relid, cap.table_identity);
                cap.info := jsonb_set(cap.info, '{constraints}', (
                    SELECT coalesce(jsonb_agg(x ORDER BY i), '[]')
                      FROM jsonb_array_elements(cap.info->'constraints') WITH ORDINALITY t(x, i)
                     WHERE x->>'def' NOT LIKE 'FOREIGN KEY %'));
                lines := lines || softguard._undo_column(op, cap);
            END LOOP;
            PERFORM softguard._undo_triggers_back(quiet);
            FOR k IN SELECT c.relid, x FROM softguard.captures c,
                            jsonb_array_elements(c.info->'constraints') WITH ORDINALITY t(x, i)
                      WHERE c.op_id = op AND c.event = 'column'
                        AND x->>'def' LIKE 'FOREIGN KEY %' ORDER BY c.id, t.i LOOP
                CONTINUE WHEN EXISTS (SELECT FROM pg_constraint co WHERE co.conrelid = k.relid
                                         AND co.conname = k.x->>'name');   -- via its parent
                EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', k.relid::regclass,
                               k.x->>'name', k.x->>'def');
                IF k.x->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON CONSTRAINT %I ON %s IS %L', k.x->>'name',
                                   k.relid::regclass, k.x->>'comment');
                END IF;
            END LOOP;
            -- the publications whose column list or row filter used them (decision 0038)
            lines := lines || softguard._rejoin_publications(op, softguard._column_publications(op),
                                                             '[]');
        WHEN 'view_query' THEN
            -- a view that read a column the DROP kept (decision 0029): its query and
            -- options back, the columns back already; the view is still in quarantine
            -- (moved back next), so this records no CREATE OR REPLACE VIEW operation
            FOR d IN SELECT x FROM jsonb_array_elements(s->'deps') x LOOP
                PERFORM softguard._need_live(op, (d->>'classid')::oid, (d->>'objid')::oid,
                                             'view ' || (s->>'view'), d->>'identity');
            END LOOP;
            EXECUTE format('CREATE OR REPLACE VIEW %s%s AS %s', (s->>'oid')::oid::regclass,
                           (SELECT ' WITH (' || string_agg(x, ', ' ORDER BY i) || ')'
                              FROM jsonb_array_elements_text(
                                       CASE jsonb_typeof(s->'options') WHEN 'array'
                                            THEN s->'options' ELSE '[]' END)
                                   WITH ORDINALITY AS t(x, i)),
                           s->>'def');
        WHEN 'remake_matview' THEN
            lines := lines || softguard._undo_remake(op, s);
        WHEN 'detach_partition' THEN
            PERFORM softguard._need_live(op, 'pg_class'::regclass, (s->>'parent')::oid,
                                         'partition ' || (s->>'child_name'));
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s %s', (s->>'parent')::oid::regclass,
                           (s->>'child')::oid::regclass, s->>'bound');
            lines := lines || softguard._step(op, 're-attached', (s->>'child')::oid::regclass::text,
                format('re-attached partition %s to %s',
                       (s->>'child')::oid::regclass, (s->>'parent')::oid::regclass));
        ELSE
            -- a recorded definition on a live table: its table and everything it uses must
            -- be live again
            PERFORM softguard._need_live(op, 'pg_class'::regclass, (s->>'table')::oid,
                                         s->>'identity', s->>'table_name');
            cur := (s->>'table')::oid::regclass::text;
            -- definitions that name their table (triggers, policies, rules, indexes)
            IF cur <> s->>'table_name' AND s->>'step' <> 'drop_constraint'
               AND s->>'step' <> 'drop_default' THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: table %s was renamed %s since',
                                     op, s->>'table_name', cur);
            END IF;
            FOR d IN SELECT x FROM jsonb_array_elements(s->'deps') x LOOP
                PERFORM softguard._need_live(op, (d->>'classid')::oid, (d->>'objid')::oid,
                                             s->>'identity', d->>'identity');
            END LOOP;
            CASE s->>'step'
            WHEN 'drop_constraint' THEN
                ddl := s->>'def';
                IF s->>'ref_table' IS NOT NULL
                   AND (s->>'ref_table')::oid::regclass::text <> s->>'ref_name' THEN
                    -- the referenced table came back under another name (--rename-to)
                    ddl := replace(ddl, ' REFERENCES ' || (s->>'ref_name') || '(',
                                   ' REFERENCES ' || (s->>'ref_table')::oid::regclass::text || '(');
                END IF;
                s := s || jsonb_build_object('def', ddl);
                IF (s->>'validated')::boolean AND s->>'contype' IN ('f', 'c')
                   AND NOT (s->>'partitioned')::boolean THEN
                    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID', cur,
                                   s->>'name', s->>'def');
                    EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', cur, s->>'name');
                ELSE
                    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', cur, s->>'name', s->>'def');
                END IF;
                IF s->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON CONSTRAINT %I ON %s IS %L', s->>'name', cur,
                                   s->>'comment');
                END IF;
                lines := lines || softguard._step(op, 're-added', format('%I on %s', s->>'name', cur),
                                                  format('re-added constraint %I on %s', s->>'name', cur));
            WHEN 'drop_trigger' THEN
                EXECUTE s->>'def';
                IF s->>'enabled' <> 'O' THEN
                    EXECUTE format('ALTER TABLE %s %s TRIGGER %I', cur,
                                   CASE s->>'enabled' WHEN 'D' THEN 'DISABLE'
                                        WHEN 'R' THEN 'ENABLE REPLICA' ELSE 'ENABLE ALWAYS' END,
                                   s->>'name');
                END IF;
                IF s->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON TRIGGER %I ON %s IS %L', s->>'name', cur,
                                   s->>'comment');
                END IF;
                lines := lines || softguard._step(op, 're-created', format('%I on %s', s->>'name', cur),
                                                  format('re-created trigger %I on %s', s->>'name', cur));
            WHEN 'drop_default' THEN
                EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', cur, s->>'name',
                               s->>'def');
                lines := lines || softguard._step(op, 're-set', format('%s.%I', cur, s->>'name'),
                                                  format('re-set default of %s.%I', cur, s->>'name'));
            WHEN 'drop_policy' THEN
                ddl := s->>'def';
                IF s ? 'roles' THEN
                    -- the roles it applied to that still exist (by oid, under their
                    -- names of now); none left: it stays dropped, as DROP OWNED BY of its
                    -- last role would have dropped it (recorded by ledger 11 and later)
                    SELECT string_agg(CASE WHEN t.rl->>'role' = 'PUBLIC' THEN 'PUBLIC'
                                           ELSE r.oid::regrole::text END, ', ' ORDER BY t.i)
                      INTO target
                      FROM jsonb_array_elements(s->'roles') WITH ORDINALITY AS t(rl, i)
                      LEFT JOIN pg_roles r ON r.oid = (t.rl->>'oid')::oid
                     WHERE t.rl->>'role' = 'PUBLIC' OR r.oid IS NOT NULL;
                    FOR e IN SELECT x FROM jsonb_array_elements(s->'roles') x
                              WHERE x->>'role' <> 'PUBLIC'
                                AND NOT EXISTS (SELECT FROM pg_roles r
                                                 WHERE r.oid = (x->>'oid')::oid) LOOP
                        lines := lines || softguard._step(op, 'skipped',
                            format('%I on %s', s->>'name', cur),
                            format('policy %I on %s not given back to role %s: it no longer exists',
                                   s->>'name', cur, e->>'role'));
                    END LOOP;
                    IF target IS NULL THEN
                        CONTINUE;
                    END IF;
                    ddl := format('%s TO %s%s', s->>'head', target, s->>'tail');
                END IF;
                EXECUTE ddl;
                IF s->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON POLICY %I ON %s IS %L', s->>'name', cur,
                                   s->>'comment');
                END IF;
                lines := lines || softguard._step(op, 're-created', format('%I on %s', s->>'name', cur),
                                                  format('re-created policy %I on %s', s->>'name', cur));
            WHEN 'drop_rule' THEN
                EXECUTE s->>'def';
                IF s->>'enabled' <> 'O' THEN
                    EXECUTE format('ALTER TABLE %s %s RULE %I', cur,
                                   CASE s->>'enabled' WHEN 'D' THEN 'DISABLE'
                                        WHEN 'R' THEN 'ENABLE REPLICA' ELSE 'ENABLE ALWAYS' END,
                                   s->>'name');
                END IF;
                IF s->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON RULE %I ON %s IS %L', s->>'name', cur,
                                   s->>'comment');
                END IF;
                lines := lines || softguard._step(op, 're-created', format('%I on %s', s->>'name', cur),
                                                  format('re-created rule %I on %s', s->>'name', cur));
            WHEN 'drop_index' THEN
                target := CASE WHEN (s->>'original')::boolean AND rename_to IS NOT NULL
                               THEN rename_to ELSE s->>'name' END;
                SELECT c.relnamespace INTO nsp FROM pg_class c WHERE c.oid = (s->>'table')::oid;
                IF softguard._name_taken('relation', nsp, target, 0) THEN
                    RAISE EXCEPTION USING ERRCODE = '42P07',
                        MESSAGE = format('cannot undo operation %s: relation %s already exists (created after the DROP)',
                                         op, format('%I.%I', nsp::regnamespace, target)),
                        HINT = 'use --rename-to NEW_NAME';
                END IF;
                ddl := s->>'def';
                IF target <> s->>'name' THEN
                    -- pg_get_indexdef: 'CREATE [UNIQUE ]INDEX <name> ON ...'
                    ddl := overlay(ddl PLACING quote_ident(target)
                                   FROM position(' INDEX ' IN ddl) + 7
                                   FOR length(quote_ident(s->>'name')));
                END IF;
                EXECUTE ddl;
                cur := format('%I.%I', nsp::regnamespace, target);
                IF s->>'comment' IS NOT NULL THEN
                    EXECUTE format('COMMENT ON INDEX %s IS %L', cur, s->>'comment');
                END IF;
                IF (s->>'clustered')::boolean THEN
                    EXECUTE format('ALTER TABLE %s CLUSTER ON %I', (s->>'table')::oid::regclass, target);
                END IF;
                IF (s->>'replident')::boolean THEN
                    EXECUTE format('ALTER TABLE %s REPLICA IDENTITY USING INDEX %I',
                                   (s->>'table')::oid::regclass, target);
                END IF;
                lines := lines || softguard._step(op, 're-created', cur, format('re-created index %s', cur));
            ELSE
                RAISE EXCEPTION USING ERRCODE = 'XX000',
                    MESSAGE = format('softguard: unknown restore step %s in operation %s',
                                     s->>'step', op);
            END CASE;
        END CASE;
    END LOOP;

    -- Everything restored must find what it uses live: a later operation may hold it. A
    -- relation's columns too (their type, collation: decision 0033), so that a live table
    -- never uses a kept object, which that operation's purge could then not drop; and
    -- what goes with an object (a table's constraints, indexes, rules, triggers, defaults;
    -- a constraint's index), which may use an operator, an operator class, a function
    -- (decision 0036).
    -- One walk for all of them (decision 0041), each step an index lookup (OFFSET 0 keeps
    -- each lookup its own plan: a generic plan joined pg_depend whole, ~1 ms per object).
    -- Each object used is checked once, for the first object (in their order) that uses
    -- it: the same check, and the same first refusal, as one walk per object.
    FOR k IN WITH RECURSIVE kept AS (
                 SELECT x, i FROM jsonb_array_elements(o.objects) WITH ORDINALITY AS t(x, i)
                  WHERE x->>'held_by' IS NULL AND x->>'quarantined_as' IS NOT NULL),
             part(i, classid, objid, sub, depth) AS (
                 SELECT kept.i, (kept.x->>'classid')::oid, (kept.x->>'objid')::oid,
                        (kept.x->>'objsubid')::integer, 0
                   FROM kept
                 UNION ALL
                 SELECT p.i, d.classid, d.objid, d.objsubid, p.depth + 1
                   FROM part p,
                        LATERAL (SELECT d.classid, d.objid, d.objsubid FROM pg_depend d
                                  WHERE d.refclassid = p.classid AND d.refobjid = p.objid
                                    AND (p.sub = 0 OR d.refobjsubid = p.sub)
                                    AND d.deptype IN ('a', 'i') OFFSET 0) d
                  WHERE p.depth < 2),
             used AS (
                 SELECT DISTINCT ON (dp.refclassid, dp.refobjid) p.i, dp.refclassid, dp.refobjid
                   FROM part p,
                        LATERAL (SELECT dp.refclassid, dp.refobjid FROM pg_depend dp
                                  WHERE dp.classid = p.classid AND dp.objid = p.objid
                                    AND (dp.objsubid = p.sub OR p.sub = 0)
                                    AND dp.deptype IN ('n', 'a') OFFSET 0) dp
                  ORDER BY dp.refclassid, dp.refobjid, p.i)
             SELECT used.refclassid, used.refobjid, kept.x->>'type' AS type,
                    kept.x->>'identity' AS identity
               FROM used JOIN kept ON kept.i = used.i
              ORDER BY used.i, used.refclassid, used.refobjid LOOP
        PERFORM softguard._need_live(op, k.refclassid, k.refobjid, k.type || ' ' || k.identity);
    END LOOP;

    -- The tables it gave back, and those it gave a foreign key back, carry the capture
    -- triggers their links now need (a foreign key ON DELETE SET NULL: the UPDATE one,
    -- decision 0023); undo's DDL runs as maintenance, which the tamper guard lets be.
    FOR k IN SELECT DISTINCT st.rel FROM softguard._capture_state(ARRAY(
                 SELECT (x->>'oid')::oid FROM jsonb_array_elements(o.restore) x
                  WHERE x->>'step' = 'move' AND x->>'class' = 'relation'
                 UNION
                 SELECT (x->>'table')::oid FROM jsonb_array_elements(o.restore) x
                  WHERE x->>'step' = 'drop_constraint' AND x->>'table' IS NOT NULL)) st
              WHERE st.state <> 'ok' LOOP
        PERFORM softguard._install_capture_maintained(k.rel);
    END LOOP;

    PERFORM softguard._record_undo(o, CASE WHEN rename_to IS NULL THEN ''
                                           ELSE ' --rename-to ' || rename_to END);
    RETURN lines;
END $$;
-- end section: mappings -------------------------------------------------------------

-- section: keeper ------------------------------------------------------------------

CREATE OR REPLACE FUNCTION softguard._disown(p_classid oid, p_objid oid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    own oid := coalesce(softguard._owner(p_classid, p_objid),
                        softguard._catalog_owner(p_classid, p_objid));
    keeper oid := to_regrole('softguard_keeper');
    keyword text;
    ident text;
    grant_kw text;
    acl jsonb;
    exact jsonb;            -- each ACL as it was ('' the object's, else a column's)
    grantees text;
    follows boolean;
    movable boolean;        -- the owner goes to softguard_keeper
    linked oid;
    ties jsonb;             -- policies' roles, default privileges (_untie)
    steps jsonb := '[]';
BEGIN
    IF p_classid = 'pg_namespace'::regclass THEN
        SELECT 'SCHEMA', quote_ident(n.nspname) INTO keyword, ident
          FROM pg_namespace n WHERE n.oid = p_objid;
    ELSE
        SELECT k.keyword, k.ident INTO keyword, ident FROM softguard._kw(p_classid, p_objid) k;
    END IF;
    IF keyword IS NULL THEN  -- an operator, a collation, ...: ALTER <its type> <identity>
        SELECT upper(i.type), i.identity INTO keyword, ident
          FROM pg_identify_object(p_classid, p_objid, 0) i;
    END IF;
    IF own IS NULL OR keeper IS NULL OR keyword IS NULL OR keyword = 'INDEX'
       OR NOT pg_has_role(current_user, own, 'MEMBER')
       -- an array type, a relation's row type, a multirange: privileges and owner follow
       -- the element type, the relation, the range
       OR (p_classid = 'pg_type'::regclass AND EXISTS (
               SELECT FROM pg_type t WHERE t.oid = p_objid
                  AND (t.typtype = 'm'
                       OR t.typelem <> 0 AND t.typsubscript = 'array_subscript_handler'::regproc
                       OR t.typrelid <> 0 AND (SELECT c.relkind FROM pg_class c
                                                WHERE c.oid = t.typrelid) <> 'c'))) THEN
        RETURN steps;
    END IF;
    -- a sequence linked to a table, a range's constructor: their owner follows (not a
    -- statistics object's, nor an operator class's, though they depend on a table or a
    -- family: ALTER TABLE / OPERATOR FAMILY ... OWNER leaves them to their owner)
    follows := (p_classid = 'pg_class'::regclass AND EXISTS (
                    SELECT FROM pg_depend d WHERE d.classid = p_classid AND d.objid = p_objid
                       AND d.deptype IN ('a', 'i') AND d.refclassid <> 'pg_type'::regclass))
               OR (p_classid = 'pg_proc'::regclass AND EXISTS (
                       SELECT FROM pg_depend d WHERE d.classid = p_classid AND d.objid = p_objid
                          AND d.deptype = 'i'));
    -- PostgreSQL lets a non-superuser give a foreign server only to a role that may use
    -- its wrapper: where softguard_keeper may not (a managed install), the kept server
    -- keeps its owner, tied to it until undo or purge (README limits), rather than the
    -- DROP failing where a direct one succeeds.
    movable := NOT follows AND own <> keeper
               AND (p_classid <> 'pg_foreign_server'::regclass
                    OR (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user)
                    OR has_foreign_data_wrapper_privilege(keeper, (
                           SELECT s.srvfdw FROM pg_foreign_server s WHERE s.oid = p_objid),
                           'USAGE'));
    grant_kw := CASE WHEN keyword IN ('TABLE', 'VIEW', 'MATERIALIZED VIEW', 'FOREIGN TABLE')
                     THEN 'TABLE'
                     WHEN keyword IN ('FUNCTION', 'PROCEDURE', 'AGGREGATE') THEN 'ROUTINE'
                     WHEN keyword = 'SERVER' THEN 'FOREIGN SERVER'
                     ELSE keyword END;
    -- every grant, PUBLIC's default ones included (a NULL ACL is the owner's and PUBLIC's
    -- defaults: EXECUTE on routines, USAGE on types)
    SELECT jsonb_object_agg(coalesce(g.col, ''), g.acl::text),
           coalesce(jsonb_agg(jsonb_build_object(
               'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
               'grantee_oid', a.grantee, 'privilege', a.privilege_type,
               'grantable', a.is_grantable, 'column', g.col)
               ORDER BY g.col NULLS FIRST, a.grantee, a.privilege_type)
               FILTER (WHERE a.grantee IS DISTINCT FROM own AND a.grantee IS NOT NULL), '[]')
      INTO exact, acl
      FROM softguard._acls(p_classid, p_objid) g
      LEFT JOIN LATERAL aclexplode(coalesce(g.acl, CASE WHEN g.col IS NULL
                                                THEN acldefault(g.kind, own) END)) a ON true;
    SELECT string_agg(DISTINCT CASE WHEN e->>'grantee' = 'PUBLIC' THEN 'PUBLIC'
                                    ELSE (e->>'grantee_oid')::oid::regrole::text END, ', ')
      INTO grantees FROM jsonb_array_elements(acl) e;
    IF grantees IS NOT NULL THEN  -- on a table also every column privilege of theirs
        EXECUTE format('REVOKE ALL ON %s %s FROM %s CASCADE', grant_kw, ident, grantees);
    END IF;
    IF movable THEN
        EXECUTE format('ALTER %s %s OWNER TO softguard_keeper', keyword, ident);
    END IF;
    ties := softguard._untie(p_classid, p_objid, ident);
    IF grantees IS NOT NULL OR movable OR ties <> '{}' THEN
        steps := jsonb_build_array(jsonb_build_object(
            'step', 'owner', 'classid', p_classid, 'oid', p_objid, 'keyword', keyword,
            'grant_keyword', grant_kw, 'identity', ident, 'owner', own::regrole::text,
            'owner_oid', own, 'owner_changed', movable, 'acl', acl,
            'exact', exact) || ties);
    END IF;
    IF p_classid = 'pg_class'::regclass THEN
        FOR linked IN SELECT d.objid FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
                       WHERE d.classid = 'pg_class'::regclass AND d.refobjid = p_objid
                         AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                         AND c.relkind = 'S' ORDER BY 1 LOOP
            steps := steps || softguard._disown('pg_class'::regclass, linked);
        END LOOP;
    END IF;
    -- a range's multirange: ALTER TYPE of the range gives it along only on some
    -- PostgreSQL versions (not 15); where it stayed with the owner, give it on its own
    FOR linked IN SELECT rg.rngmultitypid FROM pg_range rg
                    JOIN pg_type m ON m.oid = rg.rngmultitypid
                   WHERE p_classid = 'pg_type'::regclass AND rg.rngtypid = p_objid
                     AND m.typowner <> keeper AND m.typowner = own AND NOT follows LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO softguard_keeper', linked::regtype);
        steps := steps || jsonb_build_array(jsonb_build_object(
            'step', 'owner', 'classid', p_classid, 'oid', linked, 'keyword', 'TYPE',
            'grant_keyword', 'TYPE', 'identity', linked::regtype::text,
            'owner', own::regrole::text, 'owner_oid', own, 'owner_changed', true,
            'acl', '[]'::jsonb));
    END LOOP;
    RETURN steps;
END $$;
REVOKE ALL ON FUNCTION softguard._disown(oid, oid) FROM PUBLIC;

-- end section: keeper --------------------------------------------------------------

-- section: dropcost -------------------------------------------------------------------

CREATE OR REPLACE FUNCTION softguard._in_maintenance() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (SELECT FROM softguard.maintenance
                    WHERE txid = pg_current_xact_id_if_assigned());
END $$;

CREATE OR REPLACE FUNCTION softguard._is_quarantine_schema(nsp text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT nsp OPERATOR(pg_catalog.=) 'softguard_quarantine'
        OR nsp OPERATOR(pg_catalog.~) '^softguard_q[0-9]+_'
$$;

CREATE OR REPLACE FUNCTION softguard._owner(p_classid oid, p_objid oid) RETURNS oid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_classid = 'pg_class'::regclass THEN
        RETURN (SELECT relowner FROM pg_class WHERE oid = p_objid);
    ELSIF p_classid = 'pg_proc'::regclass THEN
        RETURN (SELECT proowner FROM pg_proc WHERE oid = p_objid);
    ELSIF p_classid = 'pg_type'::regclass THEN
        RETURN (SELECT typowner FROM pg_type WHERE oid = p_objid);
    ELSIF p_classid = 'pg_namespace'::regclass THEN
        RETURN (SELECT nspowner FROM pg_namespace WHERE oid = p_objid);
    ELSIF p_classid = 'pg_statistic_ext'::regclass THEN
        RETURN (SELECT stxowner FROM pg_statistic_ext WHERE oid = p_objid);
    ELSIF p_classid = 'pg_collation'::regclass THEN
        RETURN (SELECT collowner FROM pg_collation WHERE oid = p_objid);
    ELSIF p_classid = 'pg_ts_config'::regclass THEN
        RETURN (SELECT cfgowner FROM pg_ts_config WHERE oid = p_objid);
    ELSIF p_classid = 'pg_ts_dict'::regclass THEN
        RETURN (SELECT dictowner FROM pg_ts_dict WHERE oid = p_objid);
    ELSIF p_classid = 'pg_operator'::regclass THEN
        RETURN (SELECT oprowner FROM pg_operator WHERE oid = p_objid);
    ELSIF p_classid = 'pg_opfamily'::regclass THEN
        RETURN (SELECT opfowner FROM pg_opfamily WHERE oid = p_objid);
    ELSIF p_classid = 'pg_opclass'::regclass THEN
        RETURN (SELECT opcowner FROM pg_opclass WHERE oid = p_objid);
    ELSIF p_classid = 'pg_foreign_server'::regclass THEN
        RETURN (SELECT srvowner FROM pg_foreign_server WHERE oid = p_objid);
    ELSIF p_classid = 'pg_language'::regclass THEN
        RETURN (SELECT lanowner FROM pg_language WHERE oid = p_objid);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION softguard._protected_table(rel oid) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (
        SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = rel AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
           AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
           AND n.nspname NOT LIKE 'softguard%');
END $$;

CREATE OR REPLACE FUNCTION softguard._listed(items jsonb)
RETURNS TABLE (classid oid, objid oid, objsubid integer, original boolean, normal boolean,
               is_temporary boolean, object_type text, schema_name text, object_name text,
               object_identity text, ord integer, owned boolean, home text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT l.* FROM pg_catalog.jsonb_to_recordset(items) AS l(
        classid pg_catalog.oid, objid pg_catalog.oid, objsubid pg_catalog.int4,
        original pg_catalog.bool, normal pg_catalog.bool, is_temporary pg_catalog.bool,
        object_type pg_catalog.text, schema_name pg_catalog.text, object_name pg_catalog.text,
        object_identity pg_catalog.text, ord pg_catalog.int4, owned pg_catalog.bool,
        home pg_catalog.text)
$$;
REVOKE ALL ON FUNCTION softguard._listed(jsonb) FROM PUBLIC;



CREATE OR REPLACE FUNCTION softguard._acls(p_classid oid, p_objid oid)
RETURNS TABLE (col name, acl aclitem[], kind "char")
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_classid = 'pg_class'::regclass THEN
        RETURN QUERY
        SELECT NULL::name, c.relacl, CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char"
          FROM pg_class c WHERE c.oid = p_objid;
        RETURN QUERY
        SELECT t.attname, t.attacl, 'c'::"char" FROM pg_attribute t
         WHERE t.attrelid = p_objid AND t.attnum > 0 AND NOT t.attisdropped
           AND t.attacl IS NOT NULL;
    ELSIF p_classid = 'pg_proc'::regclass THEN
        RETURN QUERY SELECT NULL::name, p.proacl, 'f'::"char" FROM pg_proc p WHERE p.oid = p_objid;
    ELSIF p_classid = 'pg_type'::regclass THEN
        RETURN QUERY SELECT NULL::name, t.typacl, 'T'::"char" FROM pg_type t WHERE t.oid = p_objid;
    ELSIF p_classid = 'pg_namespace'::regclass THEN
        RETURN QUERY
        SELECT NULL::name, n.nspacl, 'n'::"char" FROM pg_namespace n WHERE n.oid = p_objid;
    ELSIF p_classid = 'pg_foreign_server'::regclass THEN
        RETURN QUERY
        SELECT NULL::name, s.srvacl, 'S'::"char" FROM pg_foreign_server s WHERE s.oid = p_objid;
    ELSIF p_classid = 'pg_language'::regclass THEN
        -- not an untrusted language's: only superusers use one, no GRANT there
        RETURN QUERY
        SELECT NULL::name, l.lanacl, 'l'::"char" FROM pg_language l
         WHERE l.oid = p_objid AND l.lanpltrusted;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION softguard._same_objects(a jsonb, b jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT array_agg(k ORDER BY k)
              FROM (SELECT x->>'classid' || '/' || (x->>'objid') || '/' || (x->>'objsubid') AS k
                      FROM jsonb_array_elements(a) x) s)
           IS NOT DISTINCT FROM
           (SELECT array_agg(k ORDER BY k)
              FROM (SELECT x->>'classid' || '/' || (x->>'objid') || '/' || (x->>'objsubid') AS k
                      FROM jsonb_array_elements(b) x) s);
END $$;

CREATE OR REPLACE FUNCTION softguard._definitions_ddl() RETURNS event_trigger
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

CREATE OR REPLACE FUNCTION softguard._sequence_states(identity_only boolean) RETURNS jsonb
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

CREATE OR REPLACE FUNCTION softguard._sequence_states_of(seqs oid[], identity_only boolean)
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

CREATE OR REPLACE FUNCTION softguard._sequences_after() RETURNS event_trigger
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

CREATE OR REPLACE FUNCTION softguard._has_event_triggers() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN coalesce((SELECT s.event_triggers FROM softguard.settings s), true);
END $$;

CREATE OR REPLACE FUNCTION softguard._name_taken(p_class text, nsp oid, name text, p_objid oid)
RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_class = 'routine' THEN
        RETURN EXISTS (
            SELECT FROM pg_proc p, pg_proc me
             WHERE me.oid = p_objid AND p.pronamespace = nsp AND p.proname = name
               AND p.proargtypes = me.proargtypes AND p.oid <> p_objid);
    ELSIF p_class = 'statistics' THEN
        RETURN EXISTS (
            SELECT FROM pg_statistic_ext s WHERE s.stxnamespace = nsp AND s.stxname = name);
    ELSIF p_class = 'collation' THEN   -- any encoding's: the strictest reading
        RETURN EXISTS (
            SELECT FROM pg_collation c
             WHERE c.collnamespace = nsp AND c.collname = name AND c.oid <> p_objid);
    ELSIF p_class = 'text search configuration' THEN
        RETURN EXISTS (
            SELECT FROM pg_ts_config c WHERE c.cfgnamespace = nsp AND c.cfgname = name);
    ELSIF p_class = 'text search dictionary' THEN
        RETURN EXISTS (
            SELECT FROM pg_ts_dict d WHERE d.dictnamespace = nsp AND d.dictname = name);
    ELSIF p_class = 'operator' THEN   -- the same name and argument types
        RETURN EXISTS (
            SELECT FROM pg_operator o, pg_operator me
             WHERE me.oid = p_objid AND o.oprnamespace = nsp AND o.oprname = name
               AND o.oprleft = me.oprleft AND o.oprright = me.oprright AND o.oid <> p_objid);
    ELSIF p_class = 'operator family' THEN   -- of the same access method
        RETURN EXISTS (
            SELECT FROM pg_opfamily f, pg_opfamily me
             WHERE me.oid = p_objid AND f.opfnamespace = nsp AND f.opfname = name
               AND f.opfmethod = me.opfmethod AND f.oid <> p_objid);
    ELSIF p_class = 'operator class' THEN
        RETURN EXISTS (
            SELECT FROM pg_opclass c, pg_opclass me
             WHERE me.oid = p_objid AND c.opcnamespace = nsp AND c.opcname = name
               AND c.opcmethod = me.opcmethod AND c.oid <> p_objid);
    ELSIF p_class = 'server' THEN
        RETURN EXISTS (
            SELECT FROM pg_foreign_server s WHERE s.srvname = name AND s.oid <> p_objid);
    ELSIF p_class = 'language' THEN
        RETURN EXISTS (
            SELECT FROM pg_language l WHERE l.lanname = name AND l.oid <> p_objid);
    END IF;
    RETURN EXISTS (SELECT FROM pg_class c WHERE c.relnamespace = nsp AND c.relname = name)
        OR EXISTS (SELECT FROM pg_type t WHERE t.typnamespace = nsp AND t.typname = name);
END $$;


-- end section: dropcost ---------------------------------------------------------------

-- section: capture1 --------------------------------------------------------------

CREATE OR REPLACE FUNCTION softguard._capture_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
DECLARE
    cap text := current_setting('softguard.capture', true);
    ev text := lower(TG_OP);
    events text[];
    reg softguard.sessions;
    event text;                            -- what is recorded: ev, or 'soft_delete'
    k text;
    cur text;
    op bigint;
    op_kind text;
    cid bigint;
    n bigint;
    need bigint;                           -- bytes a small capture keeps (the budget)
    kept bigint;                           -- what the statement keeps in all (_budget_take)
    ident text;
    expires timestamptz;
    first_word text;
    sd text;
    sdi jsonb;
    sd_exact boolean;                      -- the soft-delete setting told the truth
    stack text;                            -- PG_CONTEXT: who runs the UPDATE (0031)
    rewriters text;                        -- _sd_rewriters: what may rewrite its rows
    bsql record;                           -- _sd_bound_sql
    lost bigint;                           -- rows whose key a BEFORE trigger changed
    changed bigint;                        -- rows it changed beyond the mark: kept whole
    changed_bytes bigint;
    claim text;                            -- how the soft-delete claim was judged
    inh jsonb;                             -- inheritance children's rows (_inherited_claim)
    shape record;
    cols jsonb;
    info jsonb;
    stmt text;
    msg text;                              -- the operation NOTICE
    obj jsonb;
    reg_capture text[];
    lim bigint;                            -- the registration's max_rows (88_limits.sql)
    lim_by text;
    denied jsonb;                          -- tables its rules deny (88_limits.sql)
    typed boolean := false;                -- kept in a table of its own (decision 0030)
    saved text[];
BEGIN
    -- What this session captures: its registration, plus what its setting adds (G6). The
    -- setting, written by the proxy at startup, is the fast path; a session whose setting
    -- does not name the event asks its registration, which the client cannot change. The
    -- registration also carries the session's row limit, whatever its setting says.
    events := string_to_array(replace(lower(coalesce(cap, '')), ' ', ''), ',');
    -- softguard._session(false), inlined: this runs for every uncaptured UPDATE; the row is
    -- kept for the operation's retention and address (verified there, read once)
    SELECT * INTO reg FROM softguard.sessions s WHERE s.pid = pg_backend_pid();
    IF FOUND THEN
        reg_capture := reg.capture;
        lim := reg.max_rows;
        lim_by := reg.max_rows_by;
        denied := reg.denied_tables;
    ELSE  -- behind a transaction pooler: the login role's (05_sessions.sql)
        SELECT p.capture, p.max_rows, p.max_rows_by, p.denied_tables
          INTO reg_capture, lim, lim_by, denied
          FROM softguard.pooled_roles p WHERE p.role = session_user;
    END IF;
    IF denied <> '[]' THEN
        -- an UPDATE claiming to be a soft delete (its setting, below) is the session's
        -- DELETE; it is an UPDATE too unless softguard's own rewrite made the claim and the
        -- transition tables bear it out (below)
        sd := CASE WHEN ev = 'update' AND pg_trigger_depth() = 1
                   THEN current_setting('softguard.sd_' || TG_RELID::text, true) END;
        PERFORM softguard._table_denied(denied, TG_TABLE_SCHEMA, TG_TABLE_NAME,
                                        CASE WHEN sd <> '' THEN 'delete' ELSE ev END,
                                        CASE WHEN sd <> '' THEN 'DELETE' ELSE TG_OP END);
    END IF;
    IF NOT (ev = ANY (events)) THEN
        events := events || coalesce(reg_capture, '{}');
        IF NOT (events && ARRAY['delete', 'update']) AND (lim IS NULL OR ev <> 'delete') THEN
            IF sd <> '' THEN             -- not proven here
                PERFORM softguard._table_denied(denied, TG_TABLE_SCHEMA, TG_TABLE_NAME,
                                                'update', TG_OP);
            END IF;
            RETURN NULL;
        END IF;
    END IF;
    k := (extract(epoch FROM statement_timestamp()) * 1000000)::bigint::text;
    cur := current_setting('softguard.cur_op', true);
    IF cur IS NOT NULL AND split_part(cur, '/', 1) = k THEN
        -- only an operation this transaction opened (the setting is the session's to change)
        SELECT o.id, o.kind INTO op, op_kind FROM softguard.operations o
         WHERE split_part(cur, '/', 2) ~ '^[0-9]{1,18}$'
           AND o.id = split_part(cur, '/', 2)::bigint AND o.txid = pg_current_xact_id()
           AND o.state = 'active';
    END IF;
    ident := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);

    IF ev = 'update' AND pg_trigger_depth() = 1 THEN
        IF left(current_query(), 20) = '/*softguard:delete*/' THEN
            PERFORM softguard._notice('DELETE', 'SGTAG');
        END IF;
        sd := current_setting('softguard.sd_' || TG_RELID::text, true);
        IF sd IS NOT NULL AND sd <> '' THEN
            PERFORM set_config('softguard.sd_' || TG_RELID::text, '', true);
            sdi := sd::jsonb;
            shape := softguard._sd_shape(TG_RELID, sdi);
            IF shape.key IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('softguard: cannot soft-delete from %s: it has no primary key'
                                     ' or unique NOT NULL key to find the rows by', ident);
            END IF;
            -- softguard's own rewrite, bound to this backend's key, run as the text's own
            -- statement (no frame above this one: not from a function or DO block it calls)
            -- on a table nothing rewrites rows of: its claim holds once the written marks
            -- are seen (docs/decisions/0031-soft-delete-bound.md) ...
            IF sdi ? 'sig' THEN
                GET DIAGNOSTICS stack = PG_CONTEXT;
                IF strpos(stack, E'\n') = 0 AND softguard._sd_bound(sdi) THEN
                    rewriters := coalesce(softguard._sd_rewriters(TG_RELID), 'none');
                    bsql := softguard._sd_bound_sql(TG_RELID, sdi, shape.key,
                        CASE WHEN rewriters = 'trigger' THEN softguard._capture_columns(TG_RELID) END);
                END IF;
            END IF;
            IF rewriters = 'none' THEN
                EXECUTE bsql.marked INTO sd_exact;
            ELSIF rewriters = 'trigger' THEN
                -- ... with the table's BEFORE triggers, rows they changed are kept whole
                -- too (below), unless one moved a key (undo finds rows by key)
                EXECUTE bsql.changes INTO lost, changed, changed_bytes;
                sd_exact := lost = 0;
            END IF;
            claim := 'bound';
            -- the session can write the setting: a statement that did more than mark rows
            -- is the UPDATE it is, captured whole whatever the session captures ...
            IF NOT coalesce(sd_exact, false) THEN
                EXECUTE shape.exact INTO sd_exact;
                changed := NULL;
                claim := 'checked';
            END IF;
            -- where UPDATEs are denied, the check proves only that one column took one
            -- value, and the setting names that column: a claim the session wrote itself
            -- (not bound to its key) is an UPDATE too; a session without a key (behind a
            -- transaction pooler) cannot be told from the proxy (decision 0031)
            IF denied <> '[]'
               AND NOT (sd_exact AND (claim = 'bound' OR softguard._backend_key() IS NULL)) THEN
                PERFORM softguard._table_denied(denied, TG_TABLE_SCHEMA, TG_TABLE_NAME,
                                                'update', TG_OP);
            END IF;
            -- ... except a MERGE's own UPDATE actions where the session may run UPDATEs
            -- uncaptured: its marked rows are captured, the rest as any UPDATE of it
            sd_exact := sd_exact OR ((sdi->>'verify')::boolean AND NOT ('update' = ANY (events)));
        END IF;
        IF sd_exact THEN
            -- A soft delete softguard rewrote: capture what it marked, nothing else.
            cid := nextval('softguard.captures_id_seq'::regclass);
            EXECUTE shape.capture USING cid;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = 0 AND coalesce(changed, 0) = 0 THEN
                RETURN NULL;
            END IF;
            IF n > 0 THEN
                IF lim IS NOT NULL THEN    -- the rows this soft delete marked, 88_limits.sql
                    PERFORM softguard._limit_rows(k, n, lim, lim_by, ident);
                END IF;
                event := 'soft_delete';
                cols := shape.columns;
                info := (sdi - 'statement' - 'sig')
                        || jsonb_build_object('key', to_jsonb(shape.key), 'claim', claim);
                stmt := sdi->>'statement';
            END IF;
            -- else: no row newly marked, only rows marked before that the table's trigger
            -- changed (WHERE CURRENT OF): captured whole below, as the UPDATE it is
        END IF;
    END IF;

    IF event IS NULL THEN
        IF NOT (ev = ANY (events)) AND sd_exact IS NULL THEN
            -- Not captured by this session, except what a DELETE changes on other tables
            -- (ON DELETE SET NULL / SET DEFAULT): part of the DELETE's effect.
            IF ev <> 'update' OR op IS NULL OR op_kind NOT IN ('DELETE', 'MERGE') THEN
                IF lim IS NOT NULL AND ev = 'delete' THEN
                    -- a DELETE the session may run uncaptured still counts (88_limits.sql)
                    SELECT count(*) INTO n FROM sg_old;
                    PERFORM softguard._limit_rows(k, n, lim, lim_by, ident);
                END IF;
                RETURN NULL;
            END IF;
        END IF;
        IF lim IS NOT NULL THEN
            -- the row limit (88_limits.sql), exact, before anything is copied
            SELECT count(*) INTO n FROM sg_old;
            PERFORM softguard._limit_rows(k, n, lim, lim_by, ident);
        END IF;
        -- the capture budget (07_settings.sql), before anything is copied: a few rows are
        -- measured (cheaper than the table's size, which stats its files: decision 0024);
        -- more, from a table that fits whole, need no measuring
        SELECT count(*), coalesce(sum(pg_column_size(s.o)), 0) INTO n, need
          FROM (SELECT o FROM sg_old o LIMIT 64) s;
        IF n = 0 THEN
            -- removed or changed nothing: records nothing, and pays for nothing more (no
            -- capture id, column list or ledger statement; decision 0042). Rows of
            -- inheritance children are in sg_old too (cut to this table's columns), so none
            -- of theirs can be waiting for this statement's claim either.
            RETURN NULL;
        ELSIF n < 64 THEN                  -- an assignment: as cur_op's below
            kept := softguard._budget_take(k, need, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
                                                               ELSE 'UPDATE' END, ident);
        ELSE
            IF NOT softguard._budget_fits(k, TG_RELID) THEN
                SELECT coalesce(sum(pg_column_size(o)), 0) INTO n FROM sg_old o;
                PERFORM softguard._budget_take(k, n, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
                                                                    ELSE 'UPDATE' END, ident);
            END IF;
            -- a large DELETE of a table of built-in types: kept typed (decision 0030)
            IF ev = 'delete' AND softguard._typed_fits(TG_RELID) THEN
                SELECT count(*) >= softguard._typed_min_rows() INTO typed
                  FROM (SELECT FROM sg_old o LIMIT softguard._typed_min_rows()) s;
            END IF;
        END IF;
        cid := nextval('softguard.captures_id_seq'::regclass);
        IF ev = 'delete' AND EXISTS (SELECT FROM pg_inherits i
                                      WHERE i.inhparent = TG_RELID OR i.inhrelid = TG_RELID) THEN
            inh := softguard._inherited_claim(TG_RELID, ev);   -- no call for a plain table
        END IF;
        -- columns holding enum / reg* values are kept in their restore form (46_restore.sql)
        cols := softguard._capture_columns(TG_RELID);
        IF typed THEN                      -- here: only this function sees sg_old
            saved := softguard._typed_begin();
            -- USING heap: not whatever access method the session's default names
            EXECUTE format('CREATE TABLE %s USING heap AS SELECT * FROM sg_old',
                           softguard._typed_name(cid));
            GET DIAGNOSTICS n = ROW_COUNT;
            PERFORM softguard._typed_end(cid, saved);
            info := '{"typed": true}';
        ELSIF inh IS NULL AND NOT cols @? '$[*][2]' THEN
        INSERT INTO softguard.captured_rows (capture_id, "row") SELECT cid, o::text FROM sg_old o;
        ELSIF inh IS NULL THEN
            EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                           ' SELECT $1, %s FROM sg_old o', softguard._capture_expr(cols, 'o')) USING cid;
        ELSE cols := softguard._columns(TG_RELID);     -- inherited rows: as their text
            EXECUTE softguard._inherited_sql(TG_RELID, inh) USING cid; END IF;
        IF NOT typed THEN
            GET DIAGNOSTICS n = ROW_COUNT;
        END IF;
        IF n = 0 AND inh IS NULL THEN
            RETURN NULL;                   -- removed nothing: records nothing
        END IF;
        IF ev = 'update' THEN EXECUTE softguard._key_change_sql(TG_RELID, true) INTO info;
            IF info IS NOT NULL THEN EXECUTE softguard._key_change_sql(TG_RELID, false) INTO info; END IF; END IF;
        event := ev;
    END IF;

    obj := jsonb_build_object(
        'type', 'table', 'identity', ident, 'schema', TG_TABLE_SCHEMA, 'name', TG_TABLE_NAME,
        'original', op IS NULL, 'normal', true,
        'classid', 'pg_class'::regclass::oid, 'objid', TG_RELID, 'objsubid', 0,
        'event', event, 'rows', n, 'held_by', NULL);
    IF op IS NULL THEN
        -- the operation's first table: its ledger row is written once, complete
        IF event = 'soft_delete' THEN
            op_kind := coalesce(sdi->>'verb', 'DELETE');       -- DELETE, or MERGE
        ELSE
            stmt := current_query();
            IF left(stmt, 17) = '/*softguard:text=' THEN   -- else it is its own text: no call
                stmt := softguard._client_text(stmt);
            END IF;
            first_word := upper(substring(stmt FROM '^\s*([A-Za-z]+)'));
            op_kind := CASE WHEN first_word = 'MERGE' THEN 'MERGE' ELSE TG_OP END;
        END IF;
        IF reg.pid IS NULL OR NOT coalesce(softguard._session_verified(reg), false) THEN
            reg := softguard._session(true);   -- not this backend's row, or pooled
        END IF;
        expires := now() + softguard._retention(
            reg, nullif(current_setting('softguard.retention', true), '')::integer);
        INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                          client_addr, statement, kind, objects, row_counts,
                                          restore)
        VALUES (expires, session_user, softguard._client_role(),
                current_setting('application_name', true),
                softguard._client_addr(reg),
                coalesce(stmt, ''), op_kind,
                jsonb_build_array(obj),
                jsonb_build_object('estimate', false, 'tables', jsonb_build_object(ident, n)),
                '[]')
        RETURNING id INTO op;
        -- an assignment, not PERFORM (an expression: no executor run, decision 0024)
        cur := set_config('softguard.cur_op', format('%s/%s/%s', k, op, op_kind), true);
        -- no row count: later statements of the same query string may join it
        msg := softguard._op_notice(
            CASE op_kind WHEN 'DELETE' THEN 'DELETE FROM' WHEN 'MERGE' THEN 'MERGE INTO'
                         ELSE 'UPDATE' END,
            ident || CASE WHEN event = 'soft_delete'
                          THEN format(' (soft delete: %s set)', quote_ident(sdi->>'column'))
                          ELSE '' END,
            op, expires);
        IF current_setting('client_min_messages') IN ('notice', 'log', 'debug1', 'debug2',
                                                      'debug3', 'debug4', 'debug5') THEN
            RAISE NOTICE USING MESSAGE = msg;       -- _notice's fast path, without its call
        ELSE
            PERFORM softguard._notice(msg);
        END IF;
    ELSE
        UPDATE softguard.operations o SET
            -- a soft delete of another statement of the same query string: named too (a
            -- statement's own tables fire one after the other: it is the last one named)
            statement = CASE WHEN stmt IS NULL OR o.statement = stmt
                               OR right(o.statement, length(stmt) + 2) = '; ' || stmt
                             THEN o.statement ELSE o.statement || '; ' || stmt END,
            objects = o.objects || jsonb_build_array(obj),
            row_counts = jsonb_set(o.row_counts, ARRAY['tables', ident],
                to_jsonb(coalesce((o.row_counts->'tables'->>ident)::bigint, 0) + n))
         WHERE o.id = op;
    END IF;
    INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns,
                                    info)
    VALUES (cid, op, TG_RELID, ident, event, n, cols, info);
    IF changed > 0 AND event = 'soft_delete' THEN
        -- a bound soft delete whose rows the table's own BEFORE trigger changed further:
        -- their whole old images, an 'update' capture undo restores after clearing marks
        PERFORM softguard._budget_take(k, changed_bytes, true, 'DELETE FROM', ident);
        cid := nextval('softguard.captures_id_seq'::regclass);
        cols := softguard._capture_columns(TG_RELID);
        EXECUTE bsql.images USING cid;
        GET DIAGNOSTICS n = ROW_COUNT;
        INSERT INTO softguard.captures (id, op_id, relid, table_identity, event, n_rows, columns)
        VALUES (cid, op, TG_RELID, ident, 'update', n, cols);
    END IF;
    IF info ? 'appeared' OR inh IS NOT NULL THEN
        PERFORM softguard._capture_more(op, cid, TG_RELID, info, inh);
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_rows() FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._foreign_code(rel oid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
BEGIN
    -- Only functions of a role that is neither a superuser nor the one running undo count
    -- (the last line of the walk). Every function's owner but the bootstrap superuser is
    -- recorded in pg_shdepend (PostgreSQL keeps it for DROP OWNED / REASSIGN OWNED), and
    -- the bootstrap superuser is a superuser: without such an entry in this database no
    -- function can be found, and the walk would answer NULL.
    IF NOT EXISTS (SELECT FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid
                    WHERE s.dbid = (SELECT d.oid FROM pg_database d
                                     WHERE d.datname = current_database())
                      AND s.classid = 'pg_proc'::regclass AND s.refclassid = 'pg_authid'::regclass
                      AND s.deptype = 'o' AND NOT r.rolsuper AND r.rolname <> current_user) THEN
        RETURN NULL;
    END IF;
    RETURN (
        WITH RECURSIVE tree(r) AS (
            SELECT rel
            UNION
            SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.r
        ), types(t) AS (
            SELECT a.atttypid FROM pg_attribute a
             WHERE a.attrelid IN (SELECT r FROM tree) AND a.attnum > 0 AND NOT a.attisdropped
            UNION
            SELECT u FROM types JOIN pg_type y ON y.oid = types.t,
                   LATERAL (SELECT nullif(y.typbasetype, 0)
                            UNION ALL SELECT nullif(y.typelem, 0)
                            UNION ALL SELECT f.atttypid FROM pg_attribute f
                                       WHERE f.attrelid = y.typrelid AND f.attnum > 0
                                         AND NOT f.attisdropped
                            UNION ALL SELECT g.rngsubtype FROM pg_range g WHERE g.rngtypid = y.oid
                            UNION ALL SELECT g.rngtypid FROM pg_range g
                                       WHERE g.rngmultitypid = y.oid) v(u)
             WHERE u IS NOT NULL
        ), parts(classid, objid) AS (
            SELECT 'pg_class'::regclass::oid, i.indexrelid FROM pg_index i
             WHERE i.indrelid IN (SELECT r FROM tree)
            UNION ALL
            SELECT 'pg_constraint'::regclass::oid, k.oid FROM pg_constraint k
             WHERE k.conrelid IN (SELECT r FROM tree) OR k.contypid IN (SELECT t FROM types)
            UNION ALL
            SELECT 'pg_attrdef'::regclass::oid, d.oid FROM pg_attrdef d
             WHERE d.adrelid IN (SELECT r FROM tree)
            UNION ALL
            -- a domain's default (and any type's own functions)
            SELECT 'pg_type'::regclass::oid, t FROM types
            UNION ALL
            -- row-level security policies, where they apply to the role running undo (softguard's
            -- owner on a managed service may be neither superuser nor BYPASSRLS)
            SELECT 'pg_policy'::regclass::oid, pol.oid FROM pg_policy pol
              JOIN pg_class c ON c.oid = pol.polrelid AND c.relrowsecurity
             WHERE pol.polrelid IN (SELECT r FROM tree)
               AND NOT (SELECT o.rolsuper OR o.rolbypassrls FROM pg_roles o
                         WHERE o.rolname = current_user)
        ), used(classid, objid) AS (
            SELECT d.refclassid, d.refobjid FROM parts JOIN pg_depend d
                ON d.classid = parts.classid AND d.objid = parts.objid
            UNION
            -- what runs what it uses (decision 0036): an operator its function, an index's
            -- operator class the operators and support functions of its family
            SELECT x.classid, x.objid FROM used,
              LATERAL (SELECT 'pg_proc'::regclass::oid, o.oprcode::oid FROM pg_operator o
                        WHERE used.classid = 'pg_operator'::regclass AND o.oid = used.objid
                       UNION ALL
                       SELECT 'pg_opfamily'::regclass::oid, c.opcfamily FROM pg_opclass c
                        WHERE used.classid = 'pg_opclass'::regclass AND c.oid = used.objid
                       UNION ALL
                       SELECT 'pg_operator'::regclass::oid, a.amopopr FROM pg_amop a
                        WHERE used.classid = 'pg_opfamily'::regclass AND a.amopfamily = used.objid
                       UNION ALL
                       SELECT 'pg_proc'::regclass::oid, a.amproc::oid FROM pg_amproc a
                        WHERE used.classid = 'pg_opfamily'::regclass
                          AND a.amprocfamily = used.objid) x(classid, objid)
        )
        SELECT string_agg(DISTINCT format('%s (owned by %I)', p.oid::regprocedure, r.rolname), ', ')
          FROM used JOIN pg_proc p ON used.classid = 'pg_proc'::regclass AND p.oid = used.objid
          JOIN pg_roles r ON r.oid = p.proowner
         WHERE NOT r.rolsuper AND r.rolname <> current_user);
END $$;
REVOKE ALL ON FUNCTION softguard._foreign_code(oid) FROM PUBLIC;

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
                -- one index probe per trigger, not a scan of every function (decision 0042)
                AND NOT EXISTS (SELECT FROM pg_proc p WHERE p.oid = g.tgfoid
                                   AND p.pronamespace = 'softguard'::regnamespace)
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
REVOKE ALL ON FUNCTION softguard._undo_triggers_off(bigint) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._parents_first(rels oid[]) RETURNS oid[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    done oid[] := '{}';
    nxt oid[];
    root oid;
BEGIN
    IF cardinality(rels) < 2 THEN
        RETURN rels;                       -- nothing to order (decision 0042)
    END IF;
    LOOP
        SELECT coalesce(array_agg(r ORDER BY r), '{}') INTO nxt FROM unnest(rels) r
         WHERE NOT (r = ANY (done))
           AND NOT EXISTS (
               SELECT FROM pg_constraint c
                WHERE c.contype = 'f' AND c.conrelid IN (
                          SELECT r UNION SELECT inhparent FROM pg_inherits WHERE inhrelid = r)
                  AND c.confrelid <> c.conrelid
                  AND EXISTS (SELECT FROM unnest(rels) p
                               WHERE NOT (p = ANY (done)) AND p <> r
                                 AND (p = c.confrelid OR c.confrelid IN (
                                      SELECT inhparent FROM pg_inherits WHERE inhrelid = p))));
        IF cardinality(nxt) = 0 THEN
            EXIT;
        END IF;
        done := done || nxt;
    END LOOP;
    SELECT done || coalesce(array_agg(r ORDER BY r), '{}') INTO done FROM unnest(rels) r
     WHERE NOT (r = ANY (done));
    RETURN done;
END $$;
REVOKE ALL ON FUNCTION softguard._parents_first(oid[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._capture_row_type(rel oid, columns jsonb, tag text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT columns @? '$[*][2]' AND softguard._columns(rel) = columns THEN
        RETURN rel::regclass::text;
    END IF;
    RETURN softguard._row_type(columns, tag);
END $$;
REVOKE ALL ON FUNCTION softguard._capture_row_type(oid, jsonb, text) FROM PUBLIC;

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
    FOR cap IN SELECT * FROM softguard.captures WHERE op_id = op AND event = 'column' ORDER BY id LOOP
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
            rtype := softguard._capture_row_type(rel, g.columns, g.first_id::text);
            -- columns to insert: captured ones still in the table, not generated
            cols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                           WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                             AND a.attgenerated = ''
                             AND a.attname IN (SELECT x->>0 FROM jsonb_array_elements(g.columns) x)
                           ORDER BY a.attnum);
            -- text captures parsed, typed ones (decision 0030) read as they are
            src := softguard._capture_src(g.columns, rtype, g.ids, rel::regclass::text);
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
        rtype := softguard._capture_row_type(g.relid, g.columns, g.first_id::text);
        cols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = g.relid AND a.attnum > 0 AND NOT a.attisdropped
                         AND a.attgenerated = '' AND a.attidentity <> 'a'
                         AND a.attname IN (SELECT x->>0 FROM jsonb_array_elements(g.columns) x)
                       ORDER BY a.attnum);
        src := format('SELECT DISTINCT ON (%s) * FROM (SELECT %s, p.sg_cid FROM'
                      ' (SELECT r."row"::%s AS x, r.capture_id AS sg_cid FROM softguard.captured_rows r'
                      ' WHERE r.capture_id = ANY (%L::bigint[]) OFFSET 0) p) q ORDER BY %s, q.sg_cid',
                      (SELECT string_agg(format('q.%I', x), ', ') FROM unnest(key) x),
                      softguard._restored_cols(g.columns, 'p', g.relid::regclass::text), rtype, g.ids,
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

    -- DROP COLUMN ... CASCADE: the publications whose column list or row filter used a
    -- column (decision 0038), once the rows are back (a row filter's membership may stop
    -- UPDATEs of a table whose replica identity does not cover it)
    lines := lines || softguard._rejoin_publications(op, softguard._column_publications(op), '[]');

    PERFORM softguard._record_undo(o, CASE WHEN on_conflict = 'skip'
                                           THEN ' --on-conflict skip' ELSE '' END);
    IF cardinality(lines) = 0 THEN
        lines := ARRAY[softguard._step(op, 'nothing', '', 'nothing to restore')];
    END IF;
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_captures(bigint, text) FROM PUBLIC;
-- end section: capture1 ----------------------------------------------------------

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
