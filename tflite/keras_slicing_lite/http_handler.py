"""The request handler of `HTTPFrontEnd`: HTTP in and out, nothing else.

What each request is answered is `ServingAPI`'s (`http_api.py`); this
module reads requests off the socket within the read timeout, caps the
connections served at once, and writes the replies.
"""

import concurrent.futures
import http.server
import socket
import sys
import threading
import time

from keras_slicing_lite import http_api
from keras_slicing_lite.transport import raw_reply


class Server(http.server.ThreadingHTTPServer):
    """One thread per connection, at most `front.max_connections` of them;
    hang-ups are not errors."""

    daemon_threads = True
    # The listen backlog: the default of 5 resets connections that arrive
    # together in a burst before the accept loop takes them.
    request_queue_size = 128

    def __init__(self, address, handler_class, front):
        self.front = front
        self._slots = threading.BoundedSemaphore(front.max_connections)
        super().__init__(address, handler_class)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.front.api.count("refused_connections")
            try:
                request.settimeout(1.0)
                request.sendall(raw_reply(
                    503, "Service Unavailable",
                    f"too many connections (max_connections={self.front.max_connections}); "
                    "retry later.", "connection",
                ))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        # A client that hangs up (one that gave up waiting) is routine, not
        # an error worth a traceback.
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionResetError, BrokenPipeError, TimeoutError)):
            super().handle_error(request, client_address)


def handler(front):
    """The request handler class of `front`, an `HTTPFrontEnd`."""
    api = front.api

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "keras-slicing-lite"
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle's algorithm the
        # body would wait for the client's delayed ACK (40 ms on Linux).
        disable_nagle_algorithm = True
        # The socket timeout of every read: a stalled client is dropped.
        timeout = front.read_timeout_s

        def parse_request(self):
            # Stamped as soon as the request line is in, before the
            # headers are parsed: a request's deadline runs from here.
            self.received = time.perf_counter()
            self.cpu = time.thread_time()
            try:
                return super().parse_request()
            except TimeoutError:
                self._write(self._timeout("headers"))
                return False

        def do_GET(self):
            self._serve()

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

        def _serve(self):
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = api.check_body(self.command, headers.get("content-length"))
            result = None
            if reply is None:
                body = b""
                if self.command == "POST":
                    body = self._read_body(int(headers["content-length"]))
                elif headers.get("content-length", "0") != "0":
                    self.close_connection = True  # a body we do not read
                if body is None:
                    reply = self._timeout("body")
                else:
                    result = reply = api.handle(self.command, self.path, headers, body, self.received)
            if isinstance(result, http_api.Pending):
                waited = concurrent.futures.wait(result.futures, timeout=api.request_timeout_s)
                reply = api.timed_out(result) if waited.not_done else result.reply()
            self._write(reply)
            if isinstance(result, http_api.Pending) and reply.status == 200:
                api.delivered(result, time.thread_time() - self.cpu)

        def _read_body(self, length):
            """The body, or `None` when it did not arrive in time."""
            deadline = time.monotonic() + front.read_timeout_s
            chunks, left = [], length
            try:
                while left:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self.connection.settimeout(remaining)
                    chunk = self.rfile.read1(min(left, 1 << 16))
                    if not chunk:
                        return None
                    chunks.append(chunk)
                    left -= len(chunk)
            except (TimeoutError, socket.timeout):
                return None
            finally:
                self.connection.settimeout(front.read_timeout_s)
            return b"".join(chunks)

        def _timeout(self, field):
            api.count("client_errors")
            return http_api.error_reply(
                408, f"the request {field} did not arrive within "
                f"read_timeout_s={front.read_timeout_s}.", field,
            )

        def send_error(self, code, message=None, explain=None):
            # Malformed HTTP (bad request line, headers too long, ...): a
            # JSON error like every other.
            api.count("client_errors")
            # A request line too bad to parse leaves the version at HTTP/0.9,
            # which has no status line: answer in HTTP/1.1.
            if self.request_version == "HTTP/0.9":
                self.request_version = "HTTP/1.1"
            self._write(http_api.error_reply(code, message or explain or "malformed HTTP", "request"))

        def _write(self, reply):
            if reply.close:
                self.close_connection = True
            try:
                self.send_response(reply.status)
                self.send_header("Content-Length", str(len(reply.body)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True  # the client left

        def log_message(self, format, *args):
            if front.verbose:
                super().log_message(format, *args)

    return Handler


