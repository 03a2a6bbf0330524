-- Purge (retention) and the size of the quarantine.
--
-- Used by `softguard purge` and `softguard space` (softguard/ledger/).
--
-- What always holds:
-- * An operation is purged in ONE short transaction (purge_op): its row in the ledger is
--   locked, its quarantined objects are locked with the caller's lock_timeout (default 2 s:
--   purge gives up rather than queue the application behind it), dropped, and it is marked
--   'purged' (purged_at, purged_by, purge_archive). An interruption leaves it either purged
--   or untouched.
-- * Purge destroys only what the operation holds: before each DROP ... CASCADE the statement
--   is probed (softguard._probe, rolled back); if it would remove anything held by another
--   operation, or anything live, the purge is refused with 55006 and nothing is changed.
-- * Captured rows of a purged (or undone) operation are released in that transaction
--   (captures.released_at); small sets are deleted there and then, large ones by
--   purge_rows(batch) in later short transactions. Released rows are never read again:
--   undo of a purged operation is refused before it looks at them.
-- * Undo of a purged operation fails with 55000, naming the archive when there is one.
-- * Sizes (op_size) are O(objects), not O(rows): relation sizes from the catalog, captured
--   rows as count x a sampled row width.

-- * Soft-deleted rows are hard-deleted in batches (purge_soft_rows), before purge_op marks
--   the operation purged.
-- * Who may call: every function here is revoked from PUBLIC (the operator runs purge and
--   space: the installing superuser, or a role granted EXECUTE, docs/runbook.md). Those that
--   change the ledger (purge_op, purge_rows, purge_soft_rows) mark their transaction as
--   softguard's maintenance (softguard.maintenance, 00_schema.sql) for their duration, and
--   only then do the ledger's guards and the sql_drop backstop let them delete captured
--   rows, mark an operation purged or drop what quarantine holds.

-- ---------------------------------------------------------------------------------------
-- What an operation holds in quarantine
-- ---------------------------------------------------------------------------------------

