"""The request handler of `HTTPFrontEnd`: HTTP in and out, nothing else.

Parsing the body and answering are `HTTPFrontEnd`'s (`http_server.py`);
this module reads requests off the socket, maps errors to status codes and
writes the answers.
"""

import http.server
import json
import sys
import time
import urllib.parse

from keras_slicing_lite import http_body
from keras_slicing_lite import live


class Server(http.server.ThreadingHTTPServer):
    """One thread per connection; hang-ups are not errors."""

    daemon_threads = True
    # The listen backlog: the default of 5 resets connections that arrive
    # together in a burst before the accept loop takes them.
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A client that hangs up (one that gave up waiting) is routine, not
        # an error worth a traceback.
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


def handler(front):
    """The request handler class of `front`, an `HTTPFrontEnd`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "keras-slicing-lite"
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle's algorithm the
        # body would wait for the client's delayed ACK (40 ms on Linux).
        disable_nagle_algorithm = True

        def parse_request(self):
            # Stamped as soon as the request line is in, before the
            # headers are parsed: a request's deadline runs from here.
            self.received = time.perf_counter()
            self.cpu = time.thread_time()
            return super().parse_request()

        def do_GET(self):
            front._count("requests")
            path = urllib.parse.urlsplit(self.path).path
            if path == "/health":
                self._send(*front.health())
            elif path == "/stats":
                self._send(200, front.stats())
            elif path == "/predict":
                self._error(405, "use POST for /predict.", allow="POST")
            else:
                self._error(404, f"no such path {path!r}; try /predict, /health, /stats.")

        def do_POST(self):
            received = self.received
            front._count("requests")
            path, _, query = self.path.partition("?")
            if path != "/predict":
                if path in ("/health", "/stats"):
                    self._error(405, f"use GET for {path}.", allow="GET")
                else:
                    self._error(404, f"no such path {path!r}; try /predict.")
                return
            length = self.headers.get("Content-Length")
            if length is None:
                self._error(411, "a Content-Length header is required.")
                return
            try:
                length = int(length)
                if length < 0:
                    raise ValueError
            except ValueError:
                self._error(400, f"bad Content-Length {length!r}.")
                return
            if length > front.max_body_bytes:
                self._error(
                    413,
                    f"the body has {length} bytes; at most "
                    f"max_body_bytes={front.max_body_bytes} are accepted.",
                )
                return
            raw = self.rfile.read(length)
            kind = http_body.media_type(self.headers.get("Content-Type"))
            try:
                fields = http_body.query_fields(query)
                if kind == http_body.NPY:
                    x = http_body.parse_npy(raw)
                    status, answer = front.predict_array(x, received, fields, f"{kind} body")
                elif kind == http_body.RAW:
                    x = http_body.parse_raw(raw, front.bundle.input_shape, front.bundle.input_dtype)
                    status, answer = front.predict_array(x, received, fields, f"{kind} body")
                else:  # JSON, whatever the type says (curl -d sends a form type)
                    body = http_body.parse_json(raw, kind)
                    status, answer = front.predict(body, received, fields)
            except http_body.ClientError as error:
                self._error(400, str(error))
            except live.QueueFullError as error:
                front._count("rejected")
                self._error(503, str(error), retry_after="1")
            except http_body.RequestTimeout as error:
                front._count("timeouts")
                self._error(504, str(error))
            except (live.ServerStoppedError, live.ServerFailedError) as error:
                front._count("server_errors")
                self._error(503, str(error))
            except Exception as error:  # the worker's fault, as the future says
                front._count("server_errors")
                self._error(500, f"{type(error).__name__}: {error}")
            else:
                if http_body.accepts_npy(self.headers.get("Accept")) and "outputs" in answer:
                    self._send(status, *http_body.npy_answer(answer))
                else:
                    self._send(status, answer)
                front.delivered(time.thread_time() - self.cpu)

        def _error(self, status, message, allow=None, retry_after=None):
            if 400 <= status < 500:
                front._count("client_errors")
            # The body may be unread: end the connection rather than parse
            # its rest as the next request.
            self.close_connection = True
            headers = {"Connection": "close"}
            if allow:
                headers["Allow"] = allow
            if retry_after:
                headers["Retry-After"] = retry_after
            self._send(status, {"error": message}, headers)

        def _send(self, status, payload, headers=None):
            """Sends JSON, or `payload` as is when it is bytes (with its
            Content-Type in `headers`)."""
            data = payload
            headers = dict(headers or {})
            if not isinstance(payload, bytes):
                data = json.dumps(payload).encode("utf-8")
                headers["Content-Type"] = http_body.JSON
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client left; nothing else to do for it

        def log_message(self, format, *args):
            if front.verbose:
                super().log_message(format, *args)

    return Handler
