"""The HTTP front end on uvicorn and Starlette (the `serve` extra).

HTTP parsing, keep-alive and flow control are uvicorn's (with h11); reading
bodies and writing responses are Starlette's. What the endpoints answer is
`ServingAPI`'s, the same as on the standard-library front end
(`http_server.HTTPFrontEnd`). This module adds what a server facing
untrusted clients needs on top:

- a read timeout for the request head and for the body (408, then the
  connection is closed): a client that stalls holds no slot for long;
- a cap on open connections: beyond `max_connections` a new connection is
  answered 503 with a JSON error and closed at once;
- JSON errors for requests uvicorn itself refuses (malformed HTTP).
"""

import asyncio
import socket
import threading
import time

import uvicorn
from starlette.requests import ClientDisconnect
from starlette.requests import Request
from starlette.responses import Response

from keras_slicing_lite import http_api
from keras_slicing_lite.http_reply import error_reply
from keras_slicing_lite.transport import DEFAULT_MAX_CONNECTIONS
from keras_slicing_lite.transport import DEFAULT_READ_TIMEOUT_S
from keras_slicing_lite.transport import front_end_limits
from keras_slicing_lite.transport import raw_reply

class ASGIFrontEnd:
    """Serves an `ElasticServer` over HTTP on uvicorn.

    Args:
        server: A started `ElasticServer` (real clock).
        host: Address to bind. Defaults to `"127.0.0.1"` (this machine only).
        port: Port to bind; `0` picks a free one (see `address`).
        read_timeout_s: Most seconds to receive a request's head, and then
            its body; beyond either, 408 and the connection is closed.
            Defaults to 10.
        max_connections: Most connections open at once; one more is
            answered 503 and closed. Defaults to 256.
        verbose: Log every request (uvicorn's access log). Defaults to `False`.
        **kwargs: `default_deadline_ms`, `max_body_bytes`,
            `request_timeout_s`, `measure_front_end` and `model_name`, as
            for `ServingAPI`.

    Example:

    >>> server = ElasticServer(bundle, profile, clock="real").start()
    >>> front = ASGIFrontEnd(server, port=8000).start()
    >>> front.shutdown(); server.stop()
    """

    def __init__(
        self,
        server,
        host="127.0.0.1",
        port=8000,
        read_timeout_s=DEFAULT_READ_TIMEOUT_S,
        max_connections=DEFAULT_MAX_CONNECTIONS,
        verbose=False,
        **kwargs,
    ):
        self.api = http_api.ServingAPI(server, **kwargs)
        self.server = server
        self.read_timeout_s, self.max_connections = front_end_limits(
            read_timeout_s, max_connections, "ASGIFrontEnd"
        )
        self._socket = socket.create_server((host, port), backlog=128)
        config = uvicorn.Config(
            self.app,
            http=_protocol(self),
            lifespan="off",
            interface="asgi3",
            proxy_headers=False,
            ws="none",
            access_log=bool(verbose),
            log_level="info" if verbose else "warning",
            timeout_keep_alive=5,
            timeout_graceful_shutdown=2,
        )
        self._uvicorn = uvicorn.Server(config)
        self._thread = None

    @property
    def address(self):
        """`(host, port)` actually bound."""
        return self._socket.getsockname()[:2]

    @property
    def url(self):
        host, port = self.address
        return f"http://{host}:{port}"

    def stats(self):
        return self.api.stats()

    def serve_forever(self):
        """Serves until `shutdown()`, or SIGINT/SIGTERM on the main thread."""
        self._uvicorn.run(sockets=[self._socket])
        self._socket.close()

    def start(self):
        """Serves on a background thread; returns `self` once it accepts."""
        self._thread = threading.Thread(target=self.serve_forever, name="ASGIFrontEnd", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        return self

    def shutdown(self, timeout=5.0):
        """Stops accepting, closes idle connections, gives requests in
        flight up to two seconds; never blocks longer than `timeout`."""
        self._uvicorn.should_exit = True
        if self._thread is None:
            self._socket.close()
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._uvicorn.force_exit = True
            self._thread.join(timeout)

    async def app(self, scope, receive, send):
        """The ASGI application."""
        if scope["type"] != "http":
            return
        received = time.perf_counter()
        cpu = time.thread_time()
        request = Request(scope, receive)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        target = scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        method = scope["method"]
        reply = self.api.check_body(method, headers.get("content-length"))
        result = None
        if reply is None:
            try:
                body = await asyncio.wait_for(self._body(request), self.read_timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                self.api.count("client_errors")
                body, reply = None, error_reply(
                    408, f"the body did not arrive within read_timeout_s={self.read_timeout_s}.",
                    "body",
                )
            except ClientDisconnect:
                return
            if body is not None:
                result = self.api.handle(method, target, headers, body, received)
                reply = result
        spent = time.thread_time() - cpu
        if isinstance(result, http_api.Pending):
            answered = await self._wait(result)
            cpu = time.thread_time()
            reply = result.reply() if answered else self.api.timed_out(result)
            spent += time.thread_time() - cpu
        await Response(reply.body, reply.status, reply.headers)(scope, receive, send)
        if isinstance(result, http_api.Pending) and reply.status == 200:
            self.api.delivered(result, spent)

    async def _body(self, request):
        chunks = []
        async for chunk in request.stream():
            chunks.append(chunk)
        return b"".join(chunks)

    async def _wait(self, pending):
        # One asyncio future for the whole batch: wrapping each example's
        # future would cost a callback and a task per example.
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        left = [len(pending.futures)]
        lock = threading.Lock()

        def settle(_):
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(True))

        for future in pending.futures:
            future.add_done_callback(settle)
        try:
            return await asyncio.wait_for(done, self.api.request_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            return False
        except asyncio.CancelledError:  # the client went away
            pending.cancel()
            raise


def _protocol(front):
    """uvicorn's HTTP protocol (httptools' C parser when installed, else
    h11) with a head timeout, a connection cap and JSON errors."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class Protocol(Base):
        _head_timer = None
        _refused = False
        # Bytes of a request head received while no request is in progress.
        _partial = False

        def connection_made(self, transport):
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # The head and the body of a reply are two writes: with
                # Nagle's algorithm the body would wait for the client's
                # delayed ACK (40 ms on Linux).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self.connections) > front.max_connections:
                front.api.count("refused_connections")
                self._refused = True
                transport.write(raw_reply(
                    503, "Service Unavailable",
                    f"too many connections (max_connections={front.max_connections}); "
                    "retry later.", "connection",
                ))
                # Closing with the client's request unread would reset the
                # connection and could lose the reply: end our side, discard
                # what arrives, and close shortly.
                if transport.can_write_eof():
                    transport.write_eof()
                self.loop.call_later(1.0, transport.close)
                return
            self._arm()

        def data_received(self, data):
            if self._refused:
                return
            if self._idle():
                self._partial = True
            super().data_received(data)
            if not self._idle():
                self._partial = False

        def on_response_complete(self):
            super().on_response_complete()
            self._partial = False
            self._arm()

        def connection_lost(self, exc):
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def send_400_response(self, msg):
            front.api.count("client_errors")
            self.transport.write(raw_reply(400, "Bad Request", f"malformed HTTP: {msg}", "request"))
            self.transport.close()

        def _idle(self):
            """No request head complete since the last response."""
            return self.cycle is None or self.cycle.response_complete

        def _arm(self):
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(front.read_timeout_s, self._head_timeout)

        def _head_timeout(self):
            self._head_timer = None
            if self.transport.is_closing() or not self._idle():
                return  # a request is in: its body has its own timeout
            if self._partial:
                front.api.count("client_errors")
                self.transport.write(raw_reply(
                    408, "Request Timeout",
                    f"the request head did not arrive within read_timeout_s={front.read_timeout_s}.",
                    "headers",
                ))
            self.transport.close()

    return Protocol
