"""Authentication softguard ends itself: clients prove who they are to softguard (a users
file of SCRAM verifiers), and softguard proves who it is to the server with secrets it holds
(a passfile), so a client never learns the database password
(docs/decisions/0018-credentials-softguard-holds.md).

Sans-IO: these modules compute messages; the proxy core sends them.
"""
