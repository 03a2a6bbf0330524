-- softguard's database half: schemas, ledger tables, their grants and the ledger's guard.
--
-- The install script is the files of migrations/install/ in name order (one transaction,
-- serialised by an advisory lock, as a superuser: event triggers need one; see
-- softguard/ledger/migrate.py and docs/decisions/0010-sql-layout-and-versioning.md).
-- Editing a file here changes the install: add the matching reviewed upgrade script to
-- migrations/upgrades/ (the upgrade test compares the two).
--
-- What always holds:
-- * An operation row exists if and only if the transaction that did its work committed
--   (the row is written by that same transaction).
-- * Nothing is dropped without a way back: an object a DROP would remove is either moved into
--   quarantine, or its definition is recorded in the operation's restore plan before it is
--   dropped; anything softguard cannot keep makes drop_op fail with 0A000 (the caller's
--   transaction aborts, nothing is lost). Design: docs/decisions/0005-reversible-drop.md.
-- * Rows are captured in the database, in the transaction that removes or changes them
--   (40_capture.sql; docs/decisions/0006-row-capture.md). Captured rows are stored once, as the
--   text of the row (record_out): softguard.captured_rows (capture_id, row); a large DELETE
--   or TRUNCATE capture of a table of built-in types in a table of its own instead,
--   softguard_rows.c<capture id>, typed (decision 0030);
--   softguard.captures holds one row per trigger firing (operation, table, event, count,
--   the column list with types, to read the rows back whatever the table looks like at undo).
-- * Quarantine (schema softguard_quarantine, renamed schemas softguard_q<op>_<name>) and the
--   ledger tables are not accessible to PUBLIC.
-- * The ledger's rows are removed, and an operation's state changed, only by softguard's own
--   undo and purge (the guards below, keyed on softguard.maintenance, ENABLE ALWAYS); an
--   operation that records no work done does not commit (verify_operation). Threat model:
--   docs/threat-model.md, G8.

