-- Version 10 (section attack): the backstop's exemptions for softguard's own DDL are rows
-- the client cannot write, not the PL/pgSQL context stack (softguard.shell_drops,
-- softguard.probe_rewrites); where UPDATEs are denied only a soft-delete claim the proxy
-- sealed is a DELETE; an approval covers its own Query message, not the whole transaction;
-- undo refuses to run another non-superuser role's functions with the operator's rights.
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

-- section: attack -----------------------------------------------------------
-- The backstop's exemptions checked by rows the client cannot write (threat model G11;
-- decision 0029, "Since then").
CREATE TABLE softguard.shell_drops (
    pid     integer NOT NULL,
    xid     xid8 NOT NULL,
    type    oid NOT NULL
);
REVOKE ALL ON softguard.shell_drops FROM PUBLIC;
COMMENT ON TABLE softguard.shell_drops IS
    'the shell type _drop_shell is dropping, which the sql_drop backstop lets pass';

CREATE OR REPLACE FUNCTION softguard._shell_drop_mark(p_oid oid, dropping boolean) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM softguard.shell_drops s WHERE s.pid = pg_backend_pid();
    IF dropping AND EXISTS (SELECT FROM pg_type t
                             WHERE t.oid = p_oid AND t.typtype = 'p' AND NOT t.typisdefined) THEN
        INSERT INTO softguard.shell_drops (pid, xid, type)
        VALUES (pg_backend_pid(), pg_current_xact_id(), p_oid);
        RETURN true;
    END IF;
    RETURN false;
