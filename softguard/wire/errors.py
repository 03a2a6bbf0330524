"""Protocol errors, named by whose fault they are (after h11's Local/RemoteProtocolError)."""


class ProtocolViolation(Exception):
    """A peer broke the protocol. ``sqlstate`` is what the client is told."""

    sqlstate = "08P01"  # protocol_violation

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        if sqlstate is not None:
            self.sqlstate = sqlstate

    @property
    def message(self) -> str:
        return str(self.args[0])


class ClientProtocolError(ProtocolViolation):
    """The client sent bytes that are not valid frontend protocol."""


class ServerProtocolError(ProtocolViolation):
    """The upstream server sent bytes that are not valid backend protocol."""


class MessageTooLarge(ClientProtocolError):
    """A message is larger than softguard is configured to hold for inspection."""

    sqlstate = "54000"  # program_limit_exceeded
