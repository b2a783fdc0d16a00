"""The HTTP front end on the standard library only.

`ThreadingHTTPServer` (one thread per connection) needs nothing beyond
Python itself, for a board where the `serve` extra (uvicorn) cannot be
installed; `asgi_server.ASGIFrontEnd` is the front end to prefer (see
docs/http-api.md and benchmarks/http_front_ends.py). Both answer through
`ServingAPI`, so their endpoints, status codes and errors are the same;
this module adds the standard-library transport: socket read timeouts (408),
a cap on connections (503), JSON errors for malformed HTTP.
"""

import threading

from keras_slicing_lite import http_api
from keras_slicing_lite import http_handler
from keras_slicing_lite.transport import DEFAULT_MAX_CONNECTIONS
from keras_slicing_lite.transport import DEFAULT_READ_TIMEOUT_S
from keras_slicing_lite.transport import front_end_limits
from keras_slicing_lite.http_api import DEFAULT_MAX_BODY_BYTES  # noqa: F401
from keras_slicing_lite.http_api import RunningEstimate  # noqa: F401


class HTTPFrontEnd:
    """Serves an `ElasticServer` over HTTP on the standard library.

    Args:
        server: A started `ElasticServer` (real clock).
        host: Address to bind. Defaults to `"127.0.0.1"` (this machine only).
        port: Port to bind; `0` picks a free one (see `address`).
        read_timeout_s: Most seconds a read of the request may wait for the
            client (the head: per read; the body: in all); beyond it, 408
            and the connection is closed. Defaults to 10.
        max_connections: Most connections served at once; one more is
            answered 503 and closed. Defaults to 256.
        verbose: Log every request to stderr. Defaults to `False`.
        **kwargs: `default_deadline_ms`, `max_body_bytes`,
            `request_timeout_s`, `measure_front_end` and `model_name`, as
            for `ServingAPI`.

    Example:

    >>> server = ElasticServer(bundle, profile, clock="real").start()
    >>> front = HTTPFrontEnd(server, port=8000)
    >>> front.serve_forever()  # until front.shutdown() from another thread
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
            read_timeout_s, max_connections, "HTTPFrontEnd"
        )
        self.verbose = verbose
        self._serving = threading.Event()
        self._httpd = http_handler.Server((host, port), http_handler.handler(self), self)
        self._thread = None

    @property
    def address(self):
        """`(host, port)` actually bound."""
        return self._httpd.server_address[:2]

    @property
    def url(self):
        host, port = self.address
        return f"http://{host}:{port}"

    def serve_forever(self):
        self._serving.set()
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self):
        """Serves on a background thread; returns `self`."""
        self._serving.set()
        self._thread = threading.Thread(
            target=self.serve_forever, name="HTTPFrontEnd", daemon=True
        )
        self._thread.start()
        return self

    def shutdown(self):
        """Stops accepting connections and closes the socket; returns at
        once on a front end that never served."""
        if self._serving.is_set():
            self._httpd.shutdown()
        self._httpd.server_close()

    def stats(self):
        return self.api.stats()

    def health(self):
        return self.api.health()