END $$;
REVOKE ALL ON FUNCTION softguard._shell_drop_mark(oid, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._shell_drop_mark(oid, boolean) TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard._drop_shell(p_oid oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ident text;
BEGIN
    SELECT format('%I.%I', n.nspname, t.typname) INTO ident
      FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE t.oid = p_oid AND t.typtype = 'p' AND NOT t.typisdefined;
    IF ident IS NOT NULL AND softguard._shell_drop_mark(p_oid, true) THEN
        EXECUTE format('DROP TYPE %s', ident);
        PERFORM softguard._shell_drop_mark(p_oid, false);
    END IF;
END $$;
GRANT EXECUTE ON FUNCTION softguard._drop_shell(oid) TO PUBLIC;

CREATE TABLE softguard.probe_rewrites (
    pid     integer NOT NULL,
    xid     xid8 NOT NULL,
    rel     oid NOT NULL
);
REVOKE ALL ON softguard.probe_rewrites FROM PUBLIC;
COMMENT ON TABLE softguard.probe_rewrites IS
    'table rewrites let through in probe mode; refused at ddl_command_end if still there';

CREATE OR REPLACE FUNCTION softguard._probe_rewrite_check() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid;
BEGIN
    SELECT p.rel INTO rel FROM softguard.probe_rewrites p WHERE p.pid = pg_backend_pid() LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard: changing the type of a column of %s cannot be made '
                             'reversible here', rel::regclass),
            DETAIL = 'The table was rewritten in softguard''s probe mode, which the statement '
                     'then left: only softguard''s probe may run it, and rolls it back.',
            HINT = 'Run the ALTER TABLE ... ALTER COLUMN ... TYPE as its own statement.';
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._probe_rewrite_check() FROM PUBLIC;
-- The event trigger runs as the session's role; this only ever refuses.
GRANT EXECUTE ON FUNCTION softguard._probe_rewrite_check() TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard._backstop_drop() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events text[] := (softguard._session(false)).capture;
    d record;
    stack text;
    by_alter boolean;   -- the statement itself dropped a column or an attribute
    ext boolean;        -- it dropped an extension, whose members go with it
    by_type boolean;    -- it dropped an attribute of a composite type (ALTER TYPE)
    cause text;         -- what the statement named
    governs text;
    denied jsonb := (softguard._session(false)).denied_tables;
BEGIN
    IF denied <> '[]' THEN
        -- tables a rule denies dropping (88_limits.sql), whatever dropped them
        PERFORM softguard._table_denied(denied, o.schema_name, o.object_name, 'drop', 'DROP')
           FROM pg_event_trigger_dropped_objects() o
          WHERE o.object_type IN ('table', 'materialized view') AND NOT o.is_temporary;
    END IF;
    IF events IS NULL OR NOT (events && ARRAY['drop', 'alter']) THEN
        RETURN;
    END IF;
    SELECT coalesce(bool_or(o.objsubid <> 0), false),
           coalesce(bool_or(o.object_type = 'extension'), false),
           coalesce(bool_or(o.object_type = 'composite type column'), false),
           string_agg(CASE WHEN o.object_type = 'composite type column'
                           THEN 'attribute ' ELSE o.object_type || ' ' END
                      || o.object_identity, ', ')
      INTO by_alter, ext, by_type, cause
      FROM pg_event_trigger_dropped_objects() o WHERE o.original;
    FOR d IN SELECT * FROM pg_event_trigger_dropped_objects() o
              WHERE NOT o.is_temporary AND (o.original OR o.normal) LOOP
        IF d.object_type IN ('table column', 'composite type column') THEN
            governs := CASE WHEN by_alter THEN 'alter' ELSE 'drop' END;
        ELSIF d.object_type IN ('table', 'materialized view', 'sequence') THEN
            governs := 'drop';
        ELSIF d.object_type IN ('schema', 'view', 'function', 'procedure', 'aggregate', 'type',
                                'domain')
              AND NOT (ext AND NOT d.original) THEN
            -- an extension's members report as normal dependents: its own functions and
            -- types cannot be told from others defined over them, so they pass with it
            governs := 'drop';
        ELSE
            CONTINUE;
        END IF;
        CONTINUE WHEN NOT governs = ANY (events);
        IF d.object_type = 'composite type column' THEN
            -- its values live on in columns of the type (typed tables report their own
            -- 'table column'): lost only where such columns exist
            CONTINUE WHEN NOT EXISTS (
                SELECT FROM pg_class r
                  JOIN pg_type t ON t.oid = r.reltype
                  JOIN pg_type u ON u.oid IN (t.oid, t.typarray)
                                 OR (u.typtype = 'd' AND u.typbasetype IN (t.oid, t.typarray))
                  JOIN pg_attribute a ON a.atttypid = u.oid AND a.attnum > 0
                                     AND NOT a.attisdropped
                  JOIN pg_class c ON c.oid = a.attrelid AND c.relkind IN ('r', 'p', 'm')
                 WHERE r.oid = d.objid);
        ELSIF d.object_type = 'type' THEN
            -- drop_op removes shell types (nothing to keep) for real, through _drop_shell:
            -- the statement drops the one shell type marked (30_drop.sql) and nothing else
            CONTINUE WHEN NOT EXISTS (
                SELECT FROM pg_event_trigger_dropped_objects() o
                 WHERE NOT EXISTS (SELECT FROM softguard.shell_drops s
                                    WHERE s.pid = pg_backend_pid()
                                      AND s.xid = pg_current_xact_id()
                                      AND s.type = o.objid AND o.object_type = 'type'));
        ELSIF d.object_type = 'table column' AND by_alter THEN
            -- alter_op captured every column its statement drops before running it (it
            -- probes that very statement); a column dropped anywhere else is lost, as is
            -- one that code of the client's drops while alter_op runs its statement (not
            -- kept by the operation of that call, decision 0028).
            GET DIAGNOSTICS stack = PG_CONTEXT;
            CONTINUE WHEN stack ~ '(^|\n)PL/pgSQL function softguard\.alter_op\(text,jsonb,text\) line [0-9]+ at EXECUTE'
                      AND (NOT softguard._protected_table(d.objid)  -- a foreign child's
                           OR EXISTS (SELECT FROM softguard.captures c
                                       WHERE c.op_id = softguard._alter_executing()
                                         AND c.relid = d.objid AND c.event = 'column'
                                         AND c.info->>'kind' IS NULL
                                         AND (c.info->>'attnum')::integer = d.objsubid));
            -- a column a DROP ... CASCADE took, kept by drop_op before it dropped it
            -- (_quarantine, decision 0029)
            CONTINUE WHEN stack ~ '(^|\n)PL/pgSQL function softguard\._drop_kept_column\(oid,integer\) line [0-9]+ at EXECUTE'
                      AND (NOT softguard._protected_table(d.objid)
                           OR EXISTS (SELECT FROM softguard.captures c
                                        JOIN softguard.operations o ON o.id = c.op_id
                                       WHERE o.txid = pg_current_xact_id() AND o.state = 'active'
                                         AND o.kind LIKE 'DROP %'
                                         AND c.relid = d.objid AND c.event = 'column'
                                         AND c.info->>'kind' IS NULL
                                         AND (c.info->>'attnum')::integer = d.objsubid));
        END IF;
        IF d.original AND NOT by_type THEN
            PERFORM softguard._backstop_refuse(format(
                CASE WHEN d.object_type = 'table column' THEN 'ALTER TABLE DROP COLUMN %2$s'
                     ELSE 'DROP %1$s %2$s' END, upper(d.object_type), d.object_identity));
        END IF;
        RAISE EXCEPTION USING ERRCODE = '0A000',
            MESSAGE = format('softguard: dropping %s would take %s with it, which cannot be '
                             'made reversible here', cause,
                             CASE WHEN d.object_type = 'composite type column'
                                  THEN 'its values in the columns of that type'
                                  ELSE d.object_type || ' ' || d.object_identity END),
            DETAIL = 'softguard keeps tables, columns and definitions only when they are '
                     'dropped by a statement of their own kind that comes through softguard.',
            HINT = CASE WHEN d.object_type IN ('table column', 'composite type column')
                        THEN 'Drop the dependent columns first (ALTER TABLE ... DROP COLUMN '
                             'through softguard keeps them), then run this statement again.'
                        ELSE format('Drop the dependent %s first (through softguard, which '
                                    'keeps it), then run this statement again.', d.object_type)
                   END;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_drop() FROM PUBLIC;
