"""Catalog consistency (issue 16 class 4): every reference the catalogs hold points at a
row that exists, and pg_shdepend says what the objects' owners, ACLs and policies say.

PostgreSQL keeps this true by itself; softguard writes a few catalog rows directly (undo
puts ACLs and inheritance flags back) and moves, renames and re-owns objects, so the
fidelity tier, the quarantine tests and a generated sequence test
(tests/fidelity/test_catalog_consistency.py) run this check after each step.

One read-only query any role may run (pg_roles, never pg_authid), over objects created
after initdb (oid >= 16384) and those of PostgreSQL's own that pg_shdepend names (the
public schema's ACL): the others, and roles below 16384, are pinned and have no pg_depend
/ pg_shdepend rows. Each row it returns is one inconsistency:
(check, object, detail). Publications: every membership (pg_publication_rel, its column
list, pg_publication_namespace) names a live publication, relation, column and schema, and
no kept table or schema is a member (decision 0038). Dropped columns are left out:
PostgreSQL itself keeps their old attcollation (RemoveAttributeById clears atttypid only),
also after a direct DROP.
"""

from __future__ import annotations

from typing import Any

import psycopg

# Catalogs whose rows are objects with an owner (and maybe an ACL) that may live in a
# database: catalog -> (owner column, ACL column). pg_class, pg_attribute (column ACLs),
# pg_type and pg_user_mapping (read through its view) have rules of their own in OWNED.
PLAIN_OWNED = {
    "pg_proc": ("proowner", "proacl"),
    "pg_namespace": ("nspowner", "nspacl"),
    "pg_collation": ("collowner", None),
    "pg_conversion": ("conowner", None),
    "pg_operator": ("oprowner", None),
    "pg_opclass": ("opcowner", None),
    "pg_opfamily": ("opfowner", None),
    "pg_ts_config": ("cfgowner", None),
    "pg_ts_dict": ("dictowner", None),
    "pg_statistic_ext": ("stxowner", None),
    "pg_event_trigger": ("evtowner", None),
    "pg_extension": ("extowner", None),
    "pg_foreign_data_wrapper": ("fdwowner", "fdwacl"),
    "pg_foreign_server": ("srvowner", "srvacl"),
    "pg_language": ("lanowner", "lanacl"),
    "pg_largeobject_metadata": ("lomowner", "lomacl"),  # classid pg_largeobject
    "pg_publication": ("pubowner", None),
    "pg_default_acl": ("defaclrole", "defaclacl"),
}

# (classid, objid, objsubid, owner, acl, owns) of every object with an owner or an ACL;
# owns = PostgreSQL records the owner in pg_shdepend ('o'). It does not for what follows
# another object's owner: indexes, TOAST tables, a composite type's relation (its type has
# the row), a table's row type, an implicit array type; nor for a column, whose ACL's
# dependencies leave out its table's owner.
OWNED = (
    """
owned (classid, objid, objsubid, owner, acl, owns) AS (SELECT * FROM (
    SELECT 'pg_class'::regclass, oid, 0, relowner, relacl, relkind NOT IN ('i', 'I', 't', 'c')
      FROM pg_class
    UNION ALL
    SELECT 'pg_class'::regclass, a.attrelid, a.attnum::int, c.relowner, a.attacl, false
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
     WHERE a.attacl IS NOT NULL AND NOT a.attisdropped
    UNION ALL
    SELECT 'pg_type'::regclass, t.oid, 0, t.typowner, t.typacl,
           (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
           AND NOT EXISTS (SELECT FROM pg_type e WHERE e.typarray = t.oid)
      FROM pg_type t"""
    + "".join(
        f"\n    UNION ALL SELECT '{cat.removesuffix('_metadata')}'::regclass, oid, 0, {own},"
        f" {acl or 'NULL'}, true\n      FROM {cat}"
        for cat, (own, acl) in PLAIN_OWNED.items()
    )
    # A user mapping's user is recorded as its owner (0: PUBLIC's mapping, none); read
    # through the view every role may read (pg_user_mapping is superuser-only).
    + "\n    UNION ALL SELECT 'pg_user_mapping'::regclass, umid, 0, umuser, NULL, true"
    + "\n      FROM pg_user_mappings"
    + "\n) o (classid, objid, objsubid, owner, acl, owns))"
)


