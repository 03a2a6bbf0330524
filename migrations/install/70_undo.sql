-- Undo: everything that puts back what an operation took, in one file.
--
-- Entry points: softguard.undo_steps(op, rename_to, cascade, on_conflict), one row per thing
-- restored (softguard.undo_step; the `softguard undo` command), and softguard.undo_op, the
-- same as lines of text for SQL callers. Who may undo: EXECUTE on undo_op(bigint, text,
-- boolean), not granted to PUBLIC. Both run _undo, which refuses a purged operation
-- (_refuse_purged), then dispatches on the operation's kind:
-- * DROP ... (the objects are in quarantine; restore plan in operations.restore):
--   _undo_one moves them back under their names and runs the restore steps' inverses,
--   last to first (re-adds constraints, triggers, defaults, policies, rules, indexes,
--   inheritance, partitions, sequence ownership, the columns a type's CASCADE took).
-- * DELETE, UPDATE, MERGE, TRUNCATE, ALTER TABLE (rows in softguard.captured_rows, large
--   DELETE / TRUNCATE captures in softguard_rows.c<id>: _capture_src, decision 0030):
--   _undo_rows clears soft-delete marks, then _undo_captures puts rows back by key
--   (TRUNCATE: every captured row re-inserted, then the sequences' values), and for
--   ALTER TABLE _undo_column: _undo_drop_column re-adds a dropped column with its values,
--   _undo_type converts a retyped column back.
-- * LARGE OBJECT (pages kept by the large-object wrappers): _undo_large_objects
--   writes them back (the wrappers are in 67_large_objects.sql).
--
-- What always holds:
-- * An undo runs in the caller's transaction: all or nothing. It writes an UNDO operation
--   and marks the undone one 'undone'.
-- * Conflicts stop it with a SQLSTATE and a clear message: a name taken since (42P07,
--   42P06, 42723, 42710: --rename-to), a key re-used since (23505: --on-conflict skip), an
--   object or column a later active operation holds (55006, DETAIL 'blocked_by=<op>': undo
--   the later one first, or --cascade), a table or column gone or changed since, a purged
--   operation (55000).
-- * Restored rows are written with user triggers off (session_replication_role replica),
--   so their foreign keys are checked here (_check_fks) instead of by PostgreSQL; user
--   triggers and rules that fire in replica mode too (ENABLE ALWAYS / REPLICA) are disabled
--   for the undo's transaction and put back as they were (_undo_triggers_off).
-- * An undo restores everything it captured or fails: fewer rows written than captured,
--   re-keyed rows not found by their new key, are errors (--on-conflict skip only leaves
--   out rows whose key was re-used since, and says how many).

-- What an undo reports: one row per thing it restored (softguard/contract.py UndoStep).
CREATE TYPE softguard.undo_step AS (
    op      bigint,   -- the operation undone
    action  text,     -- restored, re-added, re-created, re-set, re-established, re-attached,
                      -- cleared, nothing
    object  text,     -- what it acted on (qualified name), '' for nothing
    detail  text,     -- the sentence shown to people
    "rows"  bigint    -- rows put back, when it moved rows
);

-- ---------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------

-- The identity an object had when its operation took it (falls back to the current one).
CREATE FUNCTION softguard._identity_in(op bigint, p_classid oid, p_objid oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(
        (SELECT e->>'type' || ' ' || (e->>'identity')
           FROM softguard.operations o, jsonb_array_elements(o.objects) e
          WHERE o.id = op AND (e->>'classid')::oid = p_classid AND (e->>'objid')::oid = p_objid
            AND (e->>'objsubid')::integer = 0
          LIMIT 1),
        (SELECT i.type || ' ' || i.identity FROM pg_identify_object(p_classid, p_objid, 0) i))
$$;
REVOKE ALL ON FUNCTION softguard._identity_in(bigint, oid, oid) FROM PUBLIC;

-- One row of what an undo did.
CREATE FUNCTION softguard._step(op bigint, action text, object text, detail text,
                                n bigint DEFAULT NULL)
RETURNS softguard.undo_step
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(op, action, object, detail, n)::softguard.undo_step
$$;
REVOKE ALL ON FUNCTION softguard._step(bigint, text, text, text, bigint) FROM PUBLIC;

-- Fail with 55006 when a later operation holds (in quarantine) an object that `what` needs.
CREATE FUNCTION softguard._need_live(op bigint, p_classid oid, p_objid oid, what text,
                                     what_identity text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    holder bigint;
    held text;
    holder_stmt text;
BEGIN
    IF (pg_identify_object(p_classid, p_objid, 0)).identity IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: %s needs %s, which no longer exists',
                             op, what, coalesce(what_identity, p_objid::text));
    END IF;
    holder := softguard._holder(p_classid, p_objid, 0);
    IF holder IS NOT NULL AND holder <> op THEN
        held := softguard._identity_in(holder, p_classid, p_objid);
        SELECT o.statement INTO holder_stmt FROM softguard.operations o WHERE o.id = holder;
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = format('cannot undo operation %s: %s needs %s, held by operation %s (%s)',
                             op, what, held, holder, holder_stmt),
            DETAIL = softguard._blocked_detail(holder),
            HINT = format('Undo operation %s first, or use --cascade.', holder);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._need_live(bigint, oid, oid, text, text) FROM PUBLIC;

-- Is `name` free for a relation/type (or routine or operator with these argument types,
-- operator class or family of this access method, statistics object, collation, text
-- search configuration or dictionary) in schema nsp? A foreign server's name is the
-- database's (nsp NULL). PL/pgSQL, one query per kind: as one SQL CASE it was planned
-- again on every call (~1 ms each, four per undo of a table: decision 0041).
CREATE FUNCTION softguard._name_taken(p_class text, nsp oid, name text, p_objid oid)
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
REVOKE ALL ON FUNCTION softguard._name_taken(text, oid, text, oid) FROM PUBLIC;

-- Fail with 55006 / 55000 when a captured table is not live (held by a later DROP, gone).
-- Functions that writing rows into `rel` runs and whose owner is neither the role running
-- now nor a superuser: in the indexes (expressions, predicates), constraints, column
-- defaults and generated columns of `rel` and of every partition or inheritance child a
-- row may land in, and in the constraints and defaults of every domain its columns' values
-- pass through, at any depth (domains over domains, arrays, composite fields, range
-- subtypes: reading a captured row's text runs each one); also the functions behind the
-- operators those use and behind its indexes' operator classes. Undo runs as the operator: such a
-- function, which the table's owner may have written, would run with the operator's rights
-- (PostgreSQL switches to the owner only for maintenance such as CREATE INDEX, not for an
-- INSERT or UPDATE). Triggers and rules are off during undo. Row-level security policies
-- count where they apply to the role running undo (not a superuser, not BYPASSRLS).
-- jit off: the planner's estimate for this catalog walk (~10^7) is far over jit_above_cost,
-- and compiling it cost 2.3-2.5 s per call against 0.04-0.07 s run without (one call per
-- table an undo writes rows into), on a server with PostgreSQL's default jit = on.
-- plpgsql (decision 0042): the walk is planned only when some function could be found by
-- it, and then once per session; as a SQL function it was planned at every call (~2 ms of
-- a single-row undo's 9 ms) even where the database holds no such function.
CREATE FUNCTION softguard._foreign_code(rel oid) RETURNS text
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

-- Refuse undo of `op` before it writes rows of `rel` (`ident`) that would run such code.
CREATE FUNCTION softguard._refuse_foreign_code(op bigint, rel oid, ident text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    code text := softguard._foreign_code(rel);
BEGIN
    IF code IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('cannot undo operation %s: writing rows back into %s would run %s '
                             'with the rights of %I', op, ident, code, current_user),
            DETAIL = 'Index expressions and predicates, constraints and defaults run as the '
                     'role that writes the row, whoever wrote the function.',
            HINT = 'Review the function; replace it with one owned by a superuser, or drop what '
                   'uses it, then run undo again.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._refuse_foreign_code(bigint, oid, text) FROM PUBLIC;

CREATE FUNCTION softguard._need_table(op bigint, rel oid, ident text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    holder bigint;
    holder_stmt text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_class WHERE oid = rel) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: table %s no longer exists', op, ident);
    END IF;
    PERFORM softguard._refuse_foreign_code(op, rel, ident);
    holder := softguard._holder('pg_class'::regclass, rel, 0);
    IF holder IS NOT NULL AND holder <> op THEN
        SELECT o.statement INTO holder_stmt FROM softguard.operations o WHERE o.id = holder;
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = format('cannot undo operation %s: table %s is held by operation %s (%s)',
                             op, ident, holder, holder_stmt),
            DETAIL = softguard._blocked_detail(holder),
            HINT = format('Undo operation %s first, or use --cascade.', holder);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._need_table(bigint, oid, text) FROM PUBLIC;

-- Check that restored rows (source query `src` with columns of table rel) reference live
-- rows through every foreign key of rel (replica mode skipped PostgreSQL's own checks).
CREATE FUNCTION softguard._check_fks(op bigint, rel oid, src text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f record;
    bad text;
BEGIN
    FOR f IN SELECT c.conname, c.confrelid,
                    ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
                            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n
                           ORDER BY k.o) AS cols,
                    ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, o)
                            JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n
                           ORDER BY k.o) AS refcols
               FROM pg_constraint c
              WHERE c.contype = 'f' AND c.conrelid = rel AND c.conparentid = 0 LOOP
        EXECUTE format('SELECT format(%L, %s) FROM (%s) s WHERE %s AND NOT EXISTS'
                       ' (SELECT FROM %s p WHERE %s) LIMIT 1',
                       '(' || array_to_string(f.cols, ', ') || ')=(' ||
                           array_to_string(array_fill('%s'::text, ARRAY[cardinality(f.cols)]), ', ') || ')',
                       (SELECT string_agg(format('s.%I', c), ', ') FROM unnest(f.cols) c),
                       src,
                       (SELECT string_agg(format('s.%I IS NOT NULL', c), ' AND ') FROM unnest(f.cols) c),
                       f.confrelid::regclass,
                       (SELECT string_agg(format('p.%I = s.%I', r, c), ' AND ')
                          FROM unnest(f.refcols, f.cols) x(r, c)))
          INTO bad;
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '23503',
                MESSAGE = format('cannot undo operation %s: restored rows of %s reference %s %s, which no longer exists',
                                 op, rel::regclass, f.confrelid::regclass, bad),
                HINT = 'Undo the later operation that removed it first.';
        END IF;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._check_fks(bigint, oid, text) FROM PUBLIC;

-- Order tables parents first (foreign keys among them; cycles and self references last).
CREATE FUNCTION softguard._parents_first(rels oid[]) RETURNS oid[]
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

-- Operation `o` is undone: its state says so, and the undo is recorded as an operation of
-- its own (kind UNDO, statement = the command that ran it, `options` appended).
CREATE FUNCTION softguard._record_undo(o softguard.operations, options text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE softguard.operations SET state = 'undone', undone_at = now(), undone_by = session_user
     WHERE id = o.id;
    INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                      client_addr, statement, kind, objects, restore, undo_of)
    VALUES (o.expires_at, session_user, current_user, current_setting('application_name', true),
            inet_client_addr()::text, format('softguard undo %s%s', o.id, options), 'UNDO',
            o.objects, '[]', o.id);
$$;
REVOKE ALL ON FUNCTION softguard._record_undo(softguard.operations, text) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- DROP: objects back from quarantine
-- ---------------------------------------------------------------------------------------

-- Write an object's (or column's) ACL back as `was` when it holds the same privileges
-- (`now`, its defaults spelled out when NULL): a set, so pg_shdepend is unchanged.
CREATE FUNCTION softguard._exact_acl(cls oid, obj oid, col name, was aclitem[], now aclitem[],
                                     kind "char") RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    want aclitem[] := coalesce(was, acldefault(kind, softguard._owner(cls, obj)));
BEGIN
    IF NOT (now @> want AND want @> now) THEN
        RETURN;
    END IF;
    IF col IS NOT NULL THEN
        UPDATE pg_attribute SET attacl = was WHERE attrelid = obj AND attname = col;
    ELSIF cls = 'pg_class'::regclass THEN
        UPDATE pg_class SET relacl = was WHERE oid = obj;
    ELSIF cls = 'pg_proc'::regclass THEN
        UPDATE pg_proc SET proacl = was WHERE oid = obj;
    ELSIF cls = 'pg_type'::regclass THEN
        UPDATE pg_type SET typacl = was WHERE oid = obj;
    ELSIF cls = 'pg_namespace'::regclass THEN
        UPDATE pg_namespace SET nspacl = was WHERE oid = obj;
    ELSIF cls = 'pg_foreign_server'::regclass THEN
        UPDATE pg_foreign_server SET srvacl = was WHERE oid = obj;
    ELSIF cls = 'pg_language'::regclass THEN
        UPDATE pg_language SET lanacl = was WHERE oid = obj;
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._exact_acl(oid, oid, name, aclitem[], aclitem[], "char") FROM PUBLIC;

-- Put back what _untie (30_drop.sql) took from a kept object: the roles its table's
-- policies applied to, its schema's default privileges. A role dropped since gets nothing
-- back (undo says so); a policy none of whose roles exists any more is dropped, as DROP
-- OWNED BY of its last role drops it.
CREATE FUNCTION softguard._retie(op bigint, s jsonb, ident text) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e jsonb;
    a jsonb;
    roles text;
    gone text;
    who name;
    grantee text;
    lines softguard.undo_step[] := '{}';
BEGIN
    FOR e IN SELECT x FROM jsonb_array_elements(coalesce(s->'policies', '[]')) x LOOP
        SELECT string_agg(CASE WHEN (y.v->>'oid')::oid = 0 THEN 'PUBLIC'
                               ELSE quote_ident(r.rolname) END, ', ' ORDER BY y.o) INTO roles
          FROM jsonb_array_elements(e->'roles') WITH ORDINALITY AS y (v, o)
          LEFT JOIN pg_roles r ON r.oid = (y.v->>'oid')::oid
         WHERE (y.v->>'oid')::oid = 0 OR r.oid IS NOT NULL;
        SELECT string_agg(y->>'role', ', ') INTO gone
          FROM jsonb_array_elements(e->'roles') y
         WHERE (y->>'oid')::oid <> 0
           AND NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = (y->>'oid')::oid);
        IF roles IS NULL THEN
            EXECUTE format('DROP POLICY %I ON %s', e->>'name', ident);
        ELSE
            EXECUTE format('ALTER POLICY %I ON %s TO %s', e->>'name', ident, roles);
        END IF;
        IF gone IS NOT NULL THEN
            lines := lines || softguard._step(op, 'skipped', s->>'identity',
                format('policy %I on %s %s: role %s no longer exists%s', e->>'name',
                       lower(s->>'keyword'), s->>'identity', gone,
                       CASE WHEN roles IS NULL THEN ', policy dropped' ELSE '' END));
        END IF;
    END LOOP;
    FOR e IN SELECT x FROM jsonb_array_elements(coalesce(s->'default_acls', '[]')) x LOOP
        SELECT r.rolname INTO who FROM pg_roles r WHERE r.oid = (e->>'role_oid')::oid;
        FOR a IN SELECT x FROM jsonb_array_elements(e->'acl') x LOOP
            grantee := CASE WHEN a->>'grantee' = 'PUBLIC' THEN 'PUBLIC'
                            ELSE (SELECT quote_ident(r.rolname) FROM pg_roles r
                                   WHERE r.oid = (a->>'grantee_oid')::oid) END;
            IF who IS NULL OR grantee IS NULL THEN
                lines := lines || softguard._step(op, 'skipped', s->>'identity',
                    format('default privilege %s on %s in schema %s for role %s to %s not '
                           'given back: role %s no longer exists', a->>'privilege',
                           lower(e->>'keyword'), s->>'identity', e->>'role', a->>'grantee',
                           CASE WHEN who IS NULL THEN e->>'role' ELSE a->>'grantee' END));
                CONTINUE;
            END IF;
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %s GRANT %s ON %s '
                           'TO %s%s', who, ident, a->>'privilege', e->>'keyword', grantee,
                           CASE WHEN (a->>'grantable')::boolean THEN ' WITH GRANT OPTION'
                                ELSE '' END);
        END LOOP;
    END LOOP;
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._retie(bigint, jsonb, text) FROM PUBLIC;

-- Give a kept object back to the role that owned it, with the privileges roles and PUBLIC
-- had on it (30_drop.sql, _disown). The owner must still exist (or exist again under its
-- name); a grantee that no longer exists has no privileges to get back (as after a real
-- DROP ROLE), which undo says.
CREATE FUNCTION softguard._undo_owner(op bigint, s jsonb) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who name;
    ident text;
    grantee text;
    e jsonb;
    cls oid := (s->>'classid')::oid;
    obj oid := (s->>'oid')::oid;
    missing boolean := false;  -- a grantee no longer exists
    lines softguard.undo_step[] := '{}';
BEGIN
    -- by oid, else a role created again under its name (what the hint below asks for)
    SELECT r.rolname INTO who FROM pg_roles r WHERE r.oid = (s->>'owner_oid')::oid;
    IF who IS NULL THEN
        SELECT r.rolname INTO who FROM pg_roles r WHERE r.oid = to_regrole(s->>'owner');
    END IF;
    IF who IS NULL AND coalesce((s->>'owner_changed')::boolean, true) THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: role %s, which owned %s %s, no longer '
                             'exists', op, s->>'owner', lower(s->>'keyword'), s->>'identity'),
            HINT = format('Create the role again (CREATE ROLE %I), then undo: softguard gives '
                          'each object back to the role that owned it.', s->>'owner');
    END IF;
    IF cls = 'pg_namespace'::regclass THEN
        SELECT quote_ident(n.nspname) INTO ident FROM pg_namespace n WHERE n.oid = obj;
    ELSE  -- an operator, a collation, ... (30_drop.sql _schema_objects): its identity
        ident := coalesce((softguard._kw(cls, obj)).ident,
                          (pg_identify_object(cls, obj, 0)).identity);
    END IF;
    IF ident IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: %s %s is no longer where it was kept',
                             op, lower(s->>'keyword'), s->>'identity');
    END IF;
    IF coalesce((s->>'owner_changed')::boolean, true) THEN
        EXECUTE format('ALTER %s %s OWNER TO %I', s->>'keyword', ident, who);
    END IF;
    FOR e IN SELECT x FROM jsonb_array_elements(s->'acl') x LOOP
        grantee := CASE WHEN e->>'grantee' = 'PUBLIC' THEN 'PUBLIC'
                        ELSE (SELECT quote_ident(r.rolname) FROM pg_roles r
                               WHERE r.oid = (e->>'grantee_oid')::oid) END;
        IF grantee IS NULL THEN
            missing := true;
            lines := lines || softguard._step(op, 'skipped', s->>'identity',
                format('%s on %s %s not given back to role %s: it no longer exists',
                       e->>'privilege', lower(s->>'keyword'), s->>'identity', e->>'grantee'));
            CONTINUE;
        END IF;
        EXECUTE format('GRANT %s%s ON %s %s TO %s%s', e->>'privilege',
                       CASE WHEN e->>'column' IS NULL THEN '' ELSE format(' (%I)', e->>'column') END,
                       s->>'grant_keyword', ident, grantee,
                       CASE WHEN (e->>'grantable')::boolean THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    lines := lines || softguard._retie(op, s, ident);
    -- The grants above gave back the same privileges; put back each ACL exactly as it was
    -- (the order of its items, NULL for PostgreSQL's defaults), where it holds the same
    -- set. A direct catalog write, so only where the ledger's owner is a superuser; not
    -- when a grantee is gone (the ACL as it was names it).
    IF s ? 'exact' AND NOT missing
       AND (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
        PERFORM softguard._exact_acl(cls, obj, g.col, (s->'exact'->>coalesce(g.col, ''))::aclitem[],
                                     coalesce(g.acl, acldefault(g.kind, softguard._owner(cls, obj))),
                                     g.kind)
           FROM softguard._acls(cls, obj) g WHERE s->'exact' ? coalesce(g.col, '');
    END IF;
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_owner(bigint, jsonb) FROM PUBLIC;

-- Re-make a materialized view that a DROP ... CASCADE dropped because it read a column
-- the DROP kept (30_drop.sql, _remake_step; decision 0035): the columns are back already.
-- Made WITH NO DATA as the ledger's owner (nothing of its query runs), given back to its
-- owner with its privileges, its indexes and statistics objects made, then, when it was
-- populated, refreshed: REFRESH runs the query as the view's owner, as any REFRESH does,
-- so no code of the client's runs with softguard's rights. Its rows are those of undo
-- time (PostgreSQL cannot write rows into a materialized view).
CREATE FUNCTION softguard._undo_remake(op bigint, s jsonb) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nsp_name name;
    rel oid;
    d jsonb;
    e jsonb;
    what text := 'materialized view ' || (s->>'name');
    lines softguard.undo_step[] := '{}';
BEGIN
    FOR d IN SELECT x FROM jsonb_array_elements(s->'deps') x LOOP
        PERFORM softguard._need_live(op, (d->>'classid')::oid, (d->>'objid')::oid, what,
                                     d->>'identity');
    END LOOP;
    SELECT n.nspname INTO nsp_name FROM pg_namespace n WHERE n.oid = (s->>'schema_oid')::oid;
    IF nsp_name IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: schema %s no longer exists', op,
                             s->>'schema'),
            HINT = format('CREATE SCHEMA %I first.', s->>'schema');
    END IF;
    PERFORM softguard._need_live(op, 'pg_namespace'::regclass, (s->>'schema_oid')::oid, what);
    IF to_regclass(format('%I.%I', nsp_name, s->>'relname')) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42P07',
            MESSAGE = format('cannot undo operation %s: relation %I.%I already exists (created '
                             'after the DROP)', op, nsp_name, s->>'relname');
    END IF;
    EXECUTE format('CREATE MATERIALIZED VIEW %I.%I USING %I%s%s AS %s WITH NO DATA', nsp_name,
                   s->>'relname', s->>'am',
                   (SELECT ' WITH (' || string_agg(x, ', ' ORDER BY i) || ')'
                      FROM jsonb_array_elements_text(CASE jsonb_typeof(s->'options')
                                                         WHEN 'array' THEN s->'options'
                                                         ELSE '[]' END)
                           WITH ORDINALITY AS t(x, i)),
                   coalesce(' TABLESPACE ' || quote_ident(s->>'tablespace'), ''), s->>'def');
    rel := to_regclass(format('%I.%I', nsp_name, s->>'relname'));
    IF s->>'comment' IS NOT NULL THEN
        EXECUTE format('COMMENT ON MATERIALIZED VIEW %s IS %L', rel::regclass, s->>'comment');
    END IF;
    FOR e IN SELECT x FROM jsonb_array_elements(s->'columns') x LOOP
        IF e->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', rel::regclass, e->>'name',
                           e->>'comment');
        END IF;
        IF e->>'stattarget' IS NOT NULL THEN
            EXECUTE format('ALTER MATERIALIZED VIEW %s ALTER COLUMN %I SET STATISTICS %s',
                           rel::regclass, e->>'name', (e->>'stattarget')::integer);
        END IF;
        IF e->>'storage' IS NOT NULL THEN
            EXECUTE format('ALTER MATERIALIZED VIEW %s ALTER COLUMN %I SET STORAGE %s',
                           rel::regclass, e->>'name', CASE e->>'storage' WHEN 'p' THEN 'PLAIN'
                               WHEN 'e' THEN 'EXTERNAL' WHEN 'm' THEN 'MAIN' ELSE 'EXTENDED' END);
        END IF;
        IF e->>'compression' IS NOT NULL THEN
            EXECUTE format('ALTER MATERIALIZED VIEW %s ALTER COLUMN %I SET COMPRESSION %s',
                           rel::regclass, e->>'name', CASE e->>'compression' WHEN 'l' THEN 'lz4'
                                                           ELSE 'pglz' END);
        END IF;
    END LOOP;
    -- its owner before its indexes: an index expression is checked as the table's owner
    FOR e IN SELECT x FROM jsonb_array_elements(s->'owner') x LOOP
        lines := lines || softguard._undo_owner(op, e || jsonb_build_object('oid', rel));
    END LOOP;
    FOR e IN SELECT x FROM jsonb_array_elements(s->'indexes') x LOOP
        EXECUTE e->>'def';
        IF e->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON INDEX %I.%I IS %L', nsp_name, e->>'name', e->>'comment');
        END IF;
        IF (e->>'clustered')::boolean THEN
            EXECUTE format('ALTER MATERIALIZED VIEW %s CLUSTER ON %I', rel::regclass, e->>'name');
        END IF;
    END LOOP;
    FOR e IN SELECT x FROM jsonb_array_elements(s->'statistics') x LOOP
        EXECUTE e->>'def';
        IF to_regrole(e->>'owner') IS NOT NULL THEN
            EXECUTE format('ALTER STATISTICS %s OWNER TO %s', e->>'name', e->>'owner');
        END IF;
        IF e->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON STATISTICS %s IS %L', e->>'name', e->>'comment');
        END IF;
    END LOOP;
    IF (s->>'populated')::boolean THEN
        EXECUTE format('REFRESH MATERIALIZED VIEW %s', rel::regclass);
    END IF;
    RETURN lines || softguard._step(op, 're-made', rel::regclass::text,
        format('re-made materialized view %s%s', rel::regclass,
               CASE WHEN (s->>'populated')::boolean THEN ' (refreshed: its rows are those of now)'
                    ELSE ' (not populated, as it was)' END));
END $$;
REVOKE ALL ON FUNCTION softguard._undo_remake(bigint, jsonb) FROM PUBLIC;

-- Undo one operation (no cascade); returns what it restored.
-- Give a kept foreign server or language its name back (30_drop.sql _move: renamed
-- softguard_q<id>_<name>, in no schema). `now_name` is its current name (NULL: gone).
CREATE FUNCTION softguard._undo_rename_global(op bigint, s jsonb, now_name text,
                                              rename_to text)
RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target text := CASE WHEN (s->>'original')::boolean AND rename_to IS NOT NULL
                        THEN rename_to ELSE s->>'name' END;
BEGIN
    IF now_name IS DISTINCT FROM s->>'qname' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: %s %s is no longer kept as %s',
                             op, s->>'class', s->>'name', s->>'qname');
    END IF;
    IF softguard._name_taken(s->>'class', NULL, target, (s->>'oid')::oid) THEN
        RAISE EXCEPTION USING ERRCODE = '42710',
            MESSAGE = format('cannot undo operation %s: %s %I already exists (created '
                             'after the DROP)', op, s->>'class', target),
            HINT = 'use --rename-to NEW_NAME';
    END IF;
    EXECUTE format('ALTER %s %I RENAME TO %I', s->>'keyword', now_name, target);
    RETURN ARRAY[softguard._step(op, 'restored', quote_ident(target),
                                 format('restored %s %I', s->>'class', target))];
