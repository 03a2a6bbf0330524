-- Version 7: <leave this line as is>

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I DISABLE', e.evtname);
    END LOOP;
END $$;

-- section: keeper2 ----------------------------------------------------------------------
-- Kept schemas: every object with an owner in them belongs to softguard while kept, of
-- whatever kind (operators, collations, text search objects, ...); kept tables' policies
-- and kept schemas' default privileges name no role while kept; undo gives all back
-- (decision 0027, "Since then").
CREATE OR REPLACE FUNCTION softguard._catalog_owner(p_classid oid, p_objid oid) RETURNS oid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    col name;
    own oid;
BEGIN
    SELECT a.attname INTO col FROM pg_attribute a
     WHERE a.attrelid = p_classid AND a.attnum > 0 AND a.attname ~ 'owner$'
       AND a.atttypid = 'oid'::regtype;
    IF col IS NOT NULL THEN
        EXECUTE format('SELECT %I FROM %s WHERE oid = $1', col, p_classid::regclass)
           INTO own USING p_objid;
    END IF;
    RETURN own;
END $$;
REVOKE ALL ON FUNCTION softguard._catalog_owner(oid, oid) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._schema_objects(nsp oid) RETURNS TABLE (classid oid, objid oid)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cat record;
BEGIN
    FOR cat IN SELECT c.oid, n.attname AS nspcol
                 FROM pg_class c
                 JOIN pg_attribute n ON n.attrelid = c.oid AND n.attnum > 0
                                    AND n.attname ~ 'namespace$' AND n.atttypid = 'oid'::regtype
                WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relkind = 'r'
                  AND c.oid NOT IN ('pg_class'::regclass, 'pg_proc'::regclass,
                                    'pg_type'::regclass, 'pg_extension'::regclass)
                  AND EXISTS (SELECT FROM pg_attribute o
                               WHERE o.attrelid = c.oid AND o.attnum > 0
                                 AND o.attname ~ 'owner$' AND o.atttypid = 'oid'::regtype)
                ORDER BY c.oid LOOP
        RETURN QUERY EXECUTE format('SELECT %s::oid, x.oid FROM %s x WHERE x.%I = $1 ORDER BY 2',
                                    cat.oid, cat.oid::regclass, cat.nspcol) USING nsp;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._schema_objects(oid) FROM PUBLIC;
CREATE OR REPLACE FUNCTION softguard._untie(p_classid oid, p_objid oid, ident text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pols jsonb := '[]';
    defacls jsonb := '[]';
    x record;
    g record;
BEGIN
    FOR x IN SELECT p.polname, p.polroles FROM pg_policy p
              WHERE p_classid = 'pg_class'::regclass AND p.polrelid = p_objid
                AND p.polroles <> '{0}' ORDER BY p.polname LOOP
        pols := pols || jsonb_build_array(jsonb_build_object('name', x.polname, 'roles',
            (SELECT jsonb_agg(jsonb_build_object(
                        'role', CASE WHEN r = 0 THEN 'PUBLIC' ELSE r::regrole::text END,
                        'oid', r) ORDER BY o)
               FROM unnest(x.polroles) WITH ORDINALITY AS u (r, o))));
        EXECUTE format('ALTER POLICY %I ON %s TO PUBLIC', x.polname, ident);
    END LOOP;
    FOR x IN SELECT d.defaclrole, d.defaclobjtype, d.defaclacl,
                    CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
                         WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' END AS keyword
               FROM pg_default_acl d
              WHERE p_classid = 'pg_namespace'::regclass AND d.defaclnamespace = p_objid
                AND pg_has_role(current_user, d.defaclrole, 'MEMBER')
              ORDER BY d.defaclrole, d.defaclobjtype LOOP
        defacls := defacls || jsonb_build_array(jsonb_build_object(
            'role', x.defaclrole::regrole::text, 'role_oid', x.defaclrole,
            'objtype', x.defaclobjtype, 'keyword', x.keyword,
            'acl', (SELECT jsonb_agg(jsonb_build_object(
                        'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                        ELSE a.grantee::regrole::text END,
                        'grantee_oid', a.grantee, 'privilege', a.privilege_type,
                        'grantable', a.is_grantable) ORDER BY a.grantee, a.privilege_type)
                      FROM aclexplode(x.defaclacl) a)));
        FOR g IN SELECT DISTINCT a.grantee FROM aclexplode(x.defaclacl) a LOOP
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %s REVOKE ALL ON %s '
                           'FROM %s CASCADE', x.defaclrole::regrole, ident, x.keyword,
                           CASE WHEN g.grantee = 0 THEN 'PUBLIC'
                                ELSE quote_ident(g.grantee::regrole::text) END);
        END LOOP;
    END LOOP;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'policies', nullif(pols, '[]'), 'default_acls', nullif(defacls, '[]')));