-- The objects operation `op` holds: relations, routines, types, statistics, collations and
-- text search configurations and dictionaries, operator families (their classes go with
-- them) named op<id>_<n>_<name> in softguard_quarantine, and its renamed schemas
-- softguard_q<id>_<name> (an operator's schema softguard_q<id>_pg_<n> among them: the
-- operator goes with it), and its foreign servers and languages renamed
-- softguard_q<id>_<name>.
-- Indexes, toast tables, row types and owned sequences are left out: they go with their
-- owner. `ident` is what a DROP statement names; `keyword` its object type.
CREATE FUNCTION softguard._held_objects(op bigint)
RETURNS TABLE (classid oid, objid oid, keyword text, ident text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'pg_class'::regclass::oid, c.oid,
           CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
           c.oid::regclass::text
      FROM pg_class c
     WHERE c.relnamespace = 'softguard_quarantine'::regnamespace
       AND c.relname ~ ('^op' || op || '_')
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
       AND NOT EXISTS (SELECT FROM pg_depend d
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                          AND c.relkind = 'S')
    UNION ALL
    SELECT 'pg_proc'::regclass::oid, p.oid,
           CASE p.prokind WHEN 'a' THEN 'AGGREGATE' WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
           p.oid::regprocedure::text
      FROM pg_proc p
     WHERE p.pronamespace = 'softguard_quarantine'::regnamespace
       AND p.proname ~ ('^op' || op || '_')
    UNION ALL
    SELECT 'pg_type'::regclass::oid, t.oid,
           CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, t.oid::regtype::text
      FROM pg_type t
     WHERE t.typnamespace = 'softguard_quarantine'::regnamespace
       AND t.typname ~ ('^op' || op || '_')
       AND t.typtype IN ('b', 'c', 'd', 'e', 'r')
       AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
    UNION ALL
    SELECT 'pg_statistic_ext'::regclass::oid, s.oid, 'STATISTICS',
           format('%I.%I', 'softguard_quarantine', s.stxname)
      FROM pg_statistic_ext s
     WHERE s.stxnamespace = 'softguard_quarantine'::regnamespace
       AND s.stxname ~ ('^op' || op || '_')
    UNION ALL
    SELECT 'pg_collation'::regclass::oid, c.oid, 'COLLATION',
           format('%I.%I', 'softguard_quarantine', c.collname)
      FROM pg_collation c
     WHERE c.collnamespace = 'softguard_quarantine'::regnamespace
       AND c.collname ~ ('^op' || op || '_')
    UNION ALL
    SELECT 'pg_ts_config'::regclass::oid, c.oid, 'TEXT SEARCH CONFIGURATION',
           format('%I.%I', 'softguard_quarantine', c.cfgname)
      FROM pg_ts_config c
     WHERE c.cfgnamespace = 'softguard_quarantine'::regnamespace
       AND c.cfgname ~ ('^op' || op || '_')
    UNION ALL
    SELECT 'pg_ts_dict'::regclass::oid, d.oid, 'TEXT SEARCH DICTIONARY',
           format('%I.%I', 'softguard_quarantine', d.dictname)
      FROM pg_ts_dict d
     WHERE d.dictnamespace = 'softguard_quarantine'::regnamespace
       AND d.dictname ~ ('^op' || op || '_')
    UNION ALL   -- its operator classes go with it
    SELECT 'pg_opfamily'::regclass::oid, f.oid, 'OPERATOR FAMILY',
           format('%I.%I USING %I', 'softguard_quarantine', f.opfname, a.amname)
      FROM pg_opfamily f JOIN pg_am a ON a.oid = f.opfmethod
     WHERE f.opfnamespace = 'softguard_quarantine'::regnamespace
       AND f.opfname ~ ('^op' || op || '_')
    UNION ALL   -- a foreign server, renamed in place (_move); its user mappings go with it
    SELECT 'pg_foreign_server'::regclass::oid, s.oid, 'SERVER', quote_ident(s.srvname)
      FROM pg_foreign_server s
     WHERE s.srvname ~ ('^softguard_q' || op || '_')
    UNION ALL   -- a language, renamed in place (_move)
    SELECT 'pg_language'::regclass::oid, l.oid, 'LANGUAGE', quote_ident(l.lanname)
      FROM pg_language l
     WHERE l.lanname ~ ('^softguard_q' || op || '_')
    UNION ALL
    SELECT 'pg_namespace'::regclass::oid, n.oid, 'SCHEMA', quote_ident(n.nspname)
      FROM pg_namespace n
     WHERE n.nspname ~ ('^softguard_q' || op || '_')
$$;
REVOKE ALL ON FUNCTION softguard._held_objects(bigint) FROM PUBLIC;

-- The relations (tables, views, materialized views, sequences, foreign tables) operation
-- `op` holds, with those inside its renamed schemas: what `softguard purge --archive` gives
-- pg_dump (as --table / --schema) and what op_size measures.
CREATE FUNCTION softguard.held_relations(op bigint)
RETURNS TABLE (relid oid, ident text, relkind "char", in_schema text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.oid, c.oid::regclass::text, c.relkind, NULL::text
      FROM pg_class c
     WHERE c.relnamespace = 'softguard_quarantine'::regnamespace
       AND c.relname ~ ('^op' || op || '_')
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    UNION ALL
    SELECT c.oid, c.oid::regclass::text, c.relkind, n.nspname::text
      FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid
     WHERE n.nspname ~ ('^softguard_q' || op || '_')
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
$$;
REVOKE ALL ON FUNCTION softguard.held_relations(bigint) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Sizes
-- ---------------------------------------------------------------------------------------

-- Bytes one capture's rows take: a typed capture's table (decision 0030), measured; else
-- n_rows x (average stored width of up to 20 of its rows + 36 bytes of tuple header, item
-- pointer and capture_id). The sample is read through the BRIN index (enable_seqscan off:
-- never a scan of the whole table).
CREATE FUNCTION softguard._capture_bytes(cid bigint, n_rows bigint) RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
    SELECT CASE WHEN n_rows <= 0 THEN 0
                WHEN to_regclass(softguard._typed_name(cid)) IS NOT NULL
                THEN pg_total_relation_size(to_regclass(softguard._typed_name(cid)))
                ELSE
        (n_rows * (coalesce((SELECT avg(pg_column_size(s."row"))
                               FROM (SELECT r."row" FROM softguard.captured_rows r
                                      WHERE r.capture_id = cid LIMIT 20) s), 0) + 36))::bigint
    END
$$;
REVOKE ALL ON FUNCTION softguard._capture_bytes(bigint, bigint) FROM PUBLIC;

-- Bytes operation `op` keeps in quarantine: pg_total_relation_size (heap, indexes, toast)
-- of the relations it holds, plus its captured rows (estimated; see _capture_bytes).
-- 0 for an operation that holds nothing (purged, undone DROP, undo record).
CREATE FUNCTION softguard.op_size(op bigint) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT sum(pg_total_relation_size(h.relid))
                       FROM softguard.held_relations(op) h
                      WHERE h.relkind IN ('r', 'm', 'S')), 0)::bigint
         + coalesce((SELECT sum(softguard._capture_bytes(c.id, c.n_rows))
                       FROM softguard.captures c WHERE c.op_id = op), 0)::bigint