END $$;
REVOKE ALL ON FUNCTION softguard._undo_rename_global(bigint, jsonb, text, text) FROM PUBLIC;

-- The publication whose membership a DROP took (decision 0038): the one recorded (by oid),
-- or one created again since under its name by the same owner (a publication of another
-- role by that name is not it: the table would be published to whoever owns that one).
-- None: undo refuses, nothing changes.
CREATE FUNCTION softguard._publication_now(op bigint, m jsonb, what text) RETURNS name
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found_name name;
BEGIN
    SELECT p.pubname INTO found_name FROM pg_publication p WHERE p.oid = (m->>'pub')::oid;
    IF NOT FOUND THEN
        SELECT p.pubname INTO found_name FROM pg_publication p
         WHERE p.pubname = m->>'pub_name' AND p.pubowner = (m->>'pub_owner')::oid;
    END IF;
    IF found_name IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: publication %I, which %s belonged to, '
                             'no longer exists', op, m->>'pub_name', what),
            HINT = format('Create publication %I again as role %s, then undo: %s is added back '
                          'to it as it was. Undo puts nothing back meanwhile.', m->>'pub_name',
                          coalesce((SELECT r.rolname::text FROM pg_roles r
                                     WHERE r.oid = (m->>'pub_owner')::oid),
                                   'oid ' || (m->>'pub_owner')), what);
    END IF;
    RETURN found_name;
