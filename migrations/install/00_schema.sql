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
--   text of the row (record_out): softguard.captured_rows (capture_id, row);
--   softguard.captures holds one row per trigger firing (operation, table, event, count,
--   the column list with types, to read the rows back whatever the table looks like at undo).
-- * Quarantine (schema softguard_quarantine, renamed schemas softguard_q<op>_<name>) and the
--   ledger tables are not accessible to PUBLIC.

CREATE SCHEMA softguard;
CREATE SCHEMA softguard_quarantine;
REVOKE ALL ON SCHEMA softguard FROM PUBLIC;
REVOKE ALL ON SCHEMA softguard_quarantine FROM PUBLIC;
-- USAGE only, so that any role can CALL softguard.drop_op (the proxy rewrites the client's
-- DROP into that CALL, run as the client's role); every table and every internal function
-- below is revoked from PUBLIC.
GRANT USAGE ON SCHEMA softguard TO PUBLIC;
COMMENT ON SCHEMA softguard IS 'softguard ledger and functions (do not edit by hand)';
COMMENT ON SCHEMA softguard_quarantine IS 'objects dropped through softguard, kept until purged';

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
-- Backstop for SQL softguard cannot see: the ledger's rows are never deleted except by
-- softguard's own maintenance (purge sets softguard.internal for its transaction).
CREATE FUNCTION softguard._guard_ledger() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('softguard.internal', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: rows of %I.%I cannot be removed', TG_TABLE_SCHEMA,
                             TG_TABLE_NAME),
            HINT = 'The ledger is kept by softguard; softguard purge removes expired entries.';
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION softguard._guard_ledger() FROM PUBLIC;
CREATE TRIGGER guard_ledger BEFORE DELETE OR TRUNCATE ON softguard.operations
    FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_ledger();
ALTER TABLE softguard.operations ENABLE ALWAYS TRIGGER guard_ledger;

COMMENT ON TABLE softguard.operations IS
    'one row per reversible operation, written in the transaction that performed it';

CREATE TABLE softguard.captures (
    id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    op_id           bigint NOT NULL REFERENCES softguard.operations (id),
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
