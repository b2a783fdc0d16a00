"""Defaults and checks shared by the two HTTP transports."""

import json
import math

DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 256


def positive(value, name, owner):
    """`value` as a positive finite float, or a `ValueError` naming it."""
    if type(value) not in (int, float) or not math.isfinite(float(value)) or not value > 0:
        raise ValueError(
            f"{owner}: {name} must be a positive number. Received: {name}={value!r}"
        )
    return float(value)


def front_end_limits(read_timeout_s, max_connections, owner):
    """A front end's checked `(read_timeout_s, max_connections)`.

    Both transports take the same limits, refused alike: a positive finite
    number of seconds and a positive whole number of connections.
    """
    read_timeout_s = positive(read_timeout_s, "read_timeout_s", owner)
    if type(max_connections) is not int or max_connections < 1:
        raise ValueError(
            f"{owner}: max_connections must be a positive integer. "
            f"Received: max_connections={max_connections!r}"
        )
    return read_timeout_s, max_connections


def raw_reply(status, reason, message, field=None):
    """A complete HTTP/1.1 JSON error response as bytes, for a transport
    answering outside a request (a refused connection, malformed HTTP)."""
    body = json.dumps({"error": message, "field": field}).encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