END $$;
REVOKE ALL ON FUNCTION softguard._publication_now(bigint, jsonb, text) FROM PUBLIC;

-- Add back the publication memberships a DROP took (_publications_step, _keep_column):
-- schemas first, then tables with their column list and row filter as they were. A table
-- or schema that is in the publication again (added some other way since) is refused
-- (42710) rather than given a second, different membership. Runs after the tables,
-- columns and schemas are back.
CREATE FUNCTION softguard._rejoin_publications(op bigint, tables jsonb, schemas jsonb)
RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines softguard.undo_step[] := '{}';
    m jsonb;
    pub name;
    nsp name;
    rel regclass;
BEGIN
    FOR m IN SELECT x FROM jsonb_array_elements(coalesce(schemas, '[]')) x LOOP
        SELECT n.nspname INTO nsp FROM pg_namespace n WHERE n.oid = (m->>'schema')::oid;
        pub := softguard._publication_now(op, m, 'schema ' || quote_ident(nsp));
        IF EXISTS (SELECT FROM pg_publication_namespace pn JOIN pg_publication p
                                ON p.oid = pn.pnpubid
                    WHERE p.pubname = pub AND pn.pnnspid = (m->>'schema')::oid) THEN
            RAISE EXCEPTION USING ERRCODE = '42710',
                MESSAGE = format('cannot undo operation %s: schema %I is in publication %I '
                                 'again (added since the DROP)', op, nsp, pub),
                HINT = format('ALTER PUBLICATION %I DROP TABLES IN SCHEMA %I, then undo: the '
                              'schema is added back to it.', pub, nsp);
        END IF;
        EXECUTE format('ALTER PUBLICATION %I ADD TABLES IN SCHEMA %I', pub, nsp);
        lines := lines || softguard._step(op, 're-added', quote_ident(nsp),
            format('re-added schema %I to publication %I', nsp, pub));
    END LOOP;
    FOR m IN SELECT x FROM jsonb_array_elements(coalesce(tables, '[]')) x LOOP
        -- live, and no later operation's (no row is written: the table's own code, which
        -- _need_table would look at, does not run)
        PERFORM softguard._need_live(op, 'pg_class'::regclass, (m->>'table')::oid,
                                     'publication ' || quote_ident(m->>'pub_name'),
                                     m->>'table_name');
        rel := (m->>'table')::oid::regclass;
        pub := softguard._publication_now(op, m, 'table ' || rel::text);
        IF EXISTS (SELECT FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                    WHERE p.pubname = pub AND pr.prrelid = rel) THEN
            RAISE EXCEPTION USING ERRCODE = '42710',
                MESSAGE = format('cannot undo operation %s: table %s is in publication %I '
                                 'again (added since the DROP)', op, rel, pub),
                HINT = format('ALTER PUBLICATION %I DROP TABLE %s, then undo: the table is '
                              'added back to it with its column list and row filter as they '
                              'were.', pub, rel);
        END IF;
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE ONLY %s%s%s', pub, rel,
                       (SELECT ' (' || string_agg(quote_ident(c), ', ' ORDER BY i) || ')'
                          FROM jsonb_array_elements_text(CASE jsonb_typeof(m->'columns')
                                   WHEN 'array' THEN m->'columns' ELSE '[]' END)
                               WITH ORDINALITY AS t(c, i)),
                       ' WHERE (' || (m->>'filter') || ')');
        lines := lines || softguard._step(op, 're-added', rel::text,
            format('re-added table %s to publication %I', rel, pub));
    END LOOP;
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._rejoin_publications(bigint, jsonb, jsonb) FROM PUBLIC;

