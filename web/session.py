"""Sign-in for people: who a token belongs to, and signed session cookies with a CSRF token.

A person presents their own token once (a POST form, never a URL); the service answers with a session
cookie (HttpOnly, SameSite=Strict, Secure behind https) that is signed with a key kept in the home
(`web-session.key`, mode 0600, made on first use), so every serve process on the home reads it.

The cookie names the person, their role and a fingerprint of the token they signed in with: a session
ends when it idles past `serve.session_minutes`, at `serve.session_max_hours` after sign-in, at log-out,
and as soon as that person's token is changed or removed from the configuration. Each sign-in makes a
new session id (the CSRF token is derived from it), so a session planted before sign-in is worthless.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from siemcrew.config.settings import ServeSettings, secret

Role = Literal["approver", "viewer"]
COOKIE = "siemcrew_session"
SIGNIN_COOKIE = "siemcrew_signin"  # ties the sign-in form's CSRF token to this browser
KEY_FILE = "web-session.key"


@dataclass(frozen=True)
class Person:
    name: str
    role: Role

    @property
    def can_decide(self) -> bool:
        return self.role == "approver"


@dataclass(frozen=True)
class Session:
    person: Person
    sid: str
    issued: float
    seen: float
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_key(home: Path) -> bytes:
    """The home's session key: made once with 0600, then read; a key others may read is refused."""
    path = home / KEY_FILE
    home.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            raise PermissionError(f"{path} must be readable by its owner only (chmod 600)") from None
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
        if len(key) < 32:
            raise ValueError(f"{path} is not a session key")
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.hex())
    return key


class People:
    """Who a presented token belongs to: an approver (by name) or the viewer. The intake token and the
    webhook secret sign in as nobody: they live in the SIEM, not with a person."""

    def __init__(self, serve: ServeSettings) -> None:
        self.serve = serve

    def _credentials(self) -> list[tuple[Person, str]]:
        found = [(Person(name, "approver"), value) for name, env in self.serve.approvers.items()
                 if (value := secret(env))]
        viewer = secret(self.serve.viewer_token_env)
        if viewer:
            found.append((Person("viewer", "viewer"), viewer))
        return found

    def identify(self, token: str) -> tuple[Person, str] | None:
        """(person, their current token) for a presented token; compared in constant time, all of them."""
        match = None
        for person, value in self._credentials():
            if hmac.compare_digest(token.encode(), value.encode()) and match is None:
                match = (person, value)
        return match

    def current_token(self, person: Person) -> str | None:
        for known, value in self._credentials():
            if known == person:
                return value
        return None

    def configured(self) -> list[str]:
        """Who can sign in now, for the start-up message (names and env var names, never values)."""
        lines = [f"approver {name} (token in ${env})" for name, env in self.serve.approvers.items() if secret(env)]
        if secret(self.serve.viewer_token_env):
            lines.append(f"viewer (token in ${self.serve.viewer_token_env})")
        return lines


class Sessions:
    """Issue and check session cookies; log-outs are remembered by this process until the cookie expires."""

    def __init__(self, key: bytes, people: People, idle_s: float, max_s: float) -> None:
        self.key = key
        self.people = people
        self.idle_s = idle_s
        self.max_s = max_s
        self._ended: dict[str, float] = {}
        self._lock = threading.Lock()

    def _mac(self, *parts: str) -> str:
        return hmac.new(self.key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()

    def _fingerprint(self, token: str) -> str:
        return self._mac("token", token)[:32]

    def issue(self, person: Person, token: str, now: float | None = None) -> tuple[Session, str]:
        """A new session (a fresh id) and its cookie value."""
        now = time.time() if now is None else now
        sid = secrets.token_urlsafe(18)
        session = Session(person, sid, now, now, self._mac("csrf", sid))
        return session, self._cookie(session, self._fingerprint(token))

    def renew(self, session: Session, now: float | None = None) -> str | None:
        """The cookie again with `seen` moved to now (sliding idle expiry); None if the token changed meanwhile."""
        token = self.people.current_token(session.person)
        if token is None:
            return None
        now = time.time() if now is None else now
        return self._cookie(Session(session.person, session.sid, session.issued, now, session.csrf),
                            self._fingerprint(token))

    def _cookie(self, session: Session, fingerprint: str) -> str:
        body = _b64(json.dumps({"n": session.person.name, "r": session.person.role, "s": session.sid,
                                "i": int(session.issued), "t": int(session.seen), "f": fingerprint},
                               separators=(",", ":")).encode())
        return f"{body}.{self._mac('session', body)}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie carries, if its signature holds, it has not expired or been ended, and
        the person's token is still the one they signed in with."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac("session", body).encode()):
            return None
        try:
            data = json.loads(_unb64(body))
            person = Person(str(data["n"]), data["r"])
            sid, issued, seen, fingerprint = str(data["s"]), float(data["i"]), float(data["t"]), str(data["f"])
        except (ValueError, KeyError, TypeError):
            return None
        now = time.time() if now is None else now
        if person.role not in ("approver", "viewer") or now - seen > self.idle_s or now - issued > self.max_s:
            return None
        with self._lock:
            if sid in self._ended:
                return None
        token = self.people.current_token(person)
        if token is None or not hmac.compare_digest(fingerprint, self._fingerprint(token)):
            return None
        return Session(person, sid, issued, seen, self._mac("csrf", sid))

    def end(self, session: Session) -> None:
        with self._lock:
            now = time.time()
            self._ended = {sid: until for sid, until in self._ended.items() if until > now}
            self._ended[session.sid] = session.issued + self.max_s

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(session.csrf.encode(), str(presented).encode())

    # the sign-in form has no session yet: its CSRF token is bound to a nonce in a short-lived cookie
    def signin_nonce(self) -> tuple[str, str]:
        nonce = secrets.token_urlsafe(18)
        return nonce, self._mac("signin", nonce)

    def signin_ok(self, nonce: str | None, presented: str | None) -> bool:
        return bool(nonce) and bool(presented) and hmac.compare_digest(
            self._mac("signin", str(nonce)).encode(), str(presented).encode())


class SignInThrottle:
    """At most `limit` failed sign-ins per `window_s` in this process: a token cannot be guessed by volume."""

    def __init__(self, limit: int = 20, window_s: float = 60.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._failures: list[float] = []
        self._lock = threading.Lock()

    def blocked(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            self._failures = [t for t in self._failures if now - t < self.window_s]
            return len(self._failures) >= self.limit

    def failed(self, now: float | None = None) -> None:
        with self._lock:
            self._failures.append(time.time() if now is None else now)
