"""softguard.sql: the pure SQL inspection seam. No I/O, no asyncio, no database.

Owns: deciding, with PostgreSQL's own grammar (pglast / libpg_query, PostgreSQL 18),
what a SQL text would do: `classify(sql)` for any text, `Classifier.classify_bytes(data,
client_encoding)` for the proxy's hot path (bytes prefilter, then a bounded LRU cache, then
a parse of the characters the server will read: `softguard.sql.reading`), and
`may_be_destructive(sql)`, the bytes prefilter itself. `softguard.sql.offload` classifies
large texts in a worker process.

What must always hold:
1. A statement that can destroy data is never classified SAFE. When in doubt a rule says
   OPAQUE (softguard cannot see) or UNPARSEABLE (softguard could not parse); the policy
   decides what those mean. Severity: UNPARSEABLE > DESTRUCTIVE > OPAQUE > SAFE.
2. `may_be_destructive(sql)` is False only if `classify()` of that text can only be SAFE
   (or UNPARSEABLE: text with none of the trigger words cannot destroy anything).
3. Pure and total: the same text always gives the same, immutable result; no function
   here raises on any input (bad SQL, hostile nesting, huge text), none does I/O.
4. Byte offsets (`Statement.location/length`) index the UTF-8 text: the wire bytes for a
   UTF8 session, else the decoded text (`softguard.sql.encoding.wire_offset` maps back).
5. A cache answers exactly what a parse would (offsets apart for `classify_shape`).
"""

from softguard.sql.cache import Classifier, ClassifierStats
from softguard.sql.classify import (
    Classification,
    Kind,
    Statement,
    Target,
    classify,
    quote_ident,
)
from softguard.sql.prefilter import DANGEROUS_FUNCTIONS, OPAQUE_FUNCTIONS, may_be_destructive

__all__ = [
    "DANGEROUS_FUNCTIONS",
    "OPAQUE_FUNCTIONS",
    "Classification",
    "Classifier",
    "ClassifierStats",
    "Kind",
    "Statement",
    "Target",
    "classify",
    "may_be_destructive",
    "quote_ident",
]