-- The event trigger runs as the session's role; this only ever refuses.
GRANT EXECUTE ON FUNCTION softguard._backstop_drop() TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard._backstop_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid := pg_event_trigger_table_rewrite_oid();
    events text[];
    stack text;
    lost text;
BEGIN
    IF pg_event_trigger_table_rewrite_reason() & 4 = 0 THEN
        RETURN;                            -- persistence, a default, an access method
    END IF;
    events := (softguard._session(false)).capture;
    IF events IS NULL OR NOT ('alter' = ANY (events)) OR NOT softguard._protected_table(rel) THEN
        RETURN;
    END IF;
    IF current_setting('softguard.probe', true) = 'on' THEN
        -- the probe never keeps what it runs (20_catalog.sql): its statement ends in SGPRB
        -- at ddl_command_end. The setting is the session's to write, and code of its own
        -- (a USING expression) can switch it off while the rewrite runs: the row below,
        -- which only a rollback removes, makes ddl_command_end refuse such a statement.
        INSERT INTO softguard.probe_rewrites (pid, xid, rel)
        VALUES (pg_backend_pid(), pg_current_xact_id(), rel);
        RETURN;
    END IF;
    GET DIAGNOSTICS stack = PG_CONTEXT;
    IF stack ~ '(^|\n)PL/pgSQL function softguard\.alter_op\(text,jsonb,text\) line [0-9]+ at EXECUTE' THEN
        WITH RECURSIVE up(r) AS (
            SELECT rel
            UNION
            SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.r
        ), caps AS (
            SELECT c.info FROM softguard.captures c
              JOIN softguard.operations o ON o.id = c.op_id
             WHERE o.id = softguard._alter_executing()
               AND o.txid = pg_current_xact_id() AND o.state = 'active'
               AND o.kind = 'ALTER TABLE' AND c.event = 'column'
               AND c.info->>'kind' = 'type' AND c.relid IN (SELECT r FROM up)
        )
        SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum) INTO lost
          FROM pg_attribute a
         WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
           AND NOT EXISTS (SELECT FROM caps WHERE caps.info->>'name' = a.attname)
           AND NOT EXISTS (SELECT FROM caps
                            WHERE caps.info->'types'->>(rel::text || '.' || a.attname)
                                  = format_type(a.atttypid, a.atttypmod));
        IF lost IS NULL THEN
            RETURN;
        END IF;
    ELSE
        lost := NULL;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '0A000',
        MESSAGE = format('softguard: changing the type of %s%s cannot be made reversible here',
                         CASE WHEN lost IS NULL THEN 'a column of ' ELSE 'column(s) ' || lost || ' of ' END,
                         rel::regclass),
        DETAIL = 'softguard keeps a column''s values across a type change only when the ALTER '
                 'TABLE comes through softguard on its own, not from a function, procedure or '
                 'DO block.',
        HINT = 'Run the ALTER TABLE ... ALTER COLUMN ... TYPE as its own statement.';
