-- Blast-radius limits (issue 15 item 2; docs/decisions/0021-blast-radius-limits.md): how
-- much one statement of a registered session may destroy, enforced in the database so that
-- no way of carrying the statement (a CTE, a prepared statement, a function, a DO block, a
-- multi-statement string, a pipeline) dodges it.
--
-- What always holds:
-- * The limits come from the session's registration (05_sessions.sql), which the client
--   cannot change: register_limits only ever lowers a limit (NULL: no limit).
-- * max_rows: the rows a statement deletes, or updates where the session captures UPDATE,
--   counting what its FK cascades and triggers delete and change, are counted exactly from
--   the capture triggers' transition tables (40_capture.sql, _capture_rows); over the
--   limit the statement is refused with 54000 and rolled back: nothing is half-done.
-- * max_table_bytes: a TRUNCATE (_capture_truncate) or a reversible DROP (drop_op) of a
--   table larger than the limit (heap, TOAST and indexes; a partitioned table with all its
--   partitions) is refused with 54000 before anything is copied or moved.
-- * Tables as policy targets (issue 15 item 5): a rule with `tables` denies categories
--   (delete, update, truncate, drop) on the tables whose resolved schema.table matches
--   one of its patterns (LIKE patterns, made from the rule's shell patterns). Checked on
--   the table the server resolved (a view's base table, a cascade's table, any
--   search_path), by the capture triggers, the BEFORE TRUNCATE trigger, drop_op and the
--   sql_drop backstop: 42501, the rule named.
-- * Sessions that are not registered (direct connections, softguard's own maintenance) are
--   not limited.

-- Add limits to this session's registration; each only ever gets smaller. Callable by any
-- role, like register_session: it can only add protection.
--   max_rows         rows one statement may delete or update (NULL: no limit)
--   max_rows_by      what set it (the policy rule), named in refusals
--   max_table_bytes  the largest table a TRUNCATE or DROP may remove (NULL: no limit)
--   max_table_bytes_by  what set that
--   denied_tables    [{"pattern", "category", "by"}] added to the session's (a union)
CREATE FUNCTION softguard.register_limits(max_rows bigint, max_rows_by text,
                                          max_table_bytes bigint, max_table_bytes_by text,
                                          denied_tables jsonb)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    -- SQL, as register_session (05_sessions.sql): a negative limit fails the table's CHECK
    -- (23514), a session not registered the cast to softguard.registered (23514).
    WITH lowered AS (
        UPDATE softguard.sessions s SET
            max_rows = CASE WHEN x.lower_rows THEN register_limits.max_rows ELSE s.max_rows END,
            max_rows_by = CASE WHEN x.lower_rows THEN register_limits.max_rows_by
                               ELSE s.max_rows_by END,
            max_table_bytes = CASE WHEN x.lower_bytes THEN register_limits.max_table_bytes
                                   ELSE s.max_table_bytes END,
            max_table_bytes_by = CASE WHEN x.lower_bytes THEN register_limits.max_table_bytes_by
                                      ELSE s.max_table_bytes_by END,
            denied_tables = softguard._valid_denied(s.denied_tables
                                                    || coalesce(register_limits.denied_tables, '[]'))
          FROM (SELECT r.pid,
                       register_limits.max_rows IS NOT NULL
                       AND (r.max_rows IS NULL OR register_limits.max_rows < r.max_rows) AS lower_rows,
                       register_limits.max_table_bytes IS NOT NULL
                       AND (r.max_table_bytes IS NULL
                            OR register_limits.max_table_bytes < r.max_table_bytes) AS lower_bytes
                  FROM softguard.sessions r) x
         WHERE x.pid = s.pid AND s.pid = pg_backend_pid()
           AND s.backend_start = softguard._backend_start()
        RETURNING 1)
    SELECT (EXISTS (SELECT FROM lowered))::softguard.registered;
    -- an UPDATE is refused by the table's UPDATE capture trigger, which exists only while
    -- UPDATEs are captured (decision 0023)
    SELECT softguard._want_capture_updates()
     WHERE EXISTS (SELECT FROM jsonb_array_elements(coalesce(register_limits.denied_tables,
                                                             '[]')) e
                    WHERE e->>'category' = 'update');
$$;
REVOKE ALL ON FUNCTION softguard.register_limits(bigint, text, bigint, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard.register_limits(bigint, text, bigint, text, jsonb) TO PUBLIC;

-- Refuse `verb` on table nsp.rel_name when a rule of this session (`denied`: its
-- registration's denied_tables) denies `category` on it. Names as the catalog stores
-- them, matched whole.
CREATE FUNCTION softguard._table_denied(denied jsonb, nsp text, rel_name text, category text,
                                        verb text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    e jsonb;
BEGIN
    SELECT x INTO e FROM jsonb_array_elements(denied) x
     WHERE x->>'category' = category AND (nsp || '.' || rel_name) LIKE (x->>'pattern')
       -- a category denied outright: the proxy refused it, and a person may approve it
       AND NOT (x ? 'approvable' AND softguard._approved_here())
     LIMIT 1;
    IF e IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('softguard: %s %I.%I is refused by policy (%s on tables %s);'
                             ' decided by %s', verb, nsp, rel_name, category,
                             e->>'shown', coalesce(e->>'by', 'the policy')),
            DETAIL = 'The statement was rolled back: nothing was changed.',
            HINT = format('This session may not %s tables matching %s; work on other tables,'
                          ' or ask an operator.', category, e->>'shown');
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._table_denied(jsonb, text, text, text, text) FROM PUBLIC;

-- Refuse a statement over a limit (54000, as the capture budget: a statement too large for
-- a rule, not a server in trouble). The transaction aborts: nothing was changed.
CREATE FUNCTION softguard._limit_refuse(what text, limit_name text, over text, by text,
                                        hint text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '54000',
        MESSAGE = format('softguard: %s is refused by policy (%s): %s; decided by %s',
                         what, limit_name, over, coalesce(by, 'the policy')),
        DETAIL = 'The statement was rolled back: nothing was changed.',
        HINT = hint;
END $$;
REVOKE ALL ON FUNCTION softguard._limit_refuse(text, text, text, text, text) FROM PUBLIC;

-- Count `n` more rows deleted or updated by statement `key` (as _capture_rows keys it: the
-- client statement's start) against `lim` (set by `by`); refuse over it. `what` names the
-- table the rows came from. A transaction-local running total
-- (softguard.limit_rows = '<key>/<rows>'), as the capture budget's: the session could reset
-- it from a trigger of its own, which only splits the count the way separate statements
-- would (each table's rows are still counted whole), what the HINT asks for anyway.
CREATE FUNCTION softguard._limit_rows(key text, n bigint, lim bigint, by text, what text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s text := current_setting('softguard.limit_rows', true);
    total bigint := n;
BEGIN
    IF split_part(s, '/', 1) = key AND split_part(s, '/', 2) ~ '^[0-9]{1,18}$' THEN
        total := total + split_part(s, '/', 2)::bigint;
    END IF;
    IF total > lim AND NOT softguard._approved_here() THEN   -- a person approved it (86)
        PERFORM softguard._limit_refuse(
            'this statement', 'max_rows',
            format('it deletes or updates %s rows (%s included, cascades counted), over the'
                   ' limit of %s rows per statement', total, what, lim),
            by,
            format('Change at most %s rows per statement: narrow the WHERE clause (a key range)'
                   ' and repeat the statement for the next range. Or ask an operator to run'
                   ' it, or to raise max_rows for this role.', lim));
    END IF;
    PERFORM set_config('softguard.limit_rows', key || '/' || total, true);
END $$;
REVOKE ALL ON FUNCTION softguard._limit_rows(text, bigint, bigint, text, text) FROM PUBLIC;

-- Before a TRUNCATE or a DROP (`verb`) removes table `rel`: refuse when it is larger than
-- this session's max_table_bytes (heap, TOAST and indexes; a partitioned table with all its
-- partitions). O(partitions): sizes from the files, whatever the rows.
CREATE FUNCTION softguard._limit_table(rel oid, verb text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    reg softguard.sessions := softguard._session(false);
    size bigint;
BEGIN
    IF reg.max_table_bytes IS NULL THEN
        RETURN;
    END IF;
    -- pg_partition_tree has no rows for a table that is not partitioned
    SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0) INTO size
      FROM (SELECT p.relid FROM pg_partition_tree(rel) p UNION SELECT rel) t;
    IF size > reg.max_table_bytes AND NOT softguard._approved_here() THEN
        PERFORM softguard._limit_refuse(
            format('%s %s', verb, rel::regclass), 'max_table_bytes',
            format('the table holds %s (with its indexes), over the limit of %s',
                   pg_size_pretty(size), pg_size_pretty(reg.max_table_bytes)),
            reg.max_table_bytes_by,
            'Remove its rows in batches with DELETE ... WHERE (a key range at a time), or ask'
            ' an operator to run it, or to raise max_table_bytes for this role.');
    END IF;
END $$;
REVOKE ALL ON FUNCTION softguard._limit_table(oid, text) FROM PUBLIC;

-- drop_op, before it moves anything: every table, partitioned table and materialized view
-- of the probe's list checked against max_table_bytes and the tables the session may not
-- drop. PUBLIC (drop_op runs as the
-- client): it only ever refuses.
CREATE FUNCTION softguard._limit_drop(list jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    reg softguard.sessions := softguard._session(false);
BEGIN
    IF reg.max_table_bytes IS NULL AND reg.denied_tables IS NOT DISTINCT FROM '[]' THEN
        RETURN;
    END IF;
    FOR r IN SELECT c.oid, c.relkind, c.relname, n.nspname FROM jsonb_array_elements(list) e
               JOIN pg_class c ON c.oid = (e->>'objid')::oid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE (e->>'classid')::oid = 'pg_class'::regclass
                AND coalesce((e->>'objsubid')::int, 0) = 0 AND c.relkind IN ('r', 'p', 'm')
              ORDER BY c.oid LOOP
        PERFORM softguard._table_denied(reg.denied_tables, r.nspname, r.relname, 'drop',
                                        'DROP');
        PERFORM softguard._limit_table(r.oid, CASE r.relkind WHEN 'm' THEN 'DROP MATERIALIZED VIEW'
                                                             ELSE 'DROP TABLE' END);
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION softguard._limit_drop(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION softguard._limit_drop(jsonb) TO PUBLIC;