CREATE SCHEMA softguard;
CREATE SCHEMA softguard_quarantine;
-- Large DELETE / TRUNCATE captures, one table per capture in the table's own column types
-- (softguard_rows.c<capture id>; 40_capture.sql, decision 0030). Nothing granted.
CREATE SCHEMA softguard_rows;
REVOKE ALL ON SCHEMA softguard FROM PUBLIC;
REVOKE ALL ON SCHEMA softguard_quarantine FROM PUBLIC;
REVOKE ALL ON SCHEMA softguard_rows FROM PUBLIC;
-- USAGE only, so that any role can CALL softguard.drop_op (the proxy rewrites the client's
-- DROP into that CALL, run as the client's role); every table and every internal function
-- below is revoked from PUBLIC.
GRANT USAGE ON SCHEMA softguard TO PUBLIC;
COMMENT ON SCHEMA softguard IS 'softguard ledger and functions (do not edit by hand)';
COMMENT ON SCHEMA softguard_quarantine IS 'objects dropped through softguard, kept until purged';
COMMENT ON SCHEMA softguard_rows IS 'large row captures, one table per capture (do not edit by hand)';

-- One row per script applied to this database: the install of version N (name
-- 'softguard--N.sql'), then each upgrade (name 'N--N+1.sql'). The install's version is the
-- highest; see docs/decisions/0010-sql-layout-and-versioning.md.
CREATE TABLE softguard.migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON softguard.migrations FROM PUBLIC;
-- The ledger version is not a secret: the proxy reads it as the client's role.
GRANT SELECT ON softguard.migrations TO PUBLIC;

CREATE TABLE softguard.operations (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    db_role           text NOT NULL DEFAULT session_user,
    "current_role"    text,
    application_name  text,
    client_addr       text,
    statement         text NOT NULL,
    kind              text NOT NULL,            -- 'DROP TABLE', 'DROP SCHEMA', ..., 'UNDO'
    objects           jsonb NOT NULL,           -- see softguard._quarantine
    row_counts        jsonb,                    -- {"estimate": true, "tables": {...}}
    state             text NOT NULL DEFAULT 'active'
                      CHECK (state IN ('active', 'undone', 'purged')),
    undone_at         timestamptz,
    undone_by         text,
    purged_at         timestamptz,
    purged_by         text,
    undo_of           bigint REFERENCES softguard.operations (id),
    restore           jsonb NOT NULL,           -- ordered steps; undo runs them backwards
    txid              xid8 DEFAULT pg_current_xact_id(),
    purge_archive     text
);
REVOKE ALL ON softguard.operations FROM PUBLIC;
CREATE INDEX operations_active_idx ON softguard.operations (id) WHERE state = 'active';
COMMENT ON COLUMN softguard.operations.purge_archive IS
    'where softguard purge archived the operation before destroying it (NULL: not archived)';
-- softguard's own maintenance (undo, purge) marks its transaction here, for the ledger's
-- guards and the sql_drop backstop: a fact a client cannot forge, unlike a setting (any
-- session could set softguard.internal, which this replaces). Only the installer's
-- functions write it (_maintenance_begin / _maintenance_end, called by undo and purge,
-- which remove their row before they return); PUBLIC has no privilege on it. A superuser
-- could still insert a row (or disable the guards): against it this is best effort.
CREATE TABLE softguard.maintenance (
    txid  xid8 PRIMARY KEY
);
REVOKE ALL ON softguard.maintenance FROM PUBLIC;
COMMENT ON TABLE softguard.maintenance IS
    'transactions running softguard''s own undo or purge (rows live only while they run)';

-- Mark this transaction as softguard's maintenance. Returns false when an outer call
-- already did (nested undo / purge): only the call that marked it removes the mark.
CREATE FUNCTION softguard._maintenance_begin() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO softguard.maintenance (txid) VALUES (pg_current_xact_id()) ON CONFLICT DO NOTHING;
    RETURN FOUND;
END $$;
REVOKE ALL ON FUNCTION softguard._maintenance_begin() FROM PUBLIC;

CREATE FUNCTION softguard._maintenance_end(mine boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF mine THEN
        DELETE FROM softguard.maintenance WHERE txid = pg_current_xact_id();
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._maintenance_end(boolean) FROM PUBLIC;

-- Is this transaction softguard's own maintenance? SECURITY DEFINER and PUBLIC: the sql_drop
-- backstop runs as whoever drops, and the answer reveals nothing (no input, no other
-- transaction's state). PL/pgSQL (all its callers are): each event trigger asks, several
-- times per DDL statement, and a SQL function with a SET is planned on every call.
CREATE FUNCTION softguard._in_maintenance() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (SELECT FROM softguard.maintenance
                    WHERE txid = pg_current_xact_id_if_assigned());
END $$;
REVOKE ALL ON FUNCTION softguard._in_maintenance() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._in_maintenance() TO PUBLIC;

-- Backstop for SQL softguard cannot see: the ledger's rows (operations, captures,
-- captured_rows) are never deleted, nor captured rows changed, except by softguard's own
-- maintenance (purge). ENABLE ALWAYS: replica mode does not silence it.
CREATE FUNCTION softguard._guard_ledger() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT softguard._in_maintenance() THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: rows of %I.%I cannot be %s', TG_TABLE_SCHEMA,
                             TG_TABLE_NAME, CASE TG_OP WHEN 'UPDATE' THEN 'changed'
                                                       ELSE 'removed' END),
            HINT = 'The ledger is kept by softguard; softguard purge removes expired entries.';
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._guard_ledger() FROM PUBLIC;
CREATE TRIGGER guard_ledger BEFORE DELETE OR TRUNCATE ON softguard.operations
    FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_ledger();
ALTER TABLE softguard.operations ENABLE ALWAYS TRIGGER guard_ledger;

-- An operation's facts are written once: outside maintenance (undo, purge) only the
-- operation's own transaction may add to it (objects, counts, restore plan, statement, as
-- the capture functions do), and never change its state, expiry or identity. The WHEN
-- clause keeps the capture trigger's update of its own operation (one per cascaded table)
-- free of a function call.
CREATE FUNCTION softguard._guard_operation() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF softguard._in_maintenance() THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('softguard: operation %s cannot be changed', OLD.id),
        HINT = 'Its state changes through softguard undo and softguard purge only.';