$$;
REVOKE ALL ON FUNCTION softguard.op_size(bigint) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Purge
-- ---------------------------------------------------------------------------------------

-- Destroy what operation `op` holds and mark it purged, in the caller's transaction (run it
-- alone in a transaction and commit). `archive`: where it was archived (recorded, shown by
-- undo). `lock_timeout`: how long to wait for a lock (SET LOCAL; the ledger row, the
-- quarantined relations) before failing with 55P03, nothing changed. Captured rows: deleted
-- here when the operation has at most `inline_rows`, else released for purge_rows.
-- An undone operation holds nothing: its captured rows are released, its state kept.
-- Errors: 42704 no such operation; 55000 already purged; 55006 the DROP would remove
-- something another operation holds, or something live; 55P03 lock timeout.
CREATE FUNCTION softguard.purge_op(op bigint, archive text DEFAULT NULL,
                                   lock_timeout text DEFAULT '2s',
                                   inline_rows bigint DEFAULT 10000)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o softguard.operations;
    r record;
    stmt text;
    list jsonb;
    bad record;
    held_by bigint;
    n_objects integer := 0;
    n_rows bigint;
    n_typed bigint := 0;
    released text;
    mine boolean;
BEGIN
    PERFORM set_config('lock_timeout', coalesce(lock_timeout, '2s'), true);
    mine := softguard._maintenance_begin();
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = '42704',
            MESSAGE = format('softguard: operation %s does not exist', op);
    END IF;
    IF o.state = 'purged' THEN
        RAISE EXCEPTION USING ERRCODE = '55000',
            MESSAGE = format('operation %s was already purged (at %s by %s)', op,
                             to_char(o.purged_at, 'YYYY-MM-DD HH24:MI:SS'), o.purged_by);
    END IF;

    IF o.state = 'active' AND o.kind <> 'UNDO' THEN
        -- 1. Lock what it holds (in oid order), waiting at most lock_timeout. Not views:
        --    LOCK TABLE on a view locks every table it reads, with the rights of the view's
        --    owner, softguard_keeper, which has none (decision 0027); nothing can use a
        --    kept view meanwhile anyway. Nor foreign tables: PostgreSQL cannot lock one
        --    (0A000 / 42809), and no role may reach a kept one either.
        FOR r IN SELECT h.relid FROM softguard.held_relations(op) h
                  WHERE h.relkind IN ('r', 'p') ORDER BY h.relid LOOP
            EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', r.relid::regclass);
        END LOOP;

        -- 2. Drop each object (schemas last); each DROP ... CASCADE is probed first: it
        --    must take nothing but what this operation holds.
        FOR r IN SELECT h.* FROM softguard._held_objects(op) h
                  ORDER BY (h.classid = 'pg_namespace'::regclass), h.classid, h.objid LOOP
            IF r.classid = 'pg_namespace'::regclass THEN
                CONTINUE WHEN NOT EXISTS (SELECT FROM pg_namespace n WHERE n.oid = r.objid);
            ELSE
                CONTINUE WHEN (pg_identify_object(r.classid, r.objid, 0)).identity IS NULL;
            END IF;
            stmt := format('DROP %s %s CASCADE', r.keyword, r.ident);
            list := softguard._probe(stmt);
            SELECT x->>'object_type' AS type, x->>'object_identity' AS identity,
                   softguard._holder((x->>'classid')::oid, (x->>'objid')::oid,
                                     (x->>'objsubid')::integer) AS holder
              INTO bad
              FROM jsonb_array_elements(list) x
             WHERE (x->>'normal')::boolean AND NOT (x->>'original')::boolean
               AND softguard._holder((x->>'classid')::oid, (x->>'objid')::oid,
                                     (x->>'objsubid')::integer) IS DISTINCT FROM op
             LIMIT 1;
            IF FOUND THEN
                held_by := bad.holder;
                IF held_by IS NOT NULL THEN
                    RAISE EXCEPTION USING ERRCODE = '55006',
                        MESSAGE = format('cannot purge operation %s: dropping %s %s would also '
                                         'remove %s %s, held by operation %s',
                                         op, lower(r.keyword), r.ident, bad.type, bad.identity,
                                         held_by),
                        HINT = format('Purge operation %s first (or undo it).', held_by);
                END IF;
                RAISE EXCEPTION USING ERRCODE = '55006',
                    MESSAGE = format('cannot purge operation %s: dropping %s %s would also '
                                     'remove %s %s, which is not in quarantine',
                                     op, lower(r.keyword), r.ident, bad.type, bad.identity),
                    HINT = 'Something was made to depend on a quarantined object: remove that '
                           'dependency first.';
            END IF;
            EXECUTE stmt;
            n_objects := n_objects + 1;
        END LOOP;
    END IF;

    -- 3. Captured rows: typed captures' tables dropped (decision 0030: no other capture's
    --    rows read); the others released, deleted now when few.
    FOR r IN SELECT c.id, c.n_rows FROM softguard.captures c
              WHERE c.op_id = op AND c.info @> '{"typed": true}' AND c.released_at IS NULL
              ORDER BY c.id LOOP
        EXECUTE format('DROP TABLE IF EXISTS %s', softguard._typed_name(r.id));
        n_typed := n_typed + r.n_rows;
    END LOOP;
    UPDATE softguard.captures c SET released_at = now()
     WHERE c.op_id = op AND c.released_at IS NULL;
    SELECT coalesce(sum(c.n_rows), 0) INTO n_rows FROM softguard.captures c
     WHERE c.op_id = op AND NOT coalesce(c.info @> '{"typed": true}', false);
    IF n_rows <= inline_rows THEN
        DELETE FROM softguard.captured_rows cr
         WHERE cr.capture_id = ANY (ARRAY(SELECT c.id FROM softguard.captures c
                                           WHERE c.op_id = op));
        DELETE FROM softguard.captures c WHERE c.op_id = op;
        released := format('%s captured rows deleted', n_rows + n_typed);
    ELSE
        released := format('%s captured rows released (deleted in batches)', n_rows)
                    || CASE WHEN n_typed > 0 THEN format(', %s dropped', n_typed) ELSE '' END;
    END IF;

    IF o.state <> 'active' OR o.kind = 'UNDO' THEN
        PERFORM softguard._maintenance_end(mine);
        RETURN format('operation %s: %s, nothing in quarantine; %s', op,
                      CASE WHEN o.kind = 'UNDO' THEN 'the record of an undo'
                           ELSE format('undone at %s', to_char(o.undone_at, 'YYYY-MM-DD HH24:MI:SS'))
                      END, released);
    END IF;
    UPDATE softguard.operations
       SET state = 'purged', purged_at = now(), purged_by = session_user, purge_archive = archive
     WHERE id = op;
    PERFORM softguard._maintenance_end(mine);
    RETURN format('operation %s: purged (%s objects dropped, %s)', op, n_objects, released);
