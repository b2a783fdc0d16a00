"""An HTTP/JSON front end for `ElasticServer`, on the standard library only.

`ThreadingHTTPServer` (one thread per connection) needs nothing beyond
Python itself, which is what an edge board has; the model work is done by
the single `ElasticServer` worker, so the HTTP threads only parse, wait and
answer. Endpoints:

- `POST /predict` with `{"inputs": [example, ...], "deadline_ms": 50}`
  (`"input": example` for one; `"rate": 0.5` pins a width instead of letting
  the server choose): answers `{"outputs", "predictions", "rates", "late",
  "latency_ms", "output_kind"}`, one entry per example. The batch may
  instead be sent as bytes (`http_body.py`): `Content-Type:
  application/x-npy` (a `.npy` file, never unpickled) or
  `application/octet-stream` (raw little-endian bytes in the bundle's input
  dtype), with `?deadline_ms=50&rate=0.5` in the query; JSON parsing of a
  large example costs more than the model. `Accept: application/x-npy`
  answers a batch with the outputs as `.npy`, the rest in `X-` headers.
- `GET /health`: `{"status": "ok"}` (200), or 503 once the worker failed or
  the server stopped.
- `GET /stats`: the server's counters and the HTTP ones.

A bad request gets a 4xx and a JSON `{"error": message}`: 400 for
malformed JSON or .npy, a wrong shape, dtype or byte count, a
non-finite number or an unknown rate; 411 without Content-Length; 413 for a body above `max_body_bytes`
(refused before it is read); 404/405 for other paths and methods. A full
queue gives 503 with `Retry-After`; a request not answered within
`request_timeout_s` gives 504. Nothing a request sends can disturb another.

The deadline is the client's, who has an answer only once it is sent, and
the front end's threads share the processor with the model: it measures
both what a reply takes after the model's output and its own processor
time per request, and tells the server's planner (`ElasticServer.front_end`).
"""

import concurrent.futures
import numbers
import threading
import time

import numpy as np

from keras_slicing_lite import http_body
from keras_slicing_lite import http_handler
from keras_slicing_lite import outputs

DEFAULT_MAX_BODY_BYTES = 4 << 20
DEFAULT_REQUEST_TIMEOUT_S = 30.0
# Weight of the newest request in the front end's estimates: about the last 20
# count, so that it rises within a few tens of milliseconds of a burst.
DELIVERY_SMOOTHING = 0.05
# Mean absolute deviations above the mean that the delivery reserve covers:
# replies wait for the interpreter lock behind other threads, so their
# times have a long tail, and the reserve must cover most of it.
DELIVERY_SPREAD = 3.0


class RunningEstimate:
    """A running estimate of a time: a weighted mean plus `spread` deviations.

    `estimate_s` is an exponentially weighted mean of the measured times
    plus `spread` weighted mean absolute deviations (for exponentially
    distributed times and `spread=3`, about their 95th percentile; with
    `spread=0`, the mean).

    Args:
        smoothing: Weight of the newest measurement, in (0, 1].
        spread: Deviations above the mean.
    """

    def __init__(self, smoothing=DELIVERY_SMOOTHING, spread=DELIVERY_SPREAD):
        self.smoothing = float(smoothing)
        self.spread = float(spread)
        self.mean_s = None
        self.deviation_s = 0.0

    def add(self, seconds):
        if self.mean_s is None:
            self.mean_s = float(seconds)
            return
        self.deviation_s += self.smoothing * (abs(seconds - self.mean_s) - self.deviation_s)
        self.mean_s += self.smoothing * (seconds - self.mean_s)

    @property
    def estimate_s(self):
        if self.mean_s is None:
            return 0.0
        return self.mean_s + self.spread * self.deviation_s