END $$;
REVOKE ALL ON FUNCTION softguard._guard_operation() FROM PUBLIC;
CREATE TRIGGER guard_operation BEFORE UPDATE ON softguard.operations
    FOR EACH ROW
    WHEN (OLD.txid IS DISTINCT FROM pg_current_xact_id()
          OR (NEW.id, NEW.created_at, NEW.expires_at, NEW.db_role, NEW."current_role",
              NEW.application_name, NEW.client_addr, NEW.kind, NEW.state, NEW.undone_at,
              NEW.undone_by, NEW.purged_at, NEW.purged_by, NEW.undo_of, NEW.txid,
              NEW.purge_archive)
             IS DISTINCT FROM
             (OLD.id, OLD.created_at, OLD.expires_at, OLD.db_role, OLD."current_role",
              OLD.application_name, OLD.client_addr, OLD.kind, OLD.state, OLD.undone_at,
              OLD.undone_by, OLD.purged_at, OLD.purged_by, OLD.undo_of, OLD.txid,
              OLD.purge_archive))
    EXECUTE FUNCTION softguard._guard_operation();
ALTER TABLE softguard.operations ENABLE ALWAYS TRIGGER guard_operation;

-- At commit: an operation records something that happened, or the transaction does not
-- commit (42501). The PUBLIC entry points (_op_begin, _capture_column, _quarantine, ...)
-- can be called directly, outside the rewritten statements; this is what stops them
-- recording work that was not done:
-- * every operation names at least one object;
-- * TRUNCATE: at least one table's rows were copied by the BEFORE TRUNCATE trigger (only
--   a TRUNCATE fires it);
-- * ALTER TABLE: each column kept as dropped is gone; each type change was completed by
--   _capture_type_after, after the statement ran; DROP: each column kept as dropped is gone.
-- SECURITY DEFINER: at commit it runs as the client, which cannot read the ledger. Not
-- queued (WHEN) for operations only a capture trigger writes (DELETE, UPDATE, MERGE: a
-- trigger fires only for rows really removed or changed) nor for undo's records.
CREATE FUNCTION softguard._verify_operation() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    bad text;
BEGIN
    SELECT * INTO o FROM softguard.operations WHERE id = NEW.id;
    IF NOT FOUND THEN
        RETURN NULL;                       -- removed by its own transaction (_truncate_finish)
    END IF;
    IF jsonb_typeof(o.objects) <> 'array' OR jsonb_array_length(o.objects) = 0 THEN
        bad := 'it names no object';
    ELSIF o.kind = 'TRUNCATE' THEN
        IF NOT EXISTS (SELECT FROM softguard.captures c
                        WHERE c.op_id = o.id AND c.event = 'truncate') THEN
            bad := 'no table was truncated';
        END IF;
    ELSIF o.kind = 'ALTER TABLE' OR o.kind LIKE 'DROP %' THEN
        -- DROP: the columns its CASCADE took (decision 0029)
        SELECT format('column %s is still there', c.table_identity || '.' || (c.info->>'name'))
          INTO bad
          FROM softguard.captures c
         WHERE c.op_id = o.id AND c.event = 'column' AND c.info->>'kind' IS NULL
           AND EXISTS (SELECT FROM pg_attribute a
                        WHERE a.attrelid = c.relid AND a.attnum = (c.info->>'attnum')::integer
                          AND NOT a.attisdropped)
         LIMIT 1;
        IF bad IS NULL AND o.kind = 'ALTER TABLE' THEN
            SELECT format('the type change of %s was not completed',
                          c.table_identity || '.' || (c.info->>'name'))
              INTO bad
              FROM softguard.captures c
             WHERE c.op_id = o.id AND c.event = 'column' AND c.info->>'kind' = 'type'
               AND NOT c.info ? 'new_capture'
             LIMIT 1;
        END IF;
        IF bad IS NULL AND o.kind = 'ALTER TABLE'
           AND NOT EXISTS (SELECT FROM softguard.captures c WHERE c.op_id = o.id) THEN
            bad := 'nothing was captured';
        END IF;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: operation %s recorded work that was not done (%s)',
                             o.id, bad),
            HINT = 'Operations are recorded by the statements softguard rewrites, not by '
                   'calling its functions.';
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._verify_operation() FROM PUBLIC;
CREATE CONSTRAINT TRIGGER verify_operation AFTER INSERT ON softguard.operations
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.kind NOT IN ('DELETE', 'UPDATE', 'MERGE', 'UNDO'))
    EXECUTE FUNCTION softguard._verify_operation();
