"""softguard: a PostgreSQL wire-protocol proxy that makes destructive SQL reversible.

Layout (dependencies point one way: cli -> proxy -> policy -> sql, wire):

- ``wire``     sans-IO protocol codec: framing, startup packets, message builders.
- ``sql``      pure SQL inspection: classify a statement with PostgreSQL's own grammar.
- ``policy``   the one seam that turns a classification into allow / refuse.
- ``proxy``    asyncio I/O only: listener, client and upstream connections, TLS.
- ``embedded`` a throwaway local PostgreSQL for the Quickstart, the tests and benchmarks.
- ``cli``      the ``softguard`` command.
"""

__version__ = "0.1.0"