class HTTPFrontEnd:
    """Serves an `ElasticServer` over HTTP/JSON.

    Args:
        server: A started `ElasticServer` (real clock).
        host: Address to bind. Defaults to `"127.0.0.1"` (this machine only).
        port: Port to bind; `0` picks a free one (see `address`).
        default_deadline_ms: Deadline of a request that names none; `None`
            means no deadline.
        max_body_bytes: Largest request body accepted. Defaults to 4 MiB.
        request_timeout_s: Most seconds a request waits for its answer
            before a 504. Defaults to 30.
        verbose: Log every request to stderr. Defaults to `False`.
        measure_front_end: Measure what the front end adds to each request
            and tell the server's planner (`ElasticServer.front_end`): the
            time from the model's output to the reply written (waiting for
            a handler thread, serializing, sending; a running high
            estimate, `RunningEstimate`), which it plans to finish earlier by,
            and the handler threads' processor time per request (a running
            mean), which it counts against each width's throughput.
            Defaults to `True`: the deadline is the client's, who has the
            answer only once it is sent, and the front end's work competes
            with the model's for the processor.

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
        default_deadline_ms=None,
        max_body_bytes=DEFAULT_MAX_BODY_BYTES,
        request_timeout_s=DEFAULT_REQUEST_TIMEOUT_S,
        verbose=False,
        measure_front_end=True,
    ):
        for name, value in (
            ("max_body_bytes", max_body_bytes),
            ("request_timeout_s", request_timeout_s),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not value > 0
            ):
                raise ValueError(
                    f"HTTPFrontEnd: {name} must be a positive number. "
                    f"Received: {name}={value!r}"
                )
        self.server = server
        self.bundle = server.bundle
        self.default_deadline_ms = http_body.deadline(default_deadline_ms, "default_deadline_ms")
        self.max_body_bytes = int(max_body_bytes)
        self.request_timeout_s = float(request_timeout_s)
        self.verbose = verbose
        self.measure_front_end = bool(measure_front_end)
        self._delivery = RunningEstimate()
        # Handler processor seconds per request: their mean.
        self._cost = RunningEstimate(spread=0.0)
        # When the answer of the request a handler thread serves was ready.
        self._answered = threading.local()
        self._counts = {"requests": 0, "examples": 0, "client_errors": 0,
                        "rejected": 0, "timeouts": 0, "server_errors": 0}
        self._lock = threading.Lock()
        self._httpd = http_handler.Server((host, port), http_handler.handler(self))

    @property
    def address(self):
        """`(host, port)` actually bound."""
        return self._httpd.server_address[:2]

    @property
    def url(self):
        host, port = self.address
        return f"http://{host}:{port}"

    def serve_forever(self):
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self):
        """Serves on a background thread; returns `self`."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="HTTPFrontEnd", daemon=True
        )
        self._thread.start()
        return self

    def shutdown(self):
        """Stops accepting connections and closes the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def stats(self):
        with self._lock:
            counts = dict(self._counts)
            counts["delivery_ms"] = round(self._delivery.estimate_s * 1e3, 3)
            counts["cost_ms"] = round(self._cost.estimate_s * 1e3, 3)
        server = self.server.stats
        server["by_rate"] = {format(r, "g"): n for r, n in server["by_rate"].items()}
        return {"http": counts, "server": server}

    def health(self):
        if self.server.fault is not None:
            return 503, {"status": "failed", "error": repr(self.server.fault)}
        if not self.server.running:
            return 503, {"status": "stopped"}
        return 200, {
            "status": "ok",
            "rates": list(self.server.rates),
            "output_kind": self.bundle.output_kind,
            "input_shape": list(self.bundle.input_shape),
            "input_dtype": self.bundle.input_dtype,
            "queued": self.server.stats["queued"],
        }

    def predict(self, body, received_s, query=None):
        """Answers one parsed JSON `/predict` body; returns `(status, json)`.

        `query`: the fields of the query string (`http_body.query_fields`);
        a field may be given there or in the body, not in both.
        """
        if not isinstance(body, dict):
            raise http_body.ClientError("the body must be a JSON object with 'inputs'.")
        unknown = set(body) - {"inputs", "input", "deadline_ms", "rate"}
        if unknown:
            raise http_body.ClientError(
                f"unknown keys {sorted(unknown)}; allowed: inputs (or input), "
                "deadline_ms, rate."
            )
        if ("inputs" in body) == ("input" in body):
            raise http_body.ClientError("give exactly one of 'inputs' (a list of examples) or 'input'.")
        fields = dict(query or {})
        for key in http_body.QUERY_FIELDS:
            if key in body and key in fields:
                raise http_body.ClientError(f"{key} is given both in the query and in the body; give it once.")
            if key in body:
                fields[key] = body[key]
        single = "input" in body
        x = http_body.json_array([body["input"]] if single else body["inputs"])
        return self._predict(x, fields, received_s, single, "predict")

    def predict_array(self, x, received_s, query=None, owner="predict"):
        """Answers a batch sent as bytes; returns `(status, json)`.

        Args:
            x: The batch, `(batch, *input_shape[1:])`, any dtype the bundle
                accepts (see `Bundle.prepare`).
            received_s: `time.perf_counter()` when the request arrived.
            query: `deadline_ms` and `rate`, as `http_body.query_fields`.
            owner: The name errors start with.
        """
        if x.dtype.kind in "fc" and not np.all(np.isfinite(x)):
            raise http_body.ClientError("inputs must be finite numbers.")
        return self._predict(x, dict(query or {}), received_s, False, owner)

    def _predict(self, x, fields, received_s, single, owner):
        # Nothing measured for this request until its answer is ready.
        self._answered.at = None
        if x.ndim and x.shape[0] == 0:
            raise http_body.ClientError("'inputs' is empty.")
        try:
            x = self.bundle.prepare(x, owner)
        except ValueError as error:
            raise http_body.ClientError(str(error)) from None
        deadline_ms = self.default_deadline_ms
        if "deadline_ms" in fields:
            try:
                deadline_ms = http_body.deadline(fields["deadline_ms"], "deadline_ms")
            except ValueError as error:
                raise http_body.ClientError(str(error)) from None
        with self._lock:
            self._counts["examples"] += len(x)
        if "rate" in fields:
            return 200, self._at_rate(x, fields["rate"], received_s, single)
        return 200, self._elastic(x, deadline_ms, received_s, single)

    def _at_rate(self, x, rate, received_s, single):
        try:
            rate = self.bundle.resolve_rates([rate], "predict").pop()
        except ValueError as error:
            raise http_body.ClientError(str(error)) from None
        out = self.bundle.predict(x, rate)
        elapsed = (time.perf_counter() - received_s) * 1e3
        return self._answer(out, [rate] * len(x), [False] * len(x), [elapsed] * len(x), single)

    def _elastic(self, x, deadline_ms, received_s, single):
        futures, submitted = [], []
        try:
            for example in x:
                # The deadline counts from when the request arrived, so time
                # spent parsing is not given away.
                left = None
                if deadline_ms is not None:
                    left = deadline_ms - (time.perf_counter() - received_s) * 1e3
                submitted.append(time.perf_counter())
                futures.append(self.server.submit(example, deadline_ms=left))
            waited = concurrent.futures.wait(futures, timeout=self.request_timeout_s)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        if waited.not_done:
            for future in futures:
                future.cancel()
            raise http_body.RequestTimeout(
                f"not answered within request_timeout_s={self.request_timeout_s}."
            )
        responses = [future.result() for future in futures]
        # When the output was ready, on this clock: the server's latency
        # runs from its arrival stamp, taken just after `submitted`, so
        # this is a little early and the reply time errs long (safe).
        self._answered.at = max(
            t + r.latency_ms / 1e3 for t, r in zip(submitted, responses))
        self._answered.count = len(responses)
        return self._answer(
            np.stack([r.output for r in responses]),
            [r.rate for r in responses],
            [r.late for r in responses],
            [r.latency_ms for r in responses],
            single,
        )

    def _answer(self, out, rates, late, latency_ms, single):
        kind = self.bundle.output_kind
        predictions = outputs.predictions(kind, out)
        answer = {
            "outputs": out.tolist(),
            "predictions": np.asarray(predictions).tolist(),
            "rates": [float(r) for r in rates],
            "late": [bool(v) for v in late],
            "latency_ms": [round(float(v), 3) for v in latency_ms],
            "output_kind": kind,
        }
        if single:
            answer = {
                "output": answer["outputs"][0],
                "prediction": answer["predictions"][0],
                "rate": answer["rates"][0],
                "late": answer["late"][0],
                "latency_ms": answer["latency_ms"][0],
                "output_kind": kind,
            }
        return answer

    def delivered(self, cpu_s):
        """Measures the request this handler thread just answered.

        Only requests the server chose the width of are measured: a request
        that pins a rate runs the model on the handler thread itself.

        Args:
            cpu_s: The thread's processor seconds on the request
                (`time.thread_time()`), from its request line to its reply.
        """
        answered = getattr(self._answered, "at", None)
        if answered is None:
            return
        self._answered.at = None
        with self._lock:
            self._delivery.add(time.perf_counter() - answered)
            self._cost.add(cpu_s / self._answered.count)
            delivery, cost = self._delivery.estimate_s, self._cost.estimate_s
        if self.measure_front_end:
            self.server.front_end(delivery_ms=delivery * 1e3, cost_ms=cost * 1e3)

    def _count(self, key):
        with self._lock:
            self._counts[key] += 1