-- The memberships the columns kept by operation `op` took (_keep_column), in order.
CREATE FUNCTION softguard._column_publications(op bigint) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_agg(m ORDER BY c.id, t.i), '[]')
      FROM softguard.captures c,
           jsonb_array_elements(CASE jsonb_typeof(c.info->'publications') WHEN 'array'
                                     THEN c.info->'publications' ELSE '[]' END)
               WITH ORDINALITY AS t(m, i)
     WHERE c.op_id = op AND c.event = 'column'
$$;
REVOKE ALL ON FUNCTION softguard._column_publications(bigint) FROM PUBLIC;

-- Make a kept server's user mapping again (30_drop.sql _keep_mappings, decision 0043), on
-- the server back under its name, with the options recorded in softguard.kept_mappings
-- (read here, as the ledger's owner, and never printed). Its role is found by oid only:
-- a role made since under the same name is another role and must not get these
-- credentials. A role dropped since gets nothing back, as its privileges (decision 0027):
-- directly, its DROP ROLE would have needed the mapping gone. A mapping for that role made
-- on the kept server since is refused (42710), nothing changed.
CREATE FUNCTION softguard._undo_mapping(op bigint, s jsonb) RETURNS softguard.undo_step[]
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

CREATE FUNCTION softguard._undo_one(op bigint, rename_to text) RETURNS softguard.undo_step[]
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
REVOKE ALL ON FUNCTION softguard._undo_one(bigint, text) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Data changes: captured rows back (DELETE, UPDATE, MERGE, TRUNCATE, soft delete)
-- ---------------------------------------------------------------------------------------

-- Undo of a data change: clear the soft-delete marks it wrote (by key, only on rows still
-- carrying that very mark: a row un-marked and marked again since is left alone), then
-- put back everything else it captured (_undo_captures).
CREATE FUNCTION softguard._undo_rows(op bigint, on_conflict text) RETURNS softguard.undo_step[]
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
REVOKE ALL ON FUNCTION softguard._undo_rows(bigint, text) FROM PUBLIC;

-- The row type that reads captured row texts of `columns` (rows of `rel`) back in the
-- DELETE, TRUNCATE and UPDATE restores: the table's own while its columns are exactly
-- those (names, types with their modifiers, order) and none is kept in its restore form,
-- else a temporary one (_row_type, tagged `tag`). Both parse a row text with the same
-- input functions and modifiers; the table's own needs no CREATE TYPE (catalog writes:
-- ~0.8 ms of a single-row undo, decision 0042).
-- A type renamed since no longer matches its recorded name: the temporary type then
-- resolves that name, as before.
CREATE FUNCTION softguard._capture_row_type(rel oid, columns jsonb, tag text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT columns @? '$[*][2]' AND softguard._columns(rel) = columns THEN
        RETURN rel::regclass::text;
    END IF;
    RETURN softguard._row_type(columns, tag);
END $$;
REVOKE ALL ON FUNCTION softguard._capture_row_type(oid, jsonb, text) FROM PUBLIC;

-- Put back the rows, sequence values and columns operation `op` captured: deleted rows
-- re-inserted, updated rows given their old values (by _row_key), tables parents first;
-- column captures go to _undo_column. Returns what it restored.
CREATE FUNCTION softguard._undo_captures(op bigint, on_conflict text) RETURNS softguard.undo_step[]
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

-- session_replication_role for the undo's writes (value 'replica', or the saved one back),
-- when this role may set it: a superuser, or a role granted SET on it (PG 15+; some
-- managed providers grant it to their admin role). Otherwise nothing: _undo_triggers_off
-- has disabled the triggers replica mode would have silenced (decision 0025).
CREATE FUNCTION softguard._replica(value text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF softguard._can_set_replica() THEN
        PERFORM set_config('session_replication_role', value, true);
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._replica(text) FROM PUBLIC;

CREATE FUNCTION softguard._can_set_replica() RETURNS boolean
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
-- about the caller itself: softguard init and serve report it (decision 0025)
GRANT EXECUTE ON FUNCTION softguard._can_set_replica() TO PUBLIC;

-- User triggers and rules that fire in replica mode (ENABLE ALWAYS, ENABLE REPLICA) on the
-- tables an undo of data changes writes into, their partitions and inheritance children:
-- disabled for the undo's own transaction, so that nothing but the captured values lands in
-- the restored rows. softguard's own triggers are left alone. Returns what
-- _undo_triggers_back puts back, parents first.
CREATE FUNCTION softguard._undo_triggers_off(op bigint) RETURNS jsonb
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

-- The triggers and rules _undo_triggers_off disabled, back to their exact state.
CREATE FUNCTION softguard._undo_triggers_back(saved jsonb) RETURNS void
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
REVOKE ALL ON FUNCTION softguard._undo_triggers_back(jsonb) FROM PUBLIC;

-- The rows of capture `cid` read back through row type `rtype` (_row_type), as a query.
-- OFFSET 0: the row text is parsed once, not once per column.
CREATE FUNCTION softguard._captured_src(rtype text, cid bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.format('SELECT (p.x).* FROM (SELECT r."row"::%s AS x'
                             ' FROM softguard.captured_rows r WHERE r.capture_id = %s OFFSET 0) p',
                             rtype, cid)
$$;
REVOKE ALL ON FUNCTION softguard._captured_src(text, bigint) FROM PUBLIC;

-- Undo of the UPDATE captures of table `rel` in operation `op` when the operation changed
-- keys, or the table has no key (40_capture.sql, "What a transition table alone cannot
-- tell undo"): last capture first, the rows whose key appeared are deleted, the old images
-- of the keys gone re-inserted, the others given their old values by key. Changed keys are
-- never paired, so a row whose new key is not there any more, or a gone key taken since,
-- refuses the undo (no --on-conflict skip: which old row to leave out is not known).
CREATE FUNCTION softguard._undo_changed(op bigint, rel oid, on_conflict text)
RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c softguard.captures;
    key text[];
    cols text[];
    ucols text[];
    rtype text;
    ktype text;
    src text;
    app text;
    gone text;
    match text;
    gmatch text;
    n_app bigint;
    n_found bigint;
    nbad bigint;
    bad text;
    ins bigint;
    upd bigint;
    inplace bigint;
    done bigint := 0;
    missing bigint := 0;
    overriding text;
    ins_sql text;     -- 'INSERT INTO rel (cols) ... FROM (': a source and ') s' follow
BEGIN
    FOR c IN SELECT * FROM softguard.captures x
              WHERE x.op_id = op AND x.relid = rel AND x.event = 'update' AND x.n_rows > 0
              ORDER BY x.id DESC LOOP
        rtype := softguard._row_type(c.columns, c.id::text);
        cols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                         AND a.attgenerated = ''
                         AND a.attname IN (SELECT x->>0 FROM jsonb_array_elements(c.columns) x)
                       ORDER BY a.attnum);
        ucols := ARRAY(SELECT a.attname::text FROM pg_attribute a
                        WHERE a.attrelid = rel AND a.attname = ANY (cols) AND a.attidentity <> 'a'
                        ORDER BY a.attnum);
        overriding := CASE WHEN EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = rel
                                         AND a.attidentity = 'a' AND a.attname = ANY (cols))
                           THEN 'OVERRIDING SYSTEM VALUE' ELSE '' END;
        src := softguard._restored_src(c.columns, rtype, c.id, rel::regclass::text);
        ins_sql := format('INSERT INTO %s (%s) %s SELECT %s FROM (', rel::regclass,
                          (SELECT string_agg(format('%I', x), ', ') FROM unnest(cols) x),
                          overriding,
                          (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(cols) x));
        IF c.info->'key' = 'null' THEN
            -- no key: the rows it left (as many of each as it left) must still be there
            EXECUTE format(
                'WITH want AS (SELECT r."row" AS x, count(*) AS m FROM softguard.captured_rows r'
                ' WHERE r.capture_id = %s GROUP BY 1),'
                ' have AS (SELECT t.tableoid AS o, t.ctid AS tid, row_number() OVER (PARTITION BY w.x) AS i,'
                ' w.m FROM %s t JOIN want w ON w.x = ROW(%s)::text),'
                ' del AS (DELETE FROM %s t USING have h WHERE h.i <= h.m AND t.tableoid = h.o'
                ' AND t.ctid = h.tid RETURNING 1)'
                ' SELECT (SELECT coalesce(sum(m), 0) FROM want), (SELECT count(*) FROM del)',
                c.info->>'appeared', rel::regclass,
                (SELECT string_agg(format('t.%I', x->>0), ', ' ORDER BY o)
                   FROM jsonb_array_elements(c.columns) WITH ORDINALITY y(x, o)),
                rel::regclass)
              INTO n_app, n_found;
            IF n_found < n_app THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s of the %s rows it changed in %s'
                                     ' (a table without a key) are not as it left them',
                                     op, n_app - n_found, n_app, rel::regclass),
                    HINT = 'Undo the later operations that changed or deleted them first.';
            END IF;
            -- the rows gone are kept as their text (_key_change_sql): read by plain columns
            ktype := softguard._row_type((SELECT k.columns FROM softguard.captures k
                                           WHERE k.id = (c.info->>'gone')::bigint), c.id || '_g');
            EXECUTE ins_sql || softguard._captured_src(ktype, (c.info->>'gone')::bigint) || ') s';
            GET DIAGNOSTICS ins = ROW_COUNT;
            PERFORM softguard._check_fks(op, rel, softguard._captured_src(ktype, (c.info->>'gone')::bigint));
            done := done + ins;
            CONTINUE;
        END IF;
        key := CASE WHEN c.info ? 'key' THEN ARRAY(SELECT jsonb_array_elements_text(c.info->'key'))
                    ELSE softguard._row_key(rel) END;
        IF key IS NULL OR cardinality(key) = 0 THEN
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('cannot undo operation %s: %s has no primary key to find the changed rows by',
                                 op, rel::regclass);
        END IF;
        match := (SELECT string_agg(format('t.%I = s.%I', x, x), ' AND ') FROM unnest(key) x);
        gone := NULL;
        ins := 0;
        IF c.info->>'appeared' IS NOT NULL THEN
            ktype := softguard._row_type((SELECT k.columns FROM softguard.captures k
                                           WHERE k.id = (c.info->>'appeared')::bigint), c.id || '_k');
            app := softguard._captured_src(ktype, (c.info->>'appeared')::bigint);
            gone := softguard._captured_src(ktype, (c.info->>'gone')::bigint);
            gmatch := (SELECT string_agg(format('g.%I = s.%I', x, x), ' AND ') FROM unnest(key) x);
            EXECUTE format('SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT FROM %s t WHERE %s))'
                           ' FROM (%s) s', rel::regclass, match, app)
              INTO n_app, n_found;
            IF n_found < n_app THEN
                RAISE EXCEPTION USING ERRCODE = '55000',
                    MESSAGE = format('cannot undo operation %s: %s of the %s rows of %s whose key it'
                                     ' changed no longer have that key (deleted or changed since)',
                                     op, n_app - n_found, n_app, rel::regclass),
                    HINT = 'Undo the later operations that changed or deleted them first.';
            END IF;
            EXECUTE format('SELECT count(*), string_agg(k, '', '') FILTER (WHERE n <= 5)'
                           ' FROM (SELECT format(%L, %s) AS k, row_number() OVER () AS n'
                           ' FROM (%s) s WHERE EXISTS (SELECT FROM %s t WHERE %s)) x',
                           '(' || array_to_string(key, ', ') || ')=(' ||
                               array_to_string(array_fill('%s'::text, ARRAY[cardinality(key)]), ', ') || ')',
                           (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(key) x),
                           gone, rel::regclass, match)
              INTO nbad, bad;
            IF nbad > 0 THEN
                RAISE EXCEPTION USING ERRCODE = '23505',
                    MESSAGE = format('cannot undo operation %s: %s of %s re-used since: %s%s',
                                     op, CASE WHEN nbad = 1 THEN '1 key' ELSE nbad || ' keys' END,
                                     rel::regclass, bad, CASE WHEN nbad > 5 THEN ', ...' ELSE '' END),
                    HINT = 'The operation changed these keys, so --on-conflict skip cannot leave'
                           ' their rows out: delete or re-key the rows that hold them now first.';
            END IF;
            EXECUTE format('DELETE FROM %s t USING (%s) s WHERE %s', rel::regclass, app, match);
            EXECUTE ins_sql || src || format(') s WHERE EXISTS (SELECT FROM (%s) g WHERE %s)', gone, gmatch);
            GET DIAGNOSTICS ins = ROW_COUNT;
        END IF;
        EXECUTE format('SELECT count(*) FROM (%s) s%s', src,
                       CASE WHEN gone IS NULL THEN ''
                            ELSE format(' WHERE NOT EXISTS (SELECT FROM (%s) g WHERE %s)', gone, gmatch) END)
          INTO inplace;
        EXECUTE format('UPDATE %s t SET (%s) = ROW(%s) FROM (%s) s WHERE %s%s',
                       rel::regclass,
                       (SELECT string_agg(format('%I', x), ', ') FROM unnest(ucols) x),
                       (SELECT string_agg(format('s.%I', x), ', ') FROM unnest(ucols) x),
                       src, match,
                       CASE WHEN gone IS NULL THEN ''
                            ELSE format(' AND NOT EXISTS (SELECT FROM (%s) g WHERE %s)', gone, gmatch) END);
        GET DIAGNOSTICS upd = ROW_COUNT;
        PERFORM softguard._check_fks(op, rel, src);
        done := done + ins + upd;
        missing := missing + inplace - upd;
    END LOOP;
    RETURN ARRAY[softguard._step(op, 'restored', rel::regclass::text,
                 format('restored old values of %s rows of %s%s', done, rel::regclass,
                        CASE WHEN missing > 0 THEN format(' (%s no longer exist)', missing)
                             ELSE '' END), done)];
END $$;
REVOKE ALL ON FUNCTION softguard._undo_changed(bigint, oid, text) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- ALTER TABLE: dropped columns back, types back
-- ---------------------------------------------------------------------------------------

-- The latest operation after `op`, still active, that dropped column `col` of `rel` or
-- changed its type (none: NULLs), its statement and 'drop' or 'type'.
CREATE FUNCTION softguard._column_holder(op bigint, rel oid, col text, OUT later bigint,
                                         OUT later_stmt text, OUT later_kind text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT cp.op_id, o.statement, coalesce(cp.info->>'kind', 'drop')
      FROM softguard.captures cp JOIN softguard.operations o ON o.id = cp.op_id
     WHERE cp.relid = rel AND cp.event = 'column' AND cp.info->>'name' = col
       AND coalesce(cp.info->>'kind', 'drop') IN ('drop', 'type') AND cp.op_id > op
       AND o.state = 'active'
     ORDER BY cp.op_id DESC LIMIT 1
$$;
REVOKE ALL ON FUNCTION softguard._column_holder(bigint, oid, text) FROM PUBLIC;

-- Before a column capture is used: the columns that find its rows (key or row image) must
-- be there with the types they had (a key may have changed type, unless it or its old
-- type is kept as stable text) (55006 with the holder when a later active operation
-- dropped or retyped one: --cascade; else 55000), and a row image may leave out only
-- columns its own operation dropped or retyped (_capture_column is PUBLIC: an image made
-- narrower by a forged call is refused, never trusted).
CREATE FUNCTION softguard._undo_key_check(op bigint, c softguard.captures) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k record;
    later bigint;
    later_stmt text;
    bad text;
BEGIN
    -- the key's columns lead c.columns, in order; what follows them is the capture's own
    -- (sg_value, sg_ord, ...), which a live column of the same name must not be read as
    FOR k IN SELECT x->>0 AS name, x->>1 AS typ,
                    (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                      WHERE a.attrelid = c.relid AND a.attname = x->>0 AND a.attnum > 0
                        AND NOT a.attisdropped) AS now
               FROM jsonb_array_elements(c.columns) WITH ORDINALITY e(x, ord)
              WHERE e.ord <= jsonb_array_length(coalesce(c.info->'key', '[]'))
                AND x->>0 IN (SELECT jsonb_array_elements_text(c.info->'key')) LOOP
        -- a key compares by value (its type may have changed since); an image as text, and
        -- so does a key kept as stable text (_kept_columns), whose type must not change
        CONTINUE WHEN k.now IS NOT NULL
                  AND (k.now = k.typ
                       OR NOT coalesce((c.info->>'image')::boolean, false)
                          AND NOT (softguard._image_stable(c)
                                   AND (softguard._image_col_stable(c.relid, k.name)
                                        OR softguard._image_unstable(to_regtype(k.typ)))));
        SELECT h.later, h.later_stmt INTO later, later_stmt
          FROM softguard._column_holder(op, c.relid, k.name) h;
        IF later IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '55006',
                MESSAGE = format('cannot undo operation %s: column %s.%I, which finds its rows, was %s since, held by operation %s (%s)',
                                 op, c.relid::regclass, k.name,
                                 CASE WHEN k.now IS NULL THEN 'dropped' ELSE 'changed' END,
                                 later, later_stmt),
                DETAIL = softguard._blocked_detail(later),
                HINT = format('Undo operation %s first, or use --cascade.', later);
        END IF;
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('cannot undo operation %s: column %s.%I, which finds its rows, %s',
                             op, c.relid::regclass, k.name,
                             CASE WHEN k.now IS NULL THEN 'is not there any more'
                                  ELSE format('is of type %s now, not %s', k.now, k.typ) END),
            HINT = 'Put the column back as it was, then undo again.';
    END LOOP;
    IF coalesce((c.info->>'image')::boolean, false) THEN
        SELECT string_agg(format('%I', x.name), ', ') INTO bad
          FROM jsonb_array_elements_text(coalesce(c.info->'excluded', '[]')) x(name)
         WHERE x.name <> c.info->>'name'
           AND NOT EXISTS (SELECT FROM softguard.captures cp
                            WHERE cp.op_id = op AND cp.relid = c.relid AND cp.event = 'column'
                              AND cp.info->>'name' = x.name
                              AND coalesce(cp.info->>'kind', 'drop') IN ('drop', 'type'));
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('cannot undo operation %s: its rows of %s.%I were kept without columns'
                                 ' it neither dropped nor retyped (%s), so they cannot be told apart',
                                 op, c.relid::regclass, c.info->>'name', bad);
        END IF;
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_key_check(bigint, softguard.captures) FROM PUBLIC;

-- Whether capture `c` keeps its row image as stable text (_capture_row, since ledger
-- version 8). One taken before keeps each image column in its type's own text, read back
-- into the type at undo and compared as text (decision 0022, "Stable images").
CREATE FUNCTION softguard._image_stable(c softguard.captures) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.created_at >= coalesce((SELECT min(m.applied_at) FROM softguard.migrations m
                                      WHERE m.version >= 8), '-infinity')
$$;
REVOKE ALL ON FUNCTION softguard._image_stable(softguard.captures) FROM PUBLIC;

-- The columns of capture `c`'s rows as _capture_row wrote them: c.columns, with text for
-- those kept as stable text (every column of a row image, a key column whose type
-- _image_col_stable names, the new value of a 'type_new' image capture). A capture taken
-- before ledger version 8 kept every column in its type's own text: c.columns.
CREATE FUNCTION softguard._kept_columns(c softguard.captures) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p softguard.captures := c;
    n integer := jsonb_array_length(c.columns);
    nkey integer;
    image boolean;
BEGIN
    IF NOT softguard._image_stable(c) OR jsonb_typeof(c.columns) IS DISTINCT FROM 'array' THEN
        RETURN c.columns;
    END IF;
    IF c.info->>'kind' = 'type_new' THEN
        SELECT * INTO p FROM softguard.captures WHERE id = (c.info->>'of')::bigint;
    END IF;
    nkey := jsonb_array_length(coalesce(p.info->'key', '[]'));
    image := coalesce((p.info->>'image')::boolean, false);
    RETURN (SELECT jsonb_agg(CASE WHEN (o <= nkey AND (image OR softguard._image_col_stable(c.relid, x->>0)))
                                       OR (image AND c.info->>'kind' = 'type_new' AND o = n)
                                  THEN jsonb_build_array(x->0, 'text')
                                  ELSE x END ORDER BY o)
              FROM jsonb_array_elements(c.columns) WITH ORDINALITY y(x, o));
END $$;
REVOKE ALL ON FUNCTION softguard._kept_columns(softguard.captures) FROM PUBLIC;

-- The condition that live row `l` of capture `c`'s table has the key of kept row `r`:
-- l.k = r.k for each key column, the live side as _capture_row kept it (_image_col) when
-- `c` keeps stable text.
CREATE FUNCTION softguard._key_match(c softguard.captures, l text, r text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(format('%s = %I.%I',
                             CASE WHEN softguard._image_stable(_key_match.c)
                                  THEN softguard._image_col((_key_match.c).relid, x.k, l)
                                  ELSE format('%I.%I', l, x.k) END,
                             r, x.k), ' AND ' ORDER BY x.o)
      FROM jsonb_array_elements_text((_key_match.c).info->'key') WITH ORDINALITY x(k, o)
$$;
REVOKE ALL ON FUNCTION softguard._key_match(softguard.captures, text, text) FROM PUBLIC;

-- The rows of a row-image capture as a query with positional names: k1 .. kn (the image),
-- then its own columns (sg_ord, sg_value or sg_new), so that no column name of the table
-- can collide with them. A stable image is text, never read back into its types (a domain
-- constraint added since is not checked on it, an enum label or a name not looked up).
CREATE FUNCTION softguard._image_src(c softguard.captures) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    nkey integer := jsonb_array_length(c.info->'key');
    cols jsonb;
BEGIN
    IF c.info->>'kind' = 'type_new' THEN
        nkey := jsonb_array_length(c.columns) - 2;
    END IF;
    cols := (SELECT jsonb_agg(CASE WHEN o <= nkey THEN jsonb_build_array('k' || o, x->1)
                                   ELSE x END ORDER BY o)
               FROM jsonb_array_elements(softguard._kept_columns(c)) WITH ORDINALITY y(x, o));
    -- an old value kept in its restore form comes out rebuilt (46_restore.sql)
    RETURN softguard._restored_src(cols, softguard._row_type(cols, 'img_' || c.id), c.id,
                                   c.relid::regclass::text, c.info->>'name');
END $$;
REVOKE ALL ON FUNCTION softguard._image_src(softguard.captures) FROM PUBLIC;

-- ROW(p.c1, ..., p.cn)::text in the C collation: a row image as text, NULL told from ''
-- (ROW(NULL::text) is '()', ROW(''::text) '("")'), compared as bytes. Over captured rows
-- `cols` are _image_keys (as _image_src names them); over live rows of capture `c`'s table
-- they are the key's column names, each as _capture_row kept it (_image_col) when `c`
-- keeps a stable image.
CREATE FUNCTION softguard._image_text(p text, cols text[], c softguard.captures DEFAULT NULL)
RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'ROW(' || array_to_string(ARRAY(SELECT CASE WHEN (_image_text.c).id IS NOT NULL
                                                           AND softguard._image_stable(_image_text.c)
                                                      THEN softguard._image_col((_image_text.c).relid, x.col, p)
                                                      ELSE format('%I.%I', p, x.col) END
                                             FROM unnest(cols) WITH ORDINALITY x(col, o) ORDER BY o),
                                     ', ')
           || ')::text COLLATE "C"'
$$;
REVOKE ALL ON FUNCTION softguard._image_text(text, text[], softguard.captures) FROM PUBLIC;

-- The positional names _image_src gives a captured image's n columns: k1 .. kn.
CREATE FUNCTION softguard._image_keys(n integer) RETURNS text[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT 'k' || i FROM generate_series(1, n) i ORDER BY i)
$$;
REVOKE ALL ON FUNCTION softguard._image_keys(integer) FROM PUBLIC;

-- A column capture: a dropped column (_undo_drop_column) or a type change (_undo_type;
-- its 'type_new' capture is read there).
-- A kept value that a domain's constraint now rejects (added NOT VALID over rows that break
-- it, or added while the column was gone) is not written back: PostgreSQL keeps such rows
-- but checks every value written. The undo is refused (23514), naming the constraint and
-- what to do (decision 0022, "Stable images").
CREATE FUNCTION softguard._undo_column(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dtype text;
    dom_schema text;
    dom text;
    con text;
    msg text;
BEGIN
    CASE coalesce(c.info->>'kind', 'drop')
        WHEN 'type' THEN
            RETURN softguard._undo_type(op, c);
        WHEN 'type_new' THEN
            RETURN '{}';  -- read by the undo of its 'type' capture
        ELSE
            RETURN softguard._undo_drop_column(op, c);
    END CASE;
EXCEPTION WHEN check_violation THEN
    GET STACKED DIAGNOSTICS dtype = PG_DATATYPE_NAME, dom_schema = SCHEMA_NAME,
                            con = CONSTRAINT_NAME, msg = MESSAGE_TEXT;
    IF dtype = '' THEN
        RAISE;
    END IF;
    dom := format('%I.%I', dom_schema, dtype);
    RAISE EXCEPTION USING ERRCODE = '23514',
        MESSAGE = format('cannot undo operation %s: a kept value of %s.%I breaks constraint %I of domain %s,'
                         ' which the rows held when they were kept did not have to pass (NOT VALID,'
                         ' or added since)', op, c.relid::regclass, c.info->>'name', con, dom),
        DETAIL = msg,
        HINT = format('Drop the constraint (ALTER DOMAIN %s DROP CONSTRAINT %I), undo again, then add'
                      ' it back with NOT VALID.', dom, con),
        SCHEMA = dom_schema, DATATYPE = dtype, CONSTRAINT = con;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_column(bigint, softguard.captures) FROM PUBLIC;

-- Undo of a dropped column: re-add it, put the values back by key, then its identity,
-- default, NOT NULL, constraints, indexes, comment.
-- A row-image capture (a table without a key): each live row whose other columns still
-- equal a captured image gets that image's value; live and captured rows of one image are
-- paired one to one (row_number on both sides), so rows unchanged since come back as the
-- multiset they were (identical images with different values: which of them gets which is
-- arbitrary, as nothing else tells them apart). Rows changed or added since get NULL, as
-- rows added since do with a key, and the result says how many.
-- An identity column: rows without a captured value get the values its sequence gives
-- next, then the identity comes back (kind, options, name when free) at the sequence state
-- that leaves.
CREATE FUNCTION softguard._undo_drop_column(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i jsonb := c.info;
    rel regclass := c.relid::regclass;
    rtype text;
    key text[] := ARRAY(SELECT jsonb_array_elements_text(c.info->'key'));
    image boolean := coalesce((c.info->>'image')::boolean, false);
    idn jsonb := nullif(c.info->'identity', 'null');
    x jsonb;
    n bigint;
    total bigint;
    nnew bigint := 0;
    tseq text := format('pg_temp.%I', 'sg_identity_' || c.id);
    st record;
    via_parent boolean;
    saved_srr text := current_setting('session_replication_role');
BEGIN
    PERFORM softguard._undo_key_check(op, c);
    -- A partition or inheritance child: re-adding the column to its parent (a capture of
    -- the same operation, undone first) added it here too; only its values remain to do.
    via_parent := EXISTS (
        SELECT FROM pg_attribute a WHERE a.attrelid = c.relid AND a.attname = i->>'name'
           AND a.attnum > 0 AND NOT a.attisdropped AND NOT a.attislocal
           AND format_type(a.atttypid, a.atttypmod) = i->>'type'
           AND EXISTS (SELECT FROM pg_inherits h JOIN softguard.captures pc ON pc.relid = h.inhparent
                        WHERE h.inhrelid = c.relid AND pc.op_id = op AND pc.event = 'column'
                          AND pc.info->>'kind' IS NULL AND pc.info->>'name' = i->>'name'));
    IF NOT via_parent AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = c.relid AND attname = i->>'name'
                AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION USING ERRCODE = '42701',
            MESSAGE = format('cannot undo operation %s: column %I of %s exists again (added after the DROP)',
                             op, i->>'name', rel);
    END IF;
    IF via_parent THEN
        NULL;
    ELSIF i->>'generated' IS NOT NULL THEN
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
    IF i->>'generated' IS NULL AND image THEN
        -- ctid names a row for the length of this statement (ADD COLUMN did not rewrite)
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE ONLY %s t SET %I = m.sg_value FROM ('
                       'SELECT l.tid, s.sg_value'
                       ' FROM (SELECT t.tid, t.k, row_number() OVER (PARTITION BY t.k) AS rn'
                       ' FROM (SELECT t.ctid AS tid, %s AS k FROM ONLY %s t) t) l'
                       ' JOIN (SELECT s.sg_value, s.k, row_number() OVER (PARTITION BY s.k) AS rn'
                       ' FROM (SELECT s.sg_value, %s AS k FROM (%s) s) s) s'
                       ' ON s.k = l.k AND s.rn = l.rn) m WHERE t.ctid = m.tid',
                       rel, i->>'name', softguard._image_text('t', key, c), rel,
                       softguard._image_text('s', softguard._image_keys(cardinality(key))), softguard._image_src(c));
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
    ELSIF i->>'generated' IS NULL THEN
        rtype := softguard._row_type(softguard._kept_columns(c), c.id::text);
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE %s t SET %I = s.sg_value FROM (SELECT %s FROM (SELECT r."row"::%s AS x'
                       ' FROM softguard.captured_rows r WHERE r.capture_id = %s OFFSET 0) p) s WHERE %s',
                       rel, i->>'name', softguard._restored_cols(softguard._kept_columns(c), 'p', rel::text,
                                                c.info->>'name'),
                       rtype, c.id, softguard._key_match(c, 't', 's'));
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
    END IF;
    IF idn IS NOT NULL THEN
        -- rows without a captured value: the values the sequence gives next (a temporary
        -- sequence at the recorded state; the identity's own needs NOT NULL first)
        EXECUTE format('DROP SEQUENCE IF EXISTS %s', tseq);
        EXECUTE format('CREATE TEMP SEQUENCE %I AS %s INCREMENT BY %s MINVALUE %s MAXVALUE %s START WITH %s %s',
                       'sg_identity_' || c.id, idn->>'type', idn->>'increment', idn->>'min',
                       idn->>'max', idn->>'start', CASE WHEN (idn->>'cycle')::boolean THEN 'CYCLE' ELSE 'NO CYCLE' END);
        PERFORM setval(tseq::regclass, (idn->>'last_value')::bigint, (idn->>'is_called')::boolean);
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE ONLY %s SET %I = nextval(%L::regclass) WHERE %I IS NULL',
                       rel, i->>'name', tseq, i->>'name');
        GET DIAGNOSTICS nnew = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
        EXECUTE format('SELECT last_value, is_called FROM %s', tseq) INTO st;
        EXECUTE format('DROP SEQUENCE %s', tseq);
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', rel, i->>'name');
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I ADD GENERATED %s AS IDENTITY (%s INCREMENT BY %s'
                       ' MINVALUE %s MAXVALUE %s START WITH %s CACHE %s %s)',
                       rel, i->>'name', idn->>'kind',
                       CASE WHEN to_regclass(idn->>'sequence') IS NULL
                            THEN 'SEQUENCE NAME ' || (idn->>'sequence') ELSE '' END,
                       idn->>'increment', idn->>'min', idn->>'max', idn->>'start', idn->>'cache',
                       CASE WHEN (idn->>'cycle')::boolean THEN 'CYCLE' ELSE 'NO CYCLE' END);
        PERFORM setval(pg_get_serial_sequence(rel::text, i->>'name')::regclass, st.last_value, st.is_called);
    END IF;
    IF i->>'default' IS NOT NULL AND i->>'generated' IS NULL THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT %s', rel, i->>'name', i->>'default');
    END IF;
    IF (i->>'not_null')::boolean THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', rel, i->>'name');
    END IF;
    FOR x IN SELECT e FROM jsonb_array_elements(i->'constraints') e LOOP
        CONTINUE WHEN via_parent AND EXISTS (SELECT FROM pg_constraint co WHERE co.conrelid = c.relid
                                                AND co.conname = x->>'name');
        IF x->>'def' ~ '^CHECK ' AND x->>'def' !~ ' NOT VALID$' THEN
            -- checked against the rows only once its functions are known to be harmless:
            -- validation runs them as the operator (_foreign_code)
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID', rel, x->>'name',
                           x->>'def');
            PERFORM softguard._refuse_foreign_code(op, c.relid, rel::text);
            EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', rel, x->>'name');
        ELSE
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', rel, x->>'name', x->>'def');
        END IF;
        IF x->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON CONSTRAINT %I ON %s IS %L', x->>'name', rel, x->>'comment');
        END IF;
    END LOOP;
    FOR x IN SELECT e FROM jsonb_array_elements(i->'indexes') e LOOP
        -- the parent's partitioned index made this partition's again
        CONTINUE WHEN via_parent AND EXISTS (SELECT FROM pg_class ic WHERE ic.relname = x->>'name'
                                                AND ic.relnamespace = (SELECT relnamespace FROM pg_class
                                                                        WHERE oid = c.relid));
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
    IF image OR idn IS NOT NULL THEN
        EXECUTE format('SELECT count(*) FROM ONLY %s', rel) INTO total;
    END IF;
    RETURN ARRAY[softguard._step(op, 're-added', format('%s.%I', rel, i->>'name'),
                                 format('re-added column %s.%I with %s values%s', rel, i->>'name', n,
                                        CASE WHEN total > n THEN format(
                                            ' (%s changed or added since: %s)',
                                            CASE WHEN total - n = 1 THEN '1 row' ELSE (total - n) || ' rows' END,
                                            CASE WHEN idn IS NOT NULL THEN 'new identity values'
                                                 ELSE 'NULL' END)
                                             ELSE '' END), n)];
END $$;
REVOKE ALL ON FUNCTION softguard._undo_drop_column(bigint, softguard.captures) FROM PUBLIC;

-- Undo of a type change (see 50_alter.sql's header for what holds).
-- A row-image capture (a table without a key): the captures before and after the change
-- are paired by image and by the rows' order (the rewrite kept it); a live row is restored
-- when its image and value are still a pair's image and new value (rows equal in both are
-- paired one to one, arbitrarily: nothing tells them apart). Its old value is put back by
-- the conversion itself (rows are named by ctid before the rewrite, which renames them).
CREATE FUNCTION softguard._undo_type(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i jsonb := c.info;
    rel regclass := c.relid::regclass;
    col text := c.info->>'name';
    old_type text := c.info->>'type';
    key text[] := ARRAY(SELECT jsonb_array_elements_text(c.info->'key'));
    image boolean := coalesce((c.info->>'image')::boolean, false);
    nk integer := jsonb_array_length(c.info->'key');
    pick text := format('pg_temp.%I', 'sg_type_pick_' || c.id);
    src_old text;
    src_new text;
    using_expr text;
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
    SELECT h.later, h.later_stmt, h.later_kind INTO later, later_stmt, later_kind
      FROM softguard._column_holder(op, c.relid, col) h;
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
    PERFORM softguard._undo_key_check(op, c);

    -- 1. the rows to restore: captured, and still holding the value the ALTER gave them
    --    (compared as text of the current type, read back in this session)
    EXECUTE format('DROP TABLE IF EXISTS %s', tmp);
    IF image THEN
        src_old := softguard._image_src(c);
        src_new := softguard._image_src(cn);
        EXECUTE format('CREATE TEMP TABLE %I AS SELECT l.toid, l.tid, p.sg_value'
                       ' FROM (SELECT t.toid, t.tid, t.k,'
                       ' row_number() OVER (PARTITION BY t.k ORDER BY t.toid, t.tid) AS rn'
                       ' FROM (SELECT t.tableoid AS toid, t.ctid AS tid, %s AS k FROM %s t) t) l'
                       ' JOIN (SELECT p.k, p.sg_value, row_number() OVER (PARTITION BY p.k ORDER BY p.sg_ord) AS rn'
                       ' FROM (SELECT %s AS k, w.sg_ord, o.sg_value'
                       ' FROM (SELECT o.*, %s AS img, row_number() OVER (PARTITION BY %s ORDER BY o.sg_ord) AS r'
                       ' FROM (%s) o) o'
                       ' JOIN (SELECT w.*, %s AS img, row_number() OVER (PARTITION BY %s ORDER BY w.sg_ord) AS r'
                       ' FROM (%s) w) w ON w.img = o.img AND w.r = o.r) p) p'
                       ' ON p.k = l.k AND p.rn = l.rn',
                       tmp_name, softguard._image_text('t', key || col, c), rel,
                       softguard._image_text('w', softguard._image_keys(nk) || 'sg_new'::text),
                       softguard._image_text('o', softguard._image_keys(nk)), softguard._image_text('o', softguard._image_keys(nk)), src_old,
                       softguard._image_text('w', softguard._image_keys(nk)), softguard._image_text('w', softguard._image_keys(nk)), src_new);
        EXECUTE format('CREATE INDEX ON %s (tid)', tmp);
    ELSE
        rt_old := softguard._row_type(softguard._kept_columns(c), c.id::text);
        rt_new := softguard._row_type(softguard._kept_columns(cn), cn.id::text);
        EXECUTE format('CREATE TEMP TABLE %I AS SELECT %s, o.sg_value'
                       ' FROM (SELECT %s FROM (SELECT r."row"::%s AS x FROM softguard.captured_rows r'
                       ' WHERE r.capture_id = %s OFFSET 0) p) o'
                       ' JOIN (SELECT (p.x).* FROM (SELECT r."row"::%s AS x FROM softguard.captured_rows r'
                       ' WHERE r.capture_id = %s OFFSET 0) p) w ON %s'
                       ' JOIN %s t ON %s'
                       ' WHERE t.%I::text IS NOT DISTINCT FROM w.sg_new::text',
                       tmp_name,
                       (SELECT string_agg(format('o.%I', k), ', ') FROM unnest(key) k),
                       softguard._restored_cols(softguard._kept_columns(c), 'p', rel::text,
                                                c.info->>'name'),
                       rt_old, c.id, rt_new, cn.id,
                       (SELECT string_agg(format('w.%I = o.%I', k, k), ' AND ') FROM unnest(key) k),
                       rel, softguard._key_match(c, 't', 'o'), col);
    END IF;

    -- 2. a per-row conversion back: explicit cast, else through text, else NULL
    EXECUTE format('DROP FUNCTION IF EXISTS %s(%s)', fn, a.typ);
    EXECUTE format('CREATE FUNCTION %s(v %s) RETURNS %s LANGUAGE plpgsql AS %L', fn, a.typ, old_type,
                   format('BEGIN RETURN v::%s; EXCEPTION WHEN OTHERS THEN BEGIN RETURN v::text::%s;'
                          ' EXCEPTION WHEN OTHERS THEN RETURN NULL; END; END', old_type, old_type));

    -- 3. rows added or changed since must convert back: a write made since is never lost
    --    (rows listed by key, or by image and value)
    EXECUTE format('SELECT count(*), string_agg(k, '', '') FILTER (WHERE n <= 5)'
                   ' FROM (SELECT format(%L, %s) AS k, row_number() OVER () AS n FROM %s t'
                   ' WHERE t.%I IS NOT NULL AND %s(t.%I) IS NULL'
                   ' AND NOT EXISTS (SELECT FROM %s s WHERE %s)) x',
                   '(' || array_to_string(ARRAY(SELECT format('%I', k) FROM unnest(
                              key || CASE WHEN image THEN ARRAY[col] ELSE '{}' END) k), ', ') || ')=(' ||
                       array_to_string(array_fill('%s'::text,
                           ARRAY[cardinality(key) + CASE WHEN image THEN 1 ELSE 0 END]), ', ') || ')',
                   (SELECT string_agg(format('t.%I', k), ', ')
                      FROM unnest(key || CASE WHEN image THEN ARRAY[col] ELSE '{}' END) k),
                   rel, col, fn, col, tmp,
                   CASE WHEN image THEN 's.toid = t.tableoid AND s.tid = t.ctid'
                        ELSE softguard._key_match(c, 't', 's') END)
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
    using_expr := format('%s(%I)', fn, col);
    IF image THEN
        -- the rows to restore get their captured value in the conversion (by the ctid they
        -- have before it), the others their value converted back
        EXECUTE format('DROP FUNCTION IF EXISTS %s(oid, tid, %s)', pick, a.typ);
        EXECUTE format('CREATE FUNCTION %s(o oid, r tid, v %s) RETURNS %s LANGUAGE plpgsql AS %L',
                       pick, a.typ, old_type,
                       format('DECLARE x %s; BEGIN SELECT s.sg_value INTO x FROM %s s'
                              ' WHERE s.tid = r AND s.toid = o; IF FOUND THEN RETURN x; END IF;'
                              ' RETURN %s(v); END', old_type, tmp, fn));
        using_expr := format('%s(tableoid, ctid, %I)', pick, col);
    END IF;
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s%s USING %s', rel, col, old_type,
                   CASE WHEN i->>'collation' IS NOT NULL THEN ' COLLATE ' || (i->>'collation') ELSE '' END,
                   using_expr);

    -- 5. the captured values back, by key (user triggers off, as for the other undos)
    IF image THEN
        EXECUTE format('SELECT count(*) FROM %s', tmp) INTO n;
        EXECUTE format('DROP FUNCTION %s(oid, tid, %s)', pick, a.typ);
    ELSE
        PERFORM softguard._replica('replica');
        EXECUTE format('UPDATE %s t SET %I = s.sg_value FROM %s s WHERE %s', rel, col, tmp,
                       softguard._key_match(c, 't', 's'));
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM softguard._replica(saved_srr);
    END IF;
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
REVOKE ALL ON FUNCTION softguard._undo_type(bigint, softguard.captures) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Large objects (67_large_objects.sql)
-- ---------------------------------------------------------------------------------------

-- Undo of a 'LARGE OBJECT' operation (dispatched from _undo): each kept object
-- gets its pages back exactly; an object unlinked since is re-created under its OID with
-- its owner and ACL. Runs as undo's owner (a superuser: pg_largeobject is a catalog).
CREATE FUNCTION softguard._undo_large_objects(op bigint) RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines softguard.undo_step[] := '{}';
    o softguard.operations;
    k softguard.large_objects;
    later bigint;
    recreated boolean;
    a record;
BEGIN
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF o.state <> 'active' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s is %s, not active', op, o.state);
    END IF;
    FOR k IN SELECT * FROM softguard.large_objects WHERE op_id = op ORDER BY loid LOOP
        SELECT min(l.op_id) INTO later
          FROM softguard.large_objects l JOIN softguard.operations lo ON lo.id = l.op_id
         WHERE l.loid = k.loid AND l.op_id > op AND lo.state = 'active';
        IF later IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = '55006',
                MESSAGE = format('cannot undo operation %s: operation %s wrote large object %s '
                                 'since', op, later, k.loid),
                DETAIL = softguard._blocked_detail(later),
                HINT = format('Undo operation %s first, or use --cascade.', later);
        END IF;
        recreated := NOT EXISTS (SELECT FROM pg_largeobject_metadata WHERE oid = k.loid);
        IF recreated THEN
            PERFORM pg_catalog.lo_create(k.loid);
            EXECUTE format('ALTER LARGE OBJECT %s OWNER TO %I', k.loid, k.owner_name);
            -- GRANTs record the grantees' dependencies; the exact ACL is then set as kept.
            FOR a IN SELECT * FROM aclexplode(k.acl) x
                      WHERE x.grantee <> (SELECT oid FROM pg_roles WHERE rolname = k.owner_name)
            LOOP
                EXECUTE format('GRANT %s ON LARGE OBJECT %s TO %s%s', a.privilege_type, k.loid,
                               CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                    ELSE quote_ident((SELECT rolname FROM pg_roles
                                                       WHERE oid = a.grantee)) END,
                               CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
            END LOOP;
            UPDATE pg_largeobject_metadata SET lomacl = k.acl WHERE oid = k.loid;
        END IF;
        DELETE FROM pg_largeobject WHERE loid = k.loid;
        INSERT INTO pg_largeobject (loid, pageno, data)
        SELECT p.loid, p.pageno, p.data FROM softguard.large_object_pages p
         WHERE p.op_id = op AND p.loid = k.loid ORDER BY p.pageno;
        lines := lines || softguard._step(op, CASE WHEN recreated THEN 're-created'
                                                   ELSE 'restored' END,
                                          format('large object %s', k.loid),
                                          format('large object %s %s (%s bytes)', k.loid,
                                                 CASE WHEN recreated
                                                      THEN 're-created with its contents, owner '
                                                           || quote_ident(k.owner_name)
                                                      ELSE 'contents restored' END,
                                                 k.n_bytes));
    END LOOP;
    PERFORM softguard._record_undo(o, '');
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo_large_objects(bigint) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Entry points
-- ---------------------------------------------------------------------------------------

-- Undo of a purged operation: a clear refusal that points at the archive.
CREATE FUNCTION softguard._refuse_purged(op bigint) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
BEGIN
    SELECT * INTO o FROM softguard.operations WHERE id = op;
    IF NOT FOUND OR o.state <> 'purged' THEN
        RETURN;
    END IF;
    IF o.purge_archive IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s was purged (at %s by %s): nothing is left to restore;'
                             ' it was archived first, to %s', op,
                             to_char(o.purged_at, 'YYYY-MM-DD HH24:MI:SS'), o.purged_by,
                             o.purge_archive),
            HINT = format('Load it by hand from the archive: see %s/README.txt (pg_restore for '
                          'the objects, psql for the captured rows).', o.purge_archive);
    END IF;
    RAISE EXCEPTION USING ERRCODE = '55000',
        MESSAGE = format('operation %s was purged (at %s by %s): nothing is left to restore'
                         ' (it was not archived)', op,
                         to_char(o.purged_at, 'YYYY-MM-DD HH24:MI:SS'), o.purged_by);
END $$;
REVOKE ALL ON FUNCTION softguard._refuse_purged(bigint) FROM PUBLIC;

-- Undo `op`: refuse a purged operation, then undo by kind; with cascade, first undo
-- (newest first) the later operations that hold something it needs: the 55006 errors that
-- say so carry DETAIL 'blocked_by=<op>' (softguard/contract.py), never read from the message.
CREATE FUNCTION softguard._undo(op bigint, rename_to text, "cascade" boolean,
                                on_conflict text)
RETURNS softguard.undo_step[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lines softguard.undo_step[] := '{}';
    done softguard.undo_step[];
    detail text;
    holder bigint;
    o softguard.operations;
    finished boolean := false;
    mine boolean := softguard._maintenance_begin();   -- the ledger's guards let undo write
BEGIN
    PERFORM softguard._refuse_purged(op);
    FOR attempt IN 1..1000 LOOP
        BEGIN
            SELECT * INTO o FROM softguard.operations WHERE id = op;
            IF FOUND AND o.kind IN ('DELETE', 'UPDATE', 'MERGE', 'TRUNCATE', 'ALTER TABLE')
               AND o.state = 'active' THEN
                IF rename_to IS NOT NULL THEN
                    RAISE EXCEPTION USING ERRCODE = '22023',
                        MESSAGE = format('--rename-to applies to DROP operations; operation %s is a %s',
                                         op, o.kind);
                END IF;
                done := softguard._undo_rows(op, coalesce(on_conflict, 'fail'));
            ELSIF FOUND AND (o.kind LIKE 'CREATE OR REPLACE %' OR o.kind = 'ALTER SEQUENCE')
                  AND o.state <> 'purged' THEN
                done := softguard._undo_definitions(op, rename_to);   -- 65_definitions.sql
            ELSIF FOUND AND o.kind = 'LARGE OBJECT' THEN
                done := softguard._undo_large_objects(op);   -- 67_large_objects.sql
            ELSE
                done := softguard._undo_one(op, rename_to);
            END IF;
            lines := lines || done;
            finished := true;
            EXIT;
        EXCEPTION WHEN SQLSTATE '55006' THEN
            IF NOT "cascade" THEN
                RAISE;
            END IF;
            GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
            holder := softguard._blocked_by(detail);
            IF holder IS NULL OR holder = op THEN
                RAISE;
            END IF;
            lines := lines || softguard._undo(holder, NULL, true, on_conflict);
        END;
    END LOOP;
    IF NOT finished THEN
        RAISE EXCEPTION USING ERRCODE = '55006',
            MESSAGE = format('cannot undo operation %s: later operations keep blocking it', op);
    END IF;
    PERFORM softguard._maintenance_end(mine);
    RETURN lines;
END $$;
REVOKE ALL ON FUNCTION softguard._undo(bigint, text, boolean, text) FROM PUBLIC;

-- undo_steps: put back what operation `op` took, in one transaction (the caller's), or fail
-- with nothing changed; on_conflict 'fail' or 'skip' (keys re-used since). One row per thing
-- restored (softguard.undo_step; `softguard undo` prints them). Who may undo: whoever may
-- EXECUTE undo_op(bigint, text, boolean), which is not granted to PUBLIC (the installing
-- superuser, or a role it was granted to): one grant decides it for both forms. EXECUTE
-- stays PUBLIC for that reason (the runbook's operator role holds only the undo_op grant);
-- every other caller gets 42501 before anything is read or written.
CREATE FUNCTION softguard.undo_steps(op bigint, rename_to text DEFAULT NULL,
                                     "cascade" boolean DEFAULT false,
                                     on_conflict text DEFAULT 'fail')
RETURNS SETOF softguard.undo_step
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
BEGIN
    IF NOT has_function_privilege(softguard._client_role(),
                                  'softguard.undo_op(bigint, text, boolean)', 'EXECUTE') THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = 'permission denied for function undo_steps',
            HINT = 'Undo needs EXECUTE on softguard.undo_op(bigint, text, boolean).';
    END IF;
    RETURN QUERY SELECT * FROM unnest(softguard._undo(op, rename_to, "cascade", on_conflict));
END $$;
REVOKE ALL ON FUNCTION softguard.undo_steps(bigint, text, boolean, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.undo_steps(bigint, text, boolean, text) TO PUBLIC;

-- undo_op: the same undo for SQL callers, one line of text per step
-- ('operation <op>: <detail>').
CREATE FUNCTION softguard.undo_op(op bigint, rename_to text, "cascade" boolean,
                                  on_conflict text)
RETURNS SETOF text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
    SELECT format('operation %s: %s', s.op, s.detail)
      FROM unnest(softguard._undo(op, rename_to, "cascade", on_conflict)) s
$$;
REVOKE ALL ON FUNCTION softguard.undo_op(bigint, text, boolean, text) FROM PUBLIC;

-- The three-argument form (on_conflict 'fail').
CREATE FUNCTION softguard.undo_op(op bigint, rename_to text DEFAULT NULL,
                                  "cascade" boolean DEFAULT false)
RETURNS SETOF text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows travel as text: written and read back in fixed formats, whatever the session's
SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C' AS $$
    SELECT softguard.undo_op(op, rename_to, "cascade", 'fail')
$$;
REVOKE ALL ON FUNCTION softguard.undo_op(bigint, text, boolean) FROM PUBLIC;
