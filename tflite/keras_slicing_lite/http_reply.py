"""A reply of the HTTP front ends, before a transport writes it."""

import json

from keras_slicing_lite import http_body


class Reply:
    """A status, a body (bytes) and headers; `close` ends the connection."""

    __slots__ = ("status", "body", "headers", "close")

    def __init__(self, status, body, headers=None, close=False):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.close = close


def json_reply(status, payload, headers=None, close=False):
    headers = dict(headers or {})
    headers["Content-Type"] = http_body.JSON
    return Reply(status, json.dumps(payload).encode("utf-8"), headers, close)


def error_reply(status, message, field=None, headers=None):
    """`{"error": message, "field": field}`; the connection is closed, since
    the body may be unread."""
    headers = dict(headers or {})
    headers["Connection"] = "close"
    return json_reply(status, {"error": message, "field": field}, headers, close=True)
