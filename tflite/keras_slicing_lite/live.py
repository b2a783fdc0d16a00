"""Live serving for `ElasticServer`: a worker thread that cannot hang a caller.

`LiveServing` holds the real-clock `start`/`submit`/`stop` of the server;
the planning it calls (`_plan`, `_run`, `_observe`, `_count`) lives in
`elastic_server.py`.
"""

import bisect
import concurrent.futures
import math
import numbers
import threading
import time

import numpy as np

from keras_slicing_lite.planner import ArrivalRate
from keras_slicing_lite.request import Response


class QueueFullError(RuntimeError):
    """`ElasticServer.submit` refused a request: `max_queue` are waiting."""


class ServerStoppedError(RuntimeError):
    """The server is not running, or stopped before answering a request."""


class ServerFailedError(RuntimeError):
    """The server's worker failed; `__cause__` holds its exception."""


class LiveServing:
    """The live half of `ElasticServer` (see its documentation)."""

    def start(self):
        """Starts serving live requests (real clock only) on a worker thread.

        Every width is first called once at every padded batch size, so that
        no request waits for an interpreter to be built.
        """
        if self.clock != "real":
            raise ValueError(
                "ElasticServer.start: live serving runs on the wall clock; "
                "create the server with clock='real'. Received: "
                f"clock={self.clock!r}"
            )
        if self._thread is not None:
            raise RuntimeError("ElasticServer.start: the server is already running.")
        finishing = getattr(self, "_finishing", None)
        if finishing is not None and finishing.is_alive():
            raise RuntimeError(
                "ElasticServer.start: the previous worker is still finishing "
                "the batch it held when stop() timed out; try again shortly."
            )
        self._warm_up()
        self._origin = time.perf_counter()
        self._arrivals = ArrivalRate()
        self._live = []
        self._sequence = 0
        self._stopping = False
        self._fault = None
        self._wakeup = threading.Condition()
        self._thread = threading.Thread(
            target=self._serve_live, name="ElasticServer", daemon=True
        )
        self._thread.start()
        return self

    def submit(self, x, deadline_ms=None):
        """Queues one example; returns a `concurrent.futures.Future` of its `Response`.

        The future may be cancelled by the caller at any time before the
        worker takes it; it is then skipped.

        Args:
            x: A single example (no batch axis).
            deadline_ms: Milliseconds from now until the answer is due;
                `None` means no deadline. A deadline already past (zero or
                negative) is still answered, and counted late.

        Raises:
            ValueError: for an example of the wrong shape or dtype.
            QueueFullError: when `max_queue` requests are already waiting.
            ServerFailedError: after a fault in the worker (its cause).
            ServerStoppedError: when the server is stopped or stopping.
        """
        if self._thread is None:
            raise ServerStoppedError(
                "ElasticServer.submit: the server is not running; call start() "
                "first (or use the server as a context manager)."
            )
        example = self._example(x, "submit")
        if deadline_ms is not None and (
            isinstance(deadline_ms, bool)
            or not isinstance(deadline_ms, numbers.Real)
            or math.isnan(deadline_ms)
        ):
            raise ValueError(
                "ElasticServer.submit: deadline_ms must be a number or None. "
                f"Received: deadline_ms={deadline_ms!r}"
            )
        future = concurrent.futures.Future()
        with self._wakeup:
            if self._fault is not None:
                raise ServerFailedError(
                    "ElasticServer.submit: the server stopped after a fault in "
                    f"its worker: {self._fault!r}"
                ) from self._fault
            if self._stopping:
                raise ServerStoppedError("ElasticServer.submit: the server is stopping.")
            if self.max_queue is not None and len(self._live) >= self.max_queue:
                with self._lock:
                    self._stats["rejected"] += 1
                raise QueueFullError(
                    f"ElasticServer.submit: the queue is full ({self.max_queue} "
                    "requests waiting, max_queue); retry later."
                )
            arrival = time.perf_counter() - self._origin
            deadline = math.inf if deadline_ms is None else arrival + deadline_ms / 1e3
            self._arrivals.add(arrival)
            self._sequence += 1
            bisect.insort(
                self._live,
                (deadline, self._sequence, self._sequence, arrival, example, future),
            )
            self._wakeup.notify()
        return future

    def front_end(self, delivery_ms=0.0, cost_ms=0.0):
        """Tells the planner what a front end adds to every request.

        A front end that parses requests and sends answers (`HTTPFrontEnd`)
        measures both and keeps them up to date here:

        - `delivery_ms`: time from an answer to its reply sent. Every batch
          is planned to finish that much more before its deadlines (on top
          of `reserve_ms`), so that the reply, not only the output, is in
          time. Deadlines, and what counts as late, do not change.
        - `cost_ms`: processor time the front end spends per request. The
          arrival-rate check counts it with the model's cost per request:
          its threads share the processor (and the interpreter lock) with
          the model, so a width the model alone could keep up with may not
          leave them enough.

        Args:
            delivery_ms: Milliseconds, a number >= 0. Defaults to 0.
            cost_ms: Milliseconds per request, a number >= 0. Defaults to 0.
        """
        for name, value in (("delivery_ms", delivery_ms), ("cost_ms", cost_ms)):
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not value >= 0
                or not math.isfinite(value)
            ):
                raise ValueError(
                    f"ElasticServer.front_end: {name} must be a number >= 0. "
                    f"Received: {name}={value!r}"
                )
        # Float assignments: the worker reads each whole, no lock needed.
        self._planner.delivery_s = float(delivery_ms) / 1e3
        self._planner.front_end_s = float(cost_ms) / 1e3

    @property
    def delivery_ms(self):
        """Milliseconds of delivery reserved by `front_end` (0 until set)."""
        return self._planner.delivery_s * 1e3

    @property
    def front_end_cost_ms(self):
        """Front-end milliseconds per request set by `front_end` (0 until set)."""
        return self._planner.front_end_s * 1e3

    def stop(self, timeout=None):
        """Stops live serving; returns whether every queued request was answered.

        New submissions are refused at once (`ServerStoppedError`). The
        worker keeps answering what is queued, in deadline order, for up to
        `timeout` seconds (`None`: until the queue is empty). When the time
        is up, every request still queued fails with `ServerStoppedError`;
        a batch already running finishes and is answered (an interpreter
        call cannot be interrupted), and `stop` returns without waiting for
        it. Calling `stop` on a stopped server does nothing.

        Args:
            timeout: Seconds to drain the queue, or `None`. Defaults to `None`.

        Returns:
            `True` when the queue was drained (or the server was not
            running), `False` when requests were failed by the timeout or by
            an earlier fault.
        """
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, numbers.Real)
            or not timeout >= 0
        ):
            raise ValueError(
                "ElasticServer.stop: timeout must be a number of seconds >= 0 "
                f"or None. Received: timeout={timeout!r}"
            )
        thread = self._thread
        if thread is None:
            return True
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        thread.join(timeout)
        drained = not thread.is_alive() and self._fault is None
        if thread.is_alive():
            self._finishing = thread
            with self._wakeup:
                left, self._live = self._live, []
            self._fail(left, ServerStoppedError(
                f"ElasticServer.stop: the server stopped after timeout={timeout} s "
                "before answering this request."
            ))
        self._thread = None
        return drained

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def _warm_up(self):
        # The first call of a width at a batch size builds its interpreter
        # (tens of ms, XNNPACK packs the weights): pay it before the first
        # request does, for every width and padded batch size.
        shape = self.bundle.input_shape[1:]
        if any(d is None for d in shape):
            return  # sizes not known before requests arrive
        for rate in self.rates:
            for bucket in self._buckets:
                self.bundle.predict(np.zeros((bucket, *shape), self.bundle.input_dtype), rate)

    def _serve_live(self):
        batch = []
        try:
            while True:
                with self._wakeup:
                    while not self._live and not self._stopping:
                        self._wakeup.wait()
                    if not self._live:
                        return
                    now = time.perf_counter() - self._origin
                    rate, count = self._plan(now, self._live)
                    batch = self._live[:count]
                    del self._live[:count]
                # A caller may have cancelled: skip it; once running, a
                # future can no longer be cancelled, so answering is safe.
                taken = [e for e in batch if e[5].set_running_or_notify_cancel()]
                if len(taken) < len(batch):
                    with self._lock:
                        self._stats["cancelled"] += len(batch) - len(taken)
                batch = taken
                if not batch:
                    continue
                outputs, bucket = self._run(rate, [entry[4] for entry in batch])
                finish = time.perf_counter() - self._origin
                answered = []
                for (deadline, _, rid, arrival, _, future), out in zip(batch, outputs):
                    answered.append(Response(
                        rid, out, rate, len(batch), arrival, now, finish, deadline,
                        self._kind,
                    ))
                self._count(rate, answered)
                for (*_, future), response in zip(batch, answered):
                    future.set_result(response)
                # The whole cycle, answering included, is what the next
                # batch waits for.
                self._observe(rate, bucket, time.perf_counter() - self._origin - now)
                batch = []
        except BaseException as error:  # every waiting caller must hear of it
            with self._wakeup:
                self._fault = error
                left, self._live = self._live, []
            self._fail(batch, error)
            self._fail(left, error)

    def _fail(self, entries, error):
        failed = 0
        for entry in entries:
            try:
                entry[5].set_exception(error)
                failed += 1
            except concurrent.futures.InvalidStateError:
                pass  # cancelled by its caller meanwhile
        with self._lock:
            self._stats["failed"] += failed

