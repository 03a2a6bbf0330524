"""The one policy seam: a statement's classification -> what softguard does with it.

The proxy asks ``Policy.decide`` about every statement that is not provably harmless;
nothing else in the proxy interprets classifications. For now every statement is
allowed and the decision is only logged (destructive statements at INFO, with their
targets); rewriting and refusing plug in here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from softguard.sql import Classification, Kind

log = logging.getLogger("softguard.policy")


class Action(StrEnum):
    ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """Who is asking: what rules will match on."""

    user: str
    database: str
    application_name: str
    client_addr: str


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""


ALLOW = Decision(Action.ALLOW)


class Policy:
    def decide(
        self, classification: Classification, session: SessionInfo, *, source: str
    ) -> Decision:
        """``source`` says where the text came from: "query" (simple) or "parse"."""
        kind = classification.kind
        if kind is Kind.SAFE:
            return ALLOW
        if kind is Kind.DESTRUCTIVE:
            for stmt in classification.statements:
                if stmt.kind is Kind.DESTRUCTIVE:
                    log.info(
                        "destructive %s via %s: targets=%s%s user=%s db=%s app=%s client=%s",
                        stmt.action,
                        source,
                        ",".join(t.qualified() for t in stmt.targets) or "-",
                        f" ({stmt.detail})" if stmt.detail else "",
                        session.user,
                        session.database,
                        session.application_name or "-",
                        session.client_addr,
                    )
        elif kind is Kind.OPAQUE:
            log.info(
                "opaque statement via %s (%s): user=%s db=%s",
                source,
                "; ".join(
                    s.detail or s.action for s in classification.statements if s.kind is Kind.OPAQUE
                ),
                session.user,
                session.database,
            )
        else:
            log.info(
                "unparseable statement via %s: %s; user=%s db=%s",
                source,
                classification.error,
                session.user,
                session.database,
            )
        return ALLOW
