"""What the emulators' HTTP handlers share on the wire."""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler


def hang_up(handler: BaseHTTPRequestHandler) -> None:
    """Close the connection without an answer: the client sees a dropped connection (after an applied write, a
    lost reply) and cannot know from the wire whether the request happened."""
    handler.close_connection = True
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