def _found(cls: str, obj: str, sub: str) -> str:
    """SQL: the object (classid, objid, objsubid) exists. Index lookups for the catalogs
    most rows name (pg_identify_object is ~10 times slower); a column must not be dropped."""
    direct = ("pg_class", "pg_type", "pg_proc", "pg_collation", "pg_namespace", "pg_constraint",
              "pg_attrdef", "pg_rewrite", "pg_trigger", "pg_operator")  # fmt: skip
    whens = "".join(
        f"\n        WHEN '{c}'::regclass THEN EXISTS (SELECT FROM {c} x WHERE x.oid = {obj})"
        for c in direct
    )
    return (
        f"(CASE {cls}{whens}\n"
        f"        ELSE (pg_identify_object({cls}, {obj}, 0)).identity IS NOT NULL END\n"
        f"    AND ({sub} = 0 OR {cls} <> 'pg_class'::regclass OR EXISTS (\n"
        f"        SELECT FROM pg_attribute a WHERE a.attrelid = {obj} AND a.attnum = {sub}\n"
        f"           AND NOT a.attisdropped)))"
    )


QUERY = (
    (
        "WITH sd AS (SELECT * FROM pg_shdepend"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())),"
        + OWNED
        + """,
uo AS (  -- those created after initdb, and PostgreSQL's own that pg_shdepend names
    SELECT * FROM owned o
     WHERE o.objid >= 16384
        OR EXISTS (SELECT FROM sd s WHERE s.classid = o.classid AND s.objid = o.objid)
),
acl_roles (classid, objid, objsubid, role) AS (
    SELECT DISTINCT o.classid, o.objid, o.objsubid, r.role
      FROM uo o, LATERAL aclexplode(o.acl) a,
           LATERAL (VALUES (a.grantee), (a.grantor)) r (role)
     WHERE r.role >= 16384 AND r.role <> o.owner
),
policy_roles (classid, objid, objsubid, role) AS (
    SELECT DISTINCT 'pg_policy'::regclass, p.oid, 0, r.role
      FROM pg_policy p, unnest(p.polroles) r (role)
     WHERE p.oid >= 16384 AND r.role >= 16384
),
dep AS (
    SELECT * FROM pg_depend WHERE objid >= 16384 OR refobjid >= 16384
)
SELECT 'attribute type', a.attrelid::regclass::text || '.' || a.attname, a.atttypid::text
  FROM pg_attribute a
 WHERE a.attrelid >= 16384 AND NOT a.attisdropped
   AND NOT EXISTS (SELECT FROM pg_type t WHERE t.oid = a.atttypid)
UNION ALL
SELECT 'attribute collation', a.attrelid::regclass::text || '.' || a.attname,
       a.attcollation::text
  FROM pg_attribute a
 WHERE a.attrelid >= 16384 AND NOT a.attisdropped AND a.attcollation <> 0
   AND NOT EXISTS (SELECT FROM pg_collation c WHERE c.oid = a.attcollation)
UNION ALL
SELECT 'attribute relation', a.attrelid::text, a.attname
  FROM pg_attribute a
 WHERE a.attrelid >= 16384 AND NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = a.attrelid)
UNION ALL
SELECT 'class ' || x.col, c.oid::text || ' ' || c.relname, x.ref::text
  FROM pg_class c,
       LATERAL (VALUES ('reltype', c.reltype,
                        EXISTS (SELECT FROM pg_type t WHERE t.oid = c.reltype)),
                       ('relnamespace', c.relnamespace,
                        EXISTS (SELECT FROM pg_namespace n WHERE n.oid = c.relnamespace)),
                       ('relowner', c.relowner,
                        EXISTS (SELECT FROM pg_roles r WHERE r.oid = c.relowner)),
                       ('reltoastrelid', c.reltoastrelid,
                        EXISTS (SELECT FROM pg_class t WHERE t.oid = c.reltoastrelid)),
                       ('relam', c.relam, EXISTS (SELECT FROM pg_am m WHERE m.oid = c.relam)),
                       ('reltablespace', c.reltablespace,
                        EXISTS (SELECT FROM pg_tablespace s WHERE s.oid = c.reltablespace)))
               x (col, ref, found)
 WHERE c.oid >= 16384 AND x.ref <> 0 AND NOT x.found
UNION ALL
SELECT 'type ' || x.col, t.oid::text || ' ' || t.typname, x.ref::text
  FROM pg_type t,
       LATERAL (VALUES ('typnamespace', t.typnamespace,
                        EXISTS (SELECT FROM pg_namespace n WHERE n.oid = t.typnamespace)),
                       ('typowner', t.typowner,
                        EXISTS (SELECT FROM pg_roles r WHERE r.oid = t.typowner)),
                       ('typcollation', t.typcollation,
                        EXISTS (SELECT FROM pg_collation c WHERE c.oid = t.typcollation)),
                       ('typrelid', t.typrelid,
                        EXISTS (SELECT FROM pg_class c WHERE c.oid = t.typrelid)),
                       ('typelem', t.typelem,
                        EXISTS (SELECT FROM pg_type e WHERE e.oid = t.typelem)),
                       ('typarray', t.typarray,
                        EXISTS (SELECT FROM pg_type e WHERE e.oid = t.typarray)),
                       ('typbasetype', t.typbasetype,
                        EXISTS (SELECT FROM pg_type e WHERE e.oid = t.typbasetype)))
               x (col, ref, found)
 WHERE t.oid >= 16384 AND x.ref <> 0 AND NOT x.found
UNION ALL
SELECT 'proc ' || x.col, p.oid::text || ' ' || p.proname, x.ref::text
  FROM pg_proc p,
       LATERAL (VALUES ('pronamespace', p.pronamespace,
                        EXISTS (SELECT FROM pg_namespace n WHERE n.oid = p.pronamespace)),
                       ('proowner', p.proowner,
                        EXISTS (SELECT FROM pg_roles r WHERE r.oid = p.proowner)),
                       ('prorettype', p.prorettype,
                        EXISTS (SELECT FROM pg_type e WHERE e.oid = p.prorettype)))
               x (col, ref, found)
 WHERE p.oid >= 16384 AND x.ref <> 0 AND NOT x.found
UNION ALL
SELECT 'proc argument type', p.oid::text || ' ' || p.proname, a.t::text
  FROM pg_proc p, unnest(p.proargtypes) a (t)
 WHERE p.oid >= 16384 AND NOT EXISTS (SELECT FROM pg_type e WHERE e.oid = a.t)
UNION ALL
SELECT 'index collation', i.indexrelid::regclass::text, c.coll::text
  FROM pg_index i, unnest(i.indcollation) c (coll)
 WHERE i.indexrelid >= 16384 AND c.coll <> 0
   AND NOT EXISTS (SELECT FROM pg_collation x WHERE x.oid = c.coll)
UNION ALL
SELECT 'index operator class', i.indexrelid::regclass::text, c.opc::text
  FROM pg_index i, unnest(i.indclass) c (opc)
 WHERE i.indexrelid >= 16384 AND c.opc <> 0
   AND NOT EXISTS (SELECT FROM pg_opclass x WHERE x.oid = c.opc)
UNION ALL
SELECT 'index relation', i.indexrelid::text, i.indrelid::text
  FROM pg_index i
 WHERE i.indexrelid >= 16384
   AND NOT (EXISTS (SELECT FROM pg_class c WHERE c.oid = i.indrelid)
            AND EXISTS (SELECT FROM pg_class c WHERE c.oid = i.indexrelid))
UNION ALL
SELECT 'constraint reference', c.oid::text || ' ' || c.conname,
       concat_ws(' ', c.conrelid, c.contypid, c.confrelid, c.conindid)
  FROM pg_constraint c
 WHERE c.oid >= 16384
   AND NOT (EXISTS (SELECT FROM pg_namespace n WHERE n.oid = c.connamespace)
            AND (c.conrelid = 0 OR EXISTS (SELECT FROM pg_class r WHERE r.oid = c.conrelid))
            AND (c.confrelid = 0 OR EXISTS (SELECT FROM pg_class r WHERE r.oid = c.confrelid))
            AND (c.conindid = 0 OR EXISTS (SELECT FROM pg_class r WHERE r.oid = c.conindid))
            AND (c.contypid = 0 OR EXISTS (SELECT FROM pg_type t WHERE t.oid = c.contypid)))
UNION ALL
SELECT 'collation reference', c.oid::text || ' ' || c.collname,
       c.collnamespace::text || ' ' || c.collowner::text
  FROM pg_collation c
 WHERE c.oid >= 16384
   AND NOT (EXISTS (SELECT FROM pg_namespace n WHERE n.oid = c.collnamespace)
            AND EXISTS (SELECT FROM pg_roles r WHERE r.oid = c.collowner))
UNION ALL
SELECT 'publication member', p.pubname::text, concat_ws(' ', pr.prpubid, pr.prrelid)
  FROM pg_publication_rel pr LEFT JOIN pg_publication p ON p.oid = pr.prpubid
 WHERE p.oid IS NULL OR NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = pr.prrelid)
UNION ALL
SELECT 'publication column', pr.prrelid::regclass::text, a.n::text
  FROM pg_publication_rel pr, unnest(pr.prattrs::smallint[]) a (n)
 WHERE NOT EXISTS (SELECT FROM pg_attribute x WHERE x.attrelid = pr.prrelid
                      AND x.attnum = a.n AND NOT x.attisdropped)
UNION ALL
SELECT 'publication schema', p.pubname::text, concat_ws(' ', pn.pnpubid, pn.pnnspid)
  FROM pg_publication_namespace pn LEFT JOIN pg_publication p ON p.oid = pn.pnpubid
 WHERE p.oid IS NULL OR NOT EXISTS (SELECT FROM pg_namespace n WHERE n.oid = pn.pnnspid)
UNION ALL
-- softguard's own rule (decision 0038): a kept table or schema is in no publication, as
-- after a direct DROP (a publication FOR ALL TABLES has no such rows). The quarantine's
-- names are spelled at run time: the fidelity tier runs this through the proxy, whose
-- text check refuses statements naming softguard's schemas.
SELECT 'kept object in a publication', p.pubname::text, n.nspname::text
  FROM pg_publication p
  JOIN (SELECT pr.prpubid, c.relnamespace FROM pg_publication_rel pr
          JOIN pg_class c ON c.oid = pr.prrelid
        UNION ALL
        SELECT pn.pnpubid, pn.pnnspid FROM pg_publication_namespace pn) m (pub, nsp)
    ON m.pub = p.oid
  JOIN pg_namespace n ON n.oid = m.nsp
 WHERE n.nspname = 'soft' || 'guard_quarantine' OR n.nspname LIKE 'soft' || 'guard\\_q%'
UNION ALL
SELECT 'depend object missing', concat_ws('/', d.classid::regclass, d.objid, d.objsubid),
       d.deptype::text || ' on ' || coalesce((pg_identify_object(d.refclassid, d.refobjid,
                                                          d.refobjsubid)).identity, '?')
  FROM dep d
 WHERE NOT {found_obj}
UNION ALL
SELECT 'depend reference missing', concat_ws('/', d.refclassid::regclass, d.refobjid,
                                             d.refobjsubid),
       d.deptype::text || ' from ' || coalesce((pg_identify_object(d.classid, d.objid,
                                                             d.objsubid)).identity, '?')
  FROM dep d
 WHERE NOT {found_ref}
UNION ALL
SELECT 'depend on a dropped column', concat_ws('/', d.classid::regclass, d.objid, d.objsubid),
       d.refobjid::regclass::text || '.' || a.attname
  FROM dep d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 AND a.attisdropped
UNION ALL
SELECT 'shdepend role missing', concat_ws('/', s.classid::regclass, s.objid, s.objsubid),
       s.deptype::text || ' ' || s.refobjid::text
  FROM sd s
 WHERE s.refclassid = 'pg_authid'::regclass
   AND NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = s.refobjid)
UNION ALL
SELECT 'shdepend object missing', concat_ws('/', s.classid::regclass, s.objid, s.objsubid),
       s.deptype::text || ' ' || s.refobjid::text
  FROM sd s
 WHERE (pg_identify_object(s.classid, s.objid, s.objsubid)).identity IS NULL
UNION ALL
SELECT 'owner not in pg_shdepend',
       coalesce((pg_identify_object(o.classid, o.objid, 0)).identity, o.objid::text),
       o.owner::regrole::text
  FROM uo o
 WHERE o.owns AND o.owner >= 16384
   AND NOT EXISTS (SELECT FROM sd s WHERE s.deptype = 'o' AND s.classid = o.classid
                      AND s.objid = o.objid AND s.refobjid = o.owner)
UNION ALL
SELECT 'pg_shdepend owner is not the owner',
       coalesce((pg_identify_object(s.classid, s.objid, 0)).identity, s.objid::text),
       s.refobjid::text || ' in pg_shdepend, owner '
       || coalesce((SELECT o.owner::text FROM uo o
                     WHERE o.classid = s.classid AND o.objid = s.objid AND o.owns), '?')
  FROM sd s
 WHERE s.deptype = 'o'
   AND NOT EXISTS (SELECT FROM uo o WHERE o.classid = s.classid AND o.objid = s.objid
                      AND o.owns AND o.owner = s.refobjid)
UNION ALL
SELECT 'ACL role not in pg_shdepend',
       coalesce((pg_identify_object(a.classid, a.objid, a.objsubid)).identity, a.objid::text),
       a.role::text
  FROM acl_roles a
 WHERE NOT EXISTS (SELECT FROM sd s WHERE s.deptype = 'a' AND s.classid = a.classid
                      AND s.objid = a.objid AND s.objsubid = a.objsubid
                      AND s.refobjid = a.role)
UNION ALL
SELECT 'pg_shdepend ACL role not in the ACL',
       coalesce((pg_identify_object(s.classid, s.objid, s.objsubid)).identity, s.objid::text),
       s.refobjid::text
  FROM sd s
 WHERE s.deptype = 'a'
   AND NOT EXISTS (SELECT FROM acl_roles a WHERE a.classid = s.classid AND a.objid = s.objid
                      AND a.objsubid = s.objsubid AND a.role = s.refobjid)
UNION ALL
SELECT 'policy role not in pg_shdepend',
       coalesce((pg_identify_object(p.classid, p.objid, 0)).identity, p.objid::text),
       p.role::text
  FROM policy_roles p
 WHERE NOT EXISTS (SELECT FROM sd s WHERE s.deptype = 'r' AND s.classid = p.classid
                      AND s.objid = p.objid AND s.refobjid = p.role)
UNION ALL
SELECT 'pg_shdepend policy role not in the policy',
       coalesce((pg_identify_object(s.classid, s.objid, 0)).identity, s.objid::text),
       s.refobjid::text
  FROM sd s
 WHERE s.deptype = 'r'
   AND NOT EXISTS (SELECT FROM policy_roles p WHERE p.objid = s.objid AND p.role = s.refobjid)
ORDER BY 1, 2, 3
"""
    )
    .replace("{found_obj}", _found("d.classid", "d.objid", "d.objsubid"))
    .replace("{found_ref}", _found("d.refclassid", "d.refobjid", "d.refobjsubid"))
)


def inconsistencies(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    """Each inconsistency of the connection's database: (check, object, detail)."""
    # JIT would compile this one-off query at every call (its cost estimate is high): off
    with conn.transaction():
        conn.execute("SET LOCAL jit = off")
        rows = conn.execute(QUERY, prepare=True).fetchall()  # planned once per connection
    return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]


def assert_consistent(conn: psycopg.Connection[Any], after: str = "") -> None:
    found = inconsistencies(conn)
    assert not found, f"catalog inconsistent{' after ' + after if after else ''}: {found}"


def check_dsn(dsn: str, after: str = "") -> None:
    """assert_consistent on a connection of its own (autocommit)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert_consistent(conn, after)