END $$;
REVOKE ALL ON FUNCTION softguard._backstop_rewrite() FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._capture_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- Reached in probe mode only when sql_drop did not fire: nothing was dropped.
    IF current_setting('softguard.probe', true) = 'on' THEN
        RAISE EXCEPTION USING ERRCODE = 'SGPRB', MESSAGE = 'softguard probe', DETAIL = '[]';
    END IF;
    PERFORM softguard._probe_rewrite_check();  -- probe mode left mid-statement (85_backstop.sql)
END $$;
REVOKE ALL ON FUNCTION softguard._capture_ddl_end() FROM PUBLIC;

-- A soft-delete claim judged a DELETE under denied UPDATEs only when the proxy sealed it
-- (decision 0021, "Since then").
CREATE OR REPLACE FUNCTION softguard._sd_sealed(rel oid, sd text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i jsonb;
BEGIN
    BEGIN
        i := sd::jsonb;
    EXCEPTION WHEN OTHERS THEN
        RETURN false;                  -- not even JSON: no claim of softguard's
    END;
    RETURN jsonb_typeof(i) = 'object'
       AND to_regclass(i->>'table') IS NOT DISTINCT FROM rel::regclass
       AND coalesce(softguard._marked('soft_delete ' || (i->>'table'),
                                      jsonb_build_object('column', i->>'column',
                                                         'by_column', i->'by_column',
                                                         'mark_kind', i->>'mark_kind'),
                                      i->>'seal'),
                    true);
END $$;
REVOKE ALL ON FUNCTION softguard._sd_sealed(oid, text) FROM PUBLIC;

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
        -- DELETE when softguard's rewrite made the claim (sealed, 60_soft_delete.sql); it
        -- is an UPDATE too unless the transition tables prove the claim
        sd := CASE WHEN ev = 'update' AND pg_trigger_depth() = 1
                   THEN current_setting('softguard.sd_' || TG_RELID::text, true) END;
        PERFORM softguard._table_denied(denied, TG_TABLE_SCHEMA, TG_TABLE_NAME,
                                        CASE WHEN sd <> '' THEN 'delete' ELSE ev END,
                                        CASE WHEN sd <> '' THEN 'DELETE' ELSE TG_OP END);
        IF sd <> '' AND NOT softguard._sd_sealed(TG_RELID, sd) THEN
            PERFORM softguard._table_denied(denied, TG_TABLE_SCHEMA, TG_TABLE_NAME, 'update',
                                            TG_OP);
        END IF;
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
            -- the session can write the setting: a statement that did more than mark rows
            -- is the UPDATE it is, captured whole whatever the session captures ...
            EXECUTE shape.exact INTO sd_exact;
            IF denied <> '[]' AND NOT sd_exact THEN
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
            IF n = 0 THEN
                RETURN NULL;
            END IF;
            IF lim IS NOT NULL THEN        -- the rows this soft delete marked, 88_limits.sql
                PERFORM softguard._limit_rows(k, n, lim, lim_by, ident);
            END IF;
            event := 'soft_delete';
            cols := shape.columns;
            info := (sdi - 'statement') || jsonb_build_object('key', to_jsonb(shape.key));
            stmt := sdi->>'statement';
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
        IF n < 64 THEN
            IF n > 0 THEN                  -- an assignment: as cur_op's below
                kept := softguard._budget_take(k, need, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
                                                                   ELSE 'UPDATE' END, ident);
            END IF;
        ELSIF NOT softguard._budget_fits(k, TG_RELID) THEN
            SELECT coalesce(sum(pg_column_size(o)), 0) INTO n FROM sg_old o;
            PERFORM softguard._budget_take(k, n, true, CASE ev WHEN 'delete' THEN 'DELETE FROM'
                                                                ELSE 'UPDATE' END, ident);
        END IF;
        cid := nextval('softguard.captures_id_seq'::regclass);
        IF ev = 'delete' AND EXISTS (SELECT FROM pg_inherits i
                                      WHERE i.inhparent = TG_RELID OR i.inhrelid = TG_RELID) THEN
            inh := softguard._inherited_claim(TG_RELID, ev);   -- no call for a plain table
        END IF;
        -- columns holding enum / reg* values are kept in their restore form (46_restore.sql)
        cols := softguard._capture_columns(TG_RELID);
        IF inh IS NULL AND NOT cols @? '$[*][2]' THEN
        INSERT INTO softguard.captured_rows (capture_id, "row") SELECT cid, o::text FROM sg_old o;
        ELSIF inh IS NULL THEN
            EXECUTE format('INSERT INTO softguard.captured_rows (capture_id, "row")'
                           ' SELECT $1, %s FROM sg_old o', softguard._capture_expr(cols, 'o')) USING cid;
        ELSE cols := softguard._columns(TG_RELID);     -- inherited rows: as their text
            EXECUTE softguard._inherited_sql(TG_RELID, inh) USING cid; END IF;
        GET DIAGNOSTICS n = ROW_COUNT;
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
    IF info ? 'appeared' OR inh IS NOT NULL THEN
        PERFORM softguard._capture_more(op, cid, TG_RELID, info, inh);
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._capture_rows() FROM PUBLIC;

-- An approval covers the approved statement, not its transaction's later ones (decision
-- 0020, "Since then").
CREATE OR REPLACE FUNCTION softguard._approval_gate(p_id text, p_sqlstate text, p_message text,
                                         p_hint text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sent text := current_query();
    client text := softguard._client_text(current_query());
BEGIN
    IF client IS DISTINCT FROM sent THEN   -- the proxy's marker is there
        UPDATE softguard.approvals a
           SET state = 'used', used_at = statement_timestamp(), used_pid = pg_backend_pid(),
               used_xact = pg_current_xact_id()
         WHERE a.id = p_id AND a.state = 'approved'
           AND a.decided_at > now() - interval '1 hour'
           AND a.role = session_user
           AND a.statement_sha = softguard._approval_sha(session_user::text,
                                                         current_database()::text, client);
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    RAISE EXCEPTION USING ERRCODE = p_sqlstate, MESSAGE = p_message, HINT = p_hint;
END $$;
REVOKE ALL ON FUNCTION softguard._approval_gate(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._approval_gate(text, text, text, text) TO PUBLIC;

CREATE OR REPLACE FUNCTION softguard._approved_here() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM softguard.approvals a
                    WHERE a.used_pid = pg_backend_pid()
                      AND a.used_xact = pg_current_xact_id_if_assigned()
                      -- the retry's own Query message (the gate and the approved text):
                      -- not the later statements of its transaction
                      AND a.used_at = statement_timestamp())
$$;
REVOKE ALL ON FUNCTION softguard._approved_here() FROM PUBLIC;

-- Undo refuses to write rows where that would run a function of another, non-superuser role
-- (threat model G9).
CREATE OR REPLACE FUNCTION softguard._foreign_code(rel oid) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE types(t) AS (
        SELECT a.atttypid FROM pg_attribute a
         WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
        UNION
        SELECT u FROM types JOIN pg_type y ON y.oid = types.t,
               LATERAL (VALUES (nullif(y.typbasetype, 0)), (nullif(y.typelem, 0))) v(u)
         WHERE u IS NOT NULL
    ), parts(classid, objid) AS (
        SELECT 'pg_class'::regclass::oid, i.indexrelid FROM pg_index i WHERE i.indrelid = rel
        UNION ALL
        SELECT 'pg_constraint'::regclass::oid, k.oid FROM pg_constraint k
         WHERE k.conrelid = rel OR k.contypid IN (SELECT t FROM types)
        UNION ALL
        SELECT 'pg_attrdef'::regclass::oid, d.oid FROM pg_attrdef d WHERE d.adrelid = rel
    )
    SELECT string_agg(DISTINCT format('%s (owned by %I)', p.oid::regprocedure, r.rolname), ', ')
      FROM parts JOIN pg_depend d ON d.classid = parts.classid AND d.objid = parts.objid
                                 AND d.refclassid = 'pg_proc'::regclass
      JOIN pg_proc p ON p.oid = d.refobjid
      JOIN pg_roles r ON r.oid = p.proowner
     WHERE NOT r.rolsuper AND r.rolname <> current_user
$$;
REVOKE ALL ON FUNCTION softguard._foreign_code(oid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION softguard._refuse_foreign_code(op bigint, rel oid, ident text) RETURNS void
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

CREATE OR REPLACE FUNCTION softguard._need_table(op bigint, rel oid, ident text) RETURNS void
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

CREATE OR REPLACE FUNCTION softguard._undo_drop_column(op bigint, c softguard.captures) RETURNS softguard.undo_step[]
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

-- end section: attack -------------------------------------------------------

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
