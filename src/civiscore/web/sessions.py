"""Browser sessions: a signed-in key becomes a random session id in an HttpOnly cookie.

The key itself never goes back to the browser. Each session carries a CSRF token that every
form posts back.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from civiscore.api.keys import Party

COOKIE = "civiscore_session"
LIFETIME_SECONDS = 8 * 3600


@dataclass
class WebSession:
    party: Party
    csrf: str
    expires: float
    flash: list[str] = field(default_factory=list)


class Sessions:
    def __init__(self) -> None:
        self._sessions: dict[str, WebSession] = {}
        self._lock = threading.Lock()

    def start(self, party: Party) -> tuple[str, WebSession]:
        sid = secrets.token_urlsafe(32)
        session = WebSession(party, secrets.token_urlsafe(24), time.monotonic() + LIFETIME_SECONDS)
        with self._lock:
            self._prune()
            self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> WebSession | None:
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is None or session.expires < time.monotonic():
                self._sessions.pop(sid, None)
                return None
            return session

    def end(self, sid: str | None) -> None:
        if sid:
            with self._lock:
                self._sessions.pop(sid, None)

    def _prune(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if v.expires < now]:
            del self._sessions[sid]
