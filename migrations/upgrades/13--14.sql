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
