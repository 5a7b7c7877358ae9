"""Where people open the pages: the queue's address printed by `serve`, and the case page's external URL
that write-back comments carry (`serve.public_url`). Kept free of web-framework imports: the runtime
calls it from every write-back."""

from __future__ import annotations

from urllib.parse import quote

from siemcrew.config.settings import Settings


def queue_url(settings: Settings) -> str:
    """Where people open the pages: `serve.public_url`, else the address serve listens on."""
    if settings.serve.public_url:
        return settings.serve.public_url + "/"
    host = settings.serve.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{settings.serve.port}/"


def case_url(settings: Settings, case_id: str) -> str | None:
    """The case page's external URL, for write-back comments (None without `serve.public_url`)."""
    if not settings.serve.public_url:
        return None
    return f"{settings.serve.public_url}/cases/{quote(case_id, safe='')}"