END $$;
REVOKE ALL ON FUNCTION softguard.purge_op(bigint, text, text, bigint) FROM PUBLIC;

-- Delete up to `batch` released captured rows (and the released captures left empty), in
-- the caller's transaction; returns how many rows it deleted plus captures it removed:
-- 0 when nothing released is left. Call it in a loop, one transaction per call.
-- A capture's rows are appended together: the first call for a capture finds the blocks
-- they lie in (one pass over them, through the BRIN index) and records them in the
-- capture's info (purge_span: [first block, last block]); each call then deletes from
-- where the last one stopped (a TID range scan, no rescan of the rows already deleted, nor
-- of any other capture's rows but those sharing its blocks): the time is linear in the
-- capture's rows, whatever else the ledger holds (decision 0024).
CREATE FUNCTION softguard.purge_rows(batch integer DEFAULT 10000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    cid bigint;
    span jsonb;
    first_tid tid;
    last_tid tid;
    want integer;
    n bigint;
    done bigint := 0;
    mine boolean := softguard._maintenance_begin();
BEGIN
    LOOP
        want := greatest(batch - done, 0)::integer;
        EXIT WHEN want = 0;
        SELECT c.id, c.info->'purge_span' INTO cid, span FROM softguard.captures c
         WHERE c.released_at IS NOT NULL ORDER BY c.id LIMIT 1;
        EXIT WHEN cid IS NULL;
        IF span IS NULL THEN
            SELECT min(r.ctid), max(r.ctid) INTO first_tid, last_tid
              FROM softguard.captured_rows r WHERE r.capture_id = cid;
            IF first_tid IS NULL THEN      -- no rows (a sequence's, a column's capture)
                DELETE FROM softguard.captures c WHERE c.id = cid;
                done := done + 1;
                cid := NULL;
                CONTINUE;
            END IF;
            span := jsonb_build_array((first_tid::text::point)[0]::bigint,
                                      (last_tid::text::point)[0]::bigint);
        END IF;
        -- capture_id + 0: not the BRIN index (it would rescan the capture from its start)
        WITH d AS (
            DELETE FROM softguard.captured_rows cr
             WHERE cr.ctid = ANY (ARRAY(
                       SELECT x.ctid FROM softguard.captured_rows x
                        WHERE x.ctid >= format('(%s,0)', span->>0)::tid
                          AND x.ctid <= format('(%s,65535)', span->>1)::tid
                          AND x.capture_id + 0 = cid
                        LIMIT want))
            RETURNING cr.ctid)
        SELECT count(*), max(d.ctid) INTO n, last_tid FROM d;
        done := done + n;
        IF n < want THEN
            DELETE FROM softguard.captures c WHERE c.id = cid;
            done := done + 1;
        ELSE
            UPDATE softguard.captures c
               SET info = coalesce(c.info, '{}') || jsonb_build_object('purge_span',
                              jsonb_build_array((last_tid::text::point)[0]::bigint, span->1))
             WHERE c.id = cid;
        END IF;
        cid := NULL;
    END LOOP;
    PERFORM softguard._maintenance_end(mine);
    RETURN done;
END $$;
REVOKE ALL ON FUNCTION softguard.purge_rows(integer) FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Purge: hard-delete the soft-deleted rows, `batch` per call (one transaction each)
-- ---------------------------------------------------------------------------------------

-- Deletes up to `batch` of the rows operation `op` soft-deleted that still carry its mark
-- (their captured keys go with them); returns how many captured rows it took: 0 when
-- none is left. The first call records 'purging' in the capture (undo is refused from
-- then on). Foreign keys act as for any DELETE (CASCADE follows; NO ACTION fails: 23503).
CREATE FUNCTION softguard.purge_soft_rows(op bigint, batch integer DEFAULT 10000,
                                          lock_timeout text DEFAULT '2s')
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    o softguard.operations;
    c softguard.captures;
    taken bigint;
    deleted bigint;
    total bigint := 0;
    mine boolean;
BEGIN
    PERFORM set_config('lock_timeout', coalesce(lock_timeout, '2s'), true);
    PERFORM set_config('softguard.capture', '', true);  -- purge's DELETE is not an operation
    SELECT * INTO o FROM softguard.operations WHERE id = op FOR UPDATE;
    IF NOT FOUND OR o.state <> 'active' THEN
        RETURN 0;
    END IF;
    mine := softguard._maintenance_begin();
    FOR c IN SELECT * FROM softguard.captures
              WHERE op_id = op AND event = 'soft_delete' AND released_at IS NULL ORDER BY id LOOP
        EXIT WHEN total >= batch;
        CONTINUE WHEN NOT EXISTS (SELECT FROM pg_class WHERE oid = c.relid);
        IF NOT c.info ? 'purging' THEN
            UPDATE softguard.captures SET info = info || jsonb_build_object('purging', now())
             WHERE id = c.id;
        END IF;
        EXECUTE format('WITH b AS (DELETE FROM softguard.captured_rows r WHERE r.ctid = ANY (ARRAY('
                       'SELECT x.ctid FROM softguard.captured_rows x WHERE x.capture_id = %s LIMIT %s))'
                       ' RETURNING r."row"), d AS (DELETE FROM %s t USING (%s) s WHERE %s RETURNING 1)'
                       ' SELECT (SELECT count(*) FROM b), (SELECT count(*) FROM d)',
                       c.id, batch - total, c.relid::regclass,
                       softguard._sd_source(c, 'b'),
                       softguard._sd_match(c))
            INTO taken, deleted;
        UPDATE softguard.captures
           SET info = jsonb_set(info, '{purged_rows}',
                                to_jsonb(coalesce((info->>'purged_rows')::bigint, 0) + deleted))
         WHERE id = c.id;
        total := total + taken;
    END LOOP;
    PERFORM softguard._maintenance_end(mine);
    RETURN total;
END $$;
REVOKE ALL ON FUNCTION softguard.purge_soft_rows(bigint, integer, text) FROM PUBLIC;