END $$;
REVOKE ALL ON FUNCTION softguard._untie(oid, oid, text) FROM PUBLIC;
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
    grant_kw := CASE WHEN keyword IN ('TABLE', 'VIEW', 'MATERIALIZED VIEW', 'FOREIGN TABLE')
                     THEN 'TABLE'
                     WHEN keyword IN ('FUNCTION', 'PROCEDURE', 'AGGREGATE') THEN 'ROUTINE'
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
    IF NOT follows AND own <> keeper THEN
        EXECUTE format('ALTER %s %s OWNER TO softguard_keeper', keyword, ident);
    END IF;
    ties := softguard._untie(p_classid, p_objid, ident);
    IF grantees IS NOT NULL OR (NOT follows AND own <> keeper) OR ties <> '{}' THEN
        steps := jsonb_build_array(jsonb_build_object(
            'step', 'owner', 'classid', p_classid, 'oid', p_objid, 'keyword', keyword,
            'grant_keyword', grant_kw, 'identity', ident, 'owner', own::regrole::text,
            'owner_oid', own, 'owner_changed', NOT follows AND own <> keeper, 'acl', acl,
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
    kw text;
    qn text;
    acl jsonb;
    expires timestamptz;
    targets text;
    is_super boolean;
    held jsonb;             -- 'classid/objid/objsubid' -> the earlier operation holding it
    reg softguard.sessions := softguard._session(true);
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
    FOR r IN SELECT * FROM softguard._list(list) l WHERE l.original LOOP
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
        SELECT FROM softguard._list(list) l
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
      FROM softguard._list(list) l
     WHERE coalesce(softguard._is_quarantine_schema(l.home), false);
    SELECT coalesce(array_agg(l.object_name), '{}') INTO dropped_schemas
      FROM softguard._list(list) l WHERE l.object_type = 'schema';
    SELECT coalesce(array_agg(l.objid), '{}') INTO going
      FROM softguard._list(list) l
     WHERE l.classid = 'pg_class'::regclass AND l.objsubid = 0
       AND NOT coalesce(softguard._is_quarantine_schema(l.home), false);

    -- 2. Classify: what moves, what is a link to record and drop, what cannot be kept.
    FOR r IN SELECT * FROM softguard._list(list) l ORDER BY l.ord LOOP
        CONTINUE WHEN coalesce(softguard._is_quarantine_schema(r.home), false);  -- held already
        CONTINUE WHEN r.object_type = 'schema';
        CONTINUE WHEN r.home = ANY (dropped_schemas);          -- stays in its renamed schema
        IF r.object_type = 'table column' THEN
            CONTINUE WHEN r.owned;
            RAISE EXCEPTION USING ERRCODE = '0A000',
                MESSAGE = format('softguard cannot yet keep columns dropped by CASCADE (column %s)',
                                 r.object_identity),
                HINT = 'Drop the column with ALTER TABLE first, or run the statement without softguard.';
        END IF;
        IF r.classid = 'pg_class'::regclass THEN
            SELECT c.relkind INTO x FROM pg_class c WHERE c.oid = r.objid;
            IF x.relkind IN ('r', 'p', 'f', 'v', 'm') THEN
                moves := moves || jsonb_build_array(to_jsonb(r));  -- partitions move one by one
                CONTINUE;
            END IF;
        END IF;
        CONTINUE WHEN r.owned;                                   -- goes with its owner
        CASE
            WHEN r.object_type IN ('sequence', 'function', 'procedure', 'aggregate', 'type',
                                   'domain') THEN
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

    -- 3. Links from live objects to dropped ones, as a real DROP removes them. Constraints
    --    first (a foreign key may need a listed unique index), indexes last.
    FOR r IN SELECT e.* FROM jsonb_to_recordset(links) AS e(classid oid, objid oid,
                  object_type text, object_identity text, original boolean, ord integer)
             ORDER BY CASE e.object_type WHEN 'table constraint' THEN 0 WHEN 'index' THEN 2
                      ELSE 1 END, e.ord LOOP
        steps := steps || softguard._drop_link(r.classid, r.objid, r.object_identity, r.original);
    END LOOP;

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
    FOR r IN SELECT * FROM softguard._list(list) l WHERE l.object_type = 'schema' ORDER BY l.ord LOOP
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
        n := n + 1;
        steps := steps || softguard._move(op_id, n, r.classid, r.objid, r.original)
                       || softguard._disown(r.classid, r.objid);
    END LOOP;

    -- 7. The operation: objects (with where each went), estimates, the plan.
    -- in the statement's order (PostgreSQL lists them in its deletion order)
    SELECT string_agg(l.object_identity, ', '
                      ORDER BY nullif(strpos(lower(stmt), lower(l.object_name)), 0) NULLS LAST,
                               l.ord) INTO targets
      FROM softguard._list(list) l WHERE l.original;
    UPDATE softguard.operations o SET
        restore = steps,
        objects = (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'type', l.object_type, 'identity', l.object_identity,
                       'schema', l.schema_name, 'name', l.object_name,
                       'original', l.original, 'normal', l.normal,
                       'classid', l.classid, 'objid', l.objid, 'objsubid', l.objsubid,
                       'quarantined_as', CASE WHEN h.held_by IS NULL THEN
                           (pg_identify_object(l.classid, l.objid, l.objsubid)).identity END,
                       'held_by', h.held_by) ORDER BY l.ord), '[]')
              FROM softguard._list(list) l,
                   LATERAL (SELECT (held->>format('%s/%s/%s', l.classid, l.objid, l.objsubid))::bigint
                                   AS held_by) h),
        row_counts = jsonb_build_object('estimate', true, 'tables', (
            SELECT coalesce(jsonb_object_agg(l.object_identity,
                       CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END), '{}')
              FROM softguard._list(list) l JOIN pg_class c ON c.oid = l.objid
             WHERE l.classid = 'pg_class'::regclass AND l.objsubid = 0
               AND c.relkind IN ('r', 'm')
               AND NOT held ? format('%s/%s/%s', l.classid, l.objid, l.objsubid)))
     WHERE o.id = op_id;

    RETURN softguard._op_notice(coalesce(ctx->>'action', 'DROP'), targets, op_id, expires);
END $$;
CREATE OR REPLACE FUNCTION softguard._retie(op bigint, s jsonb, ident text) RETURNS softguard.undo_step[]
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
CREATE OR REPLACE FUNCTION softguard._undo_owner(op bigint, s jsonb) RETURNS softguard.undo_step[]
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
-- end section: keeper2 ------------------------------------------------------------------

DO $$
DECLARE
    e record;
BEGIN
    FOR e IN SELECT evtname FROM pg_event_trigger WHERE evtname LIKE 'softguard\_%' LOOP
        EXECUTE format('ALTER EVENT TRIGGER %I ENABLE ALWAYS', e.evtname);
    END LOOP;
END $$;
