-- Large objects: writes that destroy their contents are captured first or refused (issue 11
-- item 5; docs/decisions/0016-large-objects.md; threat model G5, G11).
--
-- There is no trigger on pg_largeobject, so the database cannot see a write happen. Instead:
-- * The destructive large-object functions are not executable by PUBLIC in this database
--   (ACLs on pg_catalog functions are per database): lo_put, lo_unlink, lowrite,
--   lo_truncate, lo_truncate64. A DO block, a function or a FunctionCall that calls them
--   fails with 42501, whatever text carried it. Roles that need them directly (operators,
--   tools that do not go through softguard) are granted EXECUTE by hand (runbook).
--   Superusers bypass ACLs: against them this is best effort (the proxy refuses what it reads).
-- * The proxy rewrites the calls it reads (softguard/sql/rewrite.py, lo_calls) into the
--   wrappers below, which check the caller's privilege as PostgreSQL would, keep the
--   object (every page, owner and ACL) in the ledger, then do the write. lowrite and
--   lo_truncate act on a descriptor: the object is kept when softguard.lo_open opens it for
--   writing, and they accept only descriptors that softguard.lo_open opened in this
--   transaction (softguard.large_object_fds).
-- * lo_create, lo_from_bytea and lo_import over an existing OID fail in PostgreSQL itself
--   (23505): they destroy nothing and are not wrapped.
--
-- What always holds:
-- * An object written through a wrapper is kept once per operation, before the first write;
--   one operation (kind 'LARGE OBJECT') per transaction and client message.
-- * Undo (_undo_large_objects, 70_undo.sql) writes the kept pages back exactly, and
--   re-creates an unlinked object under its OID with its owner and ACL; a later active
--   operation that kept the same object blocks it (55006, DETAIL blocked_by=<op>).

CREATE TABLE softguard.large_objects (
    op_id       bigint NOT NULL REFERENCES softguard.operations (id),
    loid        oid NOT NULL,
    owner_name  text NOT NULL,                   -- the owner's name when kept
    acl         aclitem[],
    n_bytes     bigint NOT NULL,
    kept_by     text NOT NULL,                   -- lo_put, lo_unlink, lo_open for writing
    stmt_at     timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (op_id, loid)
);
CREATE INDEX large_objects_loid_idx ON softguard.large_objects (loid);
REVOKE ALL ON softguard.large_objects FROM PUBLIC;
COMMENT ON TABLE softguard.large_objects IS
    'large objects kept before a write through softguard (pages in large_object_pages)';

CREATE TABLE softguard.large_object_pages (
    op_id   bigint NOT NULL,
    loid    oid NOT NULL,
    pageno  integer NOT NULL,
    data    bytea NOT NULL,
    PRIMARY KEY (op_id, loid, pageno),
    FOREIGN KEY (op_id, loid) REFERENCES softguard.large_objects (op_id, loid)
);
REVOKE ALL ON softguard.large_object_pages FROM PUBLIC;
COMMENT ON TABLE softguard.large_object_pages IS
    'the pg_largeobject pages of each kept large object, as they were';

CREATE TRIGGER guard_ledger BEFORE DELETE OR TRUNCATE ON softguard.large_objects
    FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_ledger();
ALTER TABLE softguard.large_objects ENABLE ALWAYS TRIGGER guard_ledger;
CREATE TRIGGER guard_ledger BEFORE DELETE OR UPDATE OR TRUNCATE ON softguard.large_object_pages
    FOR EACH STATEMENT EXECUTE FUNCTION softguard._guard_ledger();
ALTER TABLE softguard.large_object_pages ENABLE ALWAYS TRIGGER guard_ledger;

-- Descriptors softguard.lo_open opened for writing (their object kept), per backend. A row
-- counts only in the transaction that wrote it: descriptors close when it ends.
CREATE TABLE softguard.large_object_fds (
    pid   integer NOT NULL,
    fd    integer NOT NULL,
    txid  xid8 NOT NULL,
    loid  oid NOT NULL,
    PRIMARY KEY (pid, fd)
);
REVOKE ALL ON softguard.large_object_fds FROM PUBLIC;

