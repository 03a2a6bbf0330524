"""asyncio I/O: the listener, client and upstream connections, TLS, workers.

Owns every socket softguard opens for proxying. Protocol decisions come from
``softguard.wire`` (framing) and ``softguard.policy`` (what to do with a statement);
this package only moves bytes and applies those answers. How a connection's byte streams
become actions is one sans-IO module, ``core.py`` (with ``commands.py``, what it asks
for, and ``statements.py``, the planner); ``session.py`` executes its answers.

Rules that always hold here:
- Session mode: one upstream connection per client connection, for the client's life.
- Bytes that need no inspection travel untouched, in the order they arrived.
- Anything softguard itself says to a client is a well-formed ErrorResponse or
  NoticeResponse, sent only at a message boundary of the server stream.
- Memory per connection is bounded: transports pause the other side's reading when
  their write buffer is full, and only Query/Parse messages are ever held whole.
"""
