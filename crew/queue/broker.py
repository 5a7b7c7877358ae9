"""The broker's address with its password, read from the environment or a file at the moment of use.

The password is put into the URL that Celery and redis-py are given and nowhere else: Celery prints
broker URLs with the password masked, and siemcrew never prints this one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from siemcrew.config.settings import secret


def broker_url(queue: Any) -> str:
    """`queue.broker` with the password from `password_env` / `password_file` when one is set."""
    password = secret(queue.password_env, queue.password_file)
    if not password:
        return str(queue.broker)
    parts = urlsplit(queue.broker)
    user = quote(parts.username or "", safe="")
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
    netloc = f"{user}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redis_client(queue: Any) -> Any:
    """A redis-py client on the broker's Redis (for the delivery counters kept beside the queue)."""
    import redis

    return redis.Redis.from_url(broker_url(queue), socket_timeout=10, socket_connect_timeout=10,
                                health_check_interval=30)