REVOKE EXECUTE ON FUNCTION pg_catalog.lo_put(oid, bigint, bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.lo_unlink(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.lowrite(integer, bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.lo_truncate(integer, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.lo_truncate64(integer, bigint) FROM PUBLIC;

-- Whether the client's role may do `what` ('SELECT', 'UPDATE', or 'OWNER') to large object
-- `lo`, as PostgreSQL decides it (wrappers run as their owner, so they check for it).
CREATE FUNCTION softguard._lo_may(lo oid, what text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT current_setting('lo_compat_privileges')::boolean
        OR EXISTS (SELECT FROM pg_roles r
                    WHERE r.rolname = softguard._client_role() AND r.rolsuper)
        OR EXISTS (SELECT FROM pg_largeobject_metadata m
                    WHERE m.oid = lo
                      AND CASE WHEN what = 'OWNER'
                               THEN pg_has_role(softguard._client_role(), m.lomowner, 'USAGE')
                               ELSE EXISTS (
                                   SELECT FROM aclexplode(coalesce(m.lomacl,
                                                                   acldefault('L', m.lomowner))) a
                                    WHERE a.privilege_type = what
                                      AND (a.grantee = 0 OR pg_has_role(softguard._client_role(),
                                                                       a.grantee, 'USAGE')))
                          END)
$$;
REVOKE ALL ON FUNCTION softguard._lo_may(oid, text) FROM PUBLIC;

-- Refuse as PostgreSQL does when the client may not; a missing object is left to the
-- function itself (42704, its own message).
CREATE FUNCTION softguard._lo_check(lo oid, what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_largeobject_metadata WHERE oid = lo)
       OR softguard._lo_may(lo, what) THEN
        RETURN;
    END IF;
    IF what = 'OWNER' THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('must be owner of large object %s', lo);
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('permission denied for large object %s', lo);
END $$;
REVOKE ALL ON FUNCTION softguard._lo_check(oid, text) FROM PUBLIC;

-- Keep large object `lo` (pages, owner, ACL) in this transaction's operation for the
-- current client message, opening the operation on the first object. Nothing when the
-- object does not exist (the write fails by itself) or is kept in this operation already.
CREATE FUNCTION softguard._lo_keep(lo oid, why text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    op bigint;
    m record;
    reg softguard.sessions;
    expires timestamptz;
    sent text;
BEGIN
    SELECT l.oid, r.rolname, l.lomacl INTO m
      FROM pg_largeobject_metadata l JOIN pg_roles r ON r.oid = l.lomowner
     WHERE l.oid = lo;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- Only this transaction's own operations can be joined: their txid is this one.
    SELECT o.id INTO op
      FROM softguard.operations o
     WHERE o.txid = pg_current_xact_id() AND o.kind = 'LARGE OBJECT' AND o.state = 'active'
       AND EXISTS (SELECT FROM softguard.large_objects k
                    WHERE k.op_id = o.id AND k.stmt_at = statement_timestamp())
     ORDER BY o.id DESC LIMIT 1;
    IF op IS NOT NULL AND EXISTS (SELECT FROM softguard.large_objects k
                                   WHERE k.op_id = op AND k.loid = lo) THEN
        RETURN;
    END IF;
    IF op IS NULL THEN
        reg := softguard._session(true);
        expires := now() + softguard._retention(
            reg, nullif(current_setting('softguard.retention', true), '')::integer);
        -- The client's spelling: the proxy only qualified the function names.
        sent := regexp_replace(softguard._client_text(current_query()),
                               'softguard\.(lo_put|lo_unlink|lo_open|lo_close|lowrite|'
                               'lo_truncate64|lo_truncate)\M', '\1', 'g');
        INSERT INTO softguard.operations (expires_at, db_role, "current_role", application_name,
                                          client_addr, statement, kind, objects, row_counts,
                                          restore)
        VALUES (expires, session_user, softguard._client_role(),
                current_setting('application_name', true), softguard._client_addr(reg),
                coalesce(sent, ''), 'LARGE OBJECT', '[]', NULL, '[]')
        RETURNING id INTO op;
    END IF;
    INSERT INTO softguard.large_objects (op_id, loid, owner_name, acl, n_bytes, kept_by)
    SELECT op, lo, m.rolname, m.lomacl,
           coalesce((SELECT sum(length(p.data)) FROM pg_largeobject p WHERE p.loid = lo), 0),
           why;
    INSERT INTO softguard.large_object_pages (op_id, loid, pageno, data)
    SELECT op, p.loid, p.pageno, p.data FROM pg_largeobject p WHERE p.loid = lo;
    UPDATE softguard.operations o
       SET objects = o.objects || jsonb_build_array(jsonb_build_object(
               'type', 'large object', 'identity', lo::text, 'schema', NULL,
               'name', lo::text, 'classid', 'pg_largeobject'::regclass::oid, 'objid', lo,
               'objsubid', 0, 'original', true, 'normal', true, 'held_by', NULL))
     WHERE o.id = op;
    SELECT expires_at INTO expires FROM softguard.operations WHERE id = op;
    PERFORM softguard._notice(softguard._op_notice(why, format('large object %s', lo), op,
                                                   expires));
END $$;
REVOKE ALL ON FUNCTION softguard._lo_keep(oid, text) FROM PUBLIC;

-- A descriptor the wrappers may write through: opened by softguard.lo_open for writing in
-- this transaction (its object kept). Anything else is refused.
CREATE FUNCTION softguard._lo_fd_kept(fd integer, what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT FROM softguard.large_object_fds f
                WHERE f.pid = pg_backend_pid() AND f.fd = _lo_fd_kept.fd
                  AND f.txid = pg_current_xact_id_if_assigned()) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('softguard: %s on large object descriptor %s is refused: softguard did '
                         'not open it for writing, so it could not keep the object first',
                         what, fd),
        HINT = 'Open the object with lo_open(oid, mode) in a statement sent through softguard '
               '(not a FunctionCall, DO block or function), in the same transaction.';
END $$;
REVOKE ALL ON FUNCTION softguard._lo_fd_kept(integer, text) FROM PUBLIC;

-- The wrappers the proxy calls instead of pg_catalog's (same arguments, same results).
CREATE FUNCTION softguard.lo_put(lo oid, "offset" bigint, data bytea) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM softguard._lo_check(lo, 'UPDATE');
    PERFORM softguard._lo_keep(lo, 'lo_put');
    PERFORM pg_catalog.lo_put(lo, "offset", data);
END $$;
REVOKE ALL ON FUNCTION softguard.lo_put(oid, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lo_put(oid, bigint, bytea) TO PUBLIC;

CREATE FUNCTION softguard.lo_unlink(lo oid) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM softguard._lo_check(lo, 'OWNER');
    PERFORM softguard._lo_keep(lo, 'lo_unlink');
    RETURN pg_catalog.lo_unlink(lo);
END $$;
REVOKE ALL ON FUNCTION softguard.lo_unlink(oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lo_unlink(oid) TO PUBLIC;

-- INV_WRITE = 0x20000, INV_READ = 0x40000 (libpq/libpq-fs.h). Writing needs SELECT too.
CREATE FUNCTION softguard.lo_open(lo oid, mode integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    opened integer;
BEGIN
    IF mode & 393216 <> 0 THEN
        PERFORM softguard._lo_check(lo, 'SELECT');
    END IF;
    IF mode & 131072 <> 0 THEN
        PERFORM softguard._lo_check(lo, 'UPDATE');
        PERFORM softguard._lo_keep(lo, 'lo_open for writing');
    END IF;
    opened := pg_catalog.lo_open(lo, mode);
    IF mode & 131072 <> 0 THEN
        INSERT INTO softguard.large_object_fds (pid, fd, txid, loid)
        VALUES (pg_backend_pid(), opened, pg_current_xact_id(), lo)
        ON CONFLICT ON CONSTRAINT large_object_fds_pkey
        DO UPDATE SET txid = excluded.txid, loid = excluded.loid;
    END IF;
    -- Opened for reading: nothing written (read-only transactions, standbys). A row this
    -- transaction left for the same number (closed by FunctionCall) is harmless: the
    -- descriptor is not writable, so PostgreSQL refuses a write through it.
    RETURN opened;
END $$;
REVOKE ALL ON FUNCTION softguard.lo_open(oid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lo_open(oid, integer) TO PUBLIC;

CREATE FUNCTION softguard.lo_close(fd integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r integer := pg_catalog.lo_close(fd);
BEGIN
    -- Only a descriptor this transaction opened for writing has a row (read-only
    -- transactions write nothing here).
    IF EXISTS (SELECT FROM softguard.large_object_fds f
                WHERE f.pid = pg_backend_pid() AND f.fd = lo_close.fd
                  AND f.txid = pg_current_xact_id_if_assigned()) THEN
        DELETE FROM softguard.large_object_fds f
         WHERE f.pid = pg_backend_pid() AND f.fd = lo_close.fd;
    END IF;
    RETURN r;
END $$;
REVOKE ALL ON FUNCTION softguard.lo_close(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lo_close(integer) TO PUBLIC;

CREATE FUNCTION softguard.lowrite(fd integer, data bytea) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM softguard._lo_fd_kept(fd, 'lowrite');
    RETURN pg_catalog.lowrite(fd, data);
END $$;
REVOKE ALL ON FUNCTION softguard.lowrite(integer, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lowrite(integer, bytea) TO PUBLIC;

CREATE FUNCTION softguard.lo_truncate(fd integer, len integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM softguard._lo_fd_kept(fd, 'lo_truncate');
    RETURN pg_catalog.lo_truncate(fd, len);
END $$;
REVOKE ALL ON FUNCTION softguard.lo_truncate(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lo_truncate(integer, integer) TO PUBLIC;

CREATE FUNCTION softguard.lo_truncate64(fd integer, len bigint) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM softguard._lo_fd_kept(fd, 'lo_truncate64');
    RETURN pg_catalog.lo_truncate64(fd, len);
END $$;
REVOKE ALL ON FUNCTION softguard.lo_truncate64(integer, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.lo_truncate64(integer, bigint) TO PUBLIC;