ALTER TABLE softguard.operations ENABLE ALWAYS TRIGGER verify_operation;

COMMENT ON TABLE softguard.operations IS
    'one row per reversible operation, written in the transaction that performed it';

CREATE TABLE softguard.captures (
    id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    -- no foreign key: its check (a row lock on the operation, WAL-logged) was a fifth of a
    -- captured single-row DELETE (decision 0024). Only softguard's functions write here,
    -- each for an operation of its own transaction, and operations are never deleted
    -- (guard_ledger; _truncate_finish removes only an operation with no captures).
    op_id           bigint NOT NULL,
    relid           oid NOT NULL,
    table_identity  text NOT NULL,           -- schema.table when captured
    event           text NOT NULL CHECK (event IN ('delete', 'update', 'truncate',
                                                   'sequence', 'column', 'soft_delete')),
    n_rows          bigint NOT NULL DEFAULT 0,
    columns         jsonb,                   -- [[name, type], ...] of the row text, in order
    info            jsonb,                   -- sequence state; column definition
    created_at      timestamptz NOT NULL DEFAULT now(),
    released_at     timestamptz              -- purged or undone: rows deleted by purge_rows
);
CREATE INDEX captures_op_idx ON softguard.captures (op_id);
CREATE INDEX captures_released_idx ON softguard.captures (id) WHERE released_at IS NOT NULL;
REVOKE ALL ON softguard.captures FROM PUBLIC;
COMMENT ON TABLE softguard.captures IS
    'one row per capture (trigger firing) of a reversible data change';

-- No foreign key and no per-row sequence: one extra write of each row, nothing more.
-- capture ids grow with time, so a BRIN index finds an operation's rows cheaply.
CREATE TABLE softguard.captured_rows (
    capture_id  bigint NOT NULL,             -- softguard.captures.id
    "row"       text NOT NULL                -- the old row, record_out of the table's row type
);
CREATE INDEX captured_rows_capture_brin ON softguard.captured_rows
    USING brin (capture_id) WITH (pages_per_range = 16);
REVOKE ALL ON softguard.captured_rows FROM PUBLIC;
COMMENT ON TABLE softguard.captured_rows IS 'rows removed or changed by reversible operations';

-- The captures are guarded like the operations: removed only by purge; a capture is
-- changed only by its own operation's transaction (_capture_type_after adds the new
-- type) or by maintenance (purge releases it). Captured rows are never changed.
CREATE FUNCTION softguard._guard_capture() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF softguard._in_maintenance()
       OR (NEW.id, NEW.op_id) IS NOT DISTINCT FROM (OLD.id, OLD.op_id)
          AND EXISTS (SELECT FROM softguard.operations o
                       WHERE o.id = OLD.op_id AND o.txid = pg_current_xact_id()
                         AND o.state = 'active') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('softguard: capture %s cannot be changed', OLD.id),
        HINT = 'The ledger is kept by softguard; softguard purge removes expired entries.';
END $$;
REVOKE ALL ON FUNCTION softguard._guard_capture() FROM PUBLIC;
CREATE TRIGGER guard_ledger BEFORE DELETE OR TRUNCATE ON softguard.captures
    FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_ledger();
ALTER TABLE softguard.captures ENABLE ALWAYS TRIGGER guard_ledger;
CREATE TRIGGER guard_capture BEFORE UPDATE ON softguard.captures
    FOR EACH ROW EXECUTE FUNCTION softguard._guard_capture();
ALTER TABLE softguard.captures ENABLE ALWAYS TRIGGER guard_capture;
CREATE TRIGGER guard_ledger BEFORE DELETE OR UPDATE OR TRUNCATE ON softguard.captured_rows
    FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_ledger();
ALTER TABLE softguard.captured_rows ENABLE ALWAYS TRIGGER guard_ledger;

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
CREATE FUNCTION softguard._forget_mappings() RETURNS trigger
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
