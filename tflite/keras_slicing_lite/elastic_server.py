"""Serving requests with deadlines by choosing the width per batch.

One serving loop for both clocks: `ElasticServer` keeps the queue ordered
by deadline, takes each batch (`_take`) and answers it (`_answer`); replay
waits on a virtual or real clock, live serving (`live_serving.py`) on a
worker thread.
"""

import bisect
import numbers
import threading
import time

import numpy as np

from keras_slicing_lite.latency_profile import STATISTICS
from keras_slicing_lite.live_serving import BatchTooLargeError  # noqa: F401
from keras_slicing_lite.live_serving import LiveServing
from keras_slicing_lite.live_serving import QueueFullError  # noqa: F401
from keras_slicing_lite.live_serving import ServerFailedError  # noqa: F401
from keras_slicing_lite.live_serving import ServerStoppedError  # noqa: F401
from keras_slicing_lite.planner import ArrivalRate
from keras_slicing_lite.planner import WidthPlanner
from keras_slicing_lite.request import ARRIVAL
from keras_slicing_lite.request import DEADLINE
from keras_slicing_lite.request import EXAMPLE
from keras_slicing_lite.request import FUTURE
from keras_slicing_lite.request import ID
from keras_slicing_lite.request import RATE
from keras_slicing_lite.request import SEQUENCE
from keras_slicing_lite.request import Request
from keras_slicing_lite.request import Response
from keras_slicing_lite.request import is_number

CLOCKS = ("simulated", "real")
SIMULATED_LATENCIES = ("p50", "sampled")


class ElasticServer(LiveServing):
    """Answers queued requests, choosing the width of each batch to meet deadlines.

    Requests wait in a queue ordered by deadline. Whenever the model is
    free, the server takes up to `max_batch_size` of them and picks the
    widest rate it could keep: (a) the whole queue, served at that rate in
    batches of `max_batch_size`, meets every deadline, and (b) at the
    arrival rate measured over the last few tens of milliseconds, that
    rate's throughput keeps up with margin (utilization at most 0.8), so the
    queue does not grow while it serves. When no rate passes, the system is
    overloaded and the narrowest rate answers, draining the queue fastest.
    Nothing is dropped: a request that cannot be answered in time is
    answered late and counted in `stats["late"]`. Planning uses the latency
    profile (`plan_statistic`, times `headroom`); batches are padded to the
    profiled batch sizes so that every call has a measured cost and a cached
    interpreter.

    Two clocks:
    - `"simulated"`: `replay()` advances a virtual clock by the cost of
      each batch instead of waiting: its profiled median, or with
      `simulated_latency="sampled"` a draw from the measured calls of the
      profile (seeded), so that a batch can overrun its plan as on a real
      device. Outputs are computed for real, but timing is reproducible:
      for tests, and for replaying a trace of an hour in seconds.
    - `"real"`: `replay()` sleeps until each arrival and times each batch on
      the wall clock; `start()`/`submit()`/`stop()` serve live requests from
      other threads. Planning then corrects the profile by the costs
      measured on the wall clock: after every batch, a weighted fit over
      recent batches of `cost = fixed + slowdown * profiled median` (Python
      work around a call adds about the same to each; a busy machine slows
      every call in proportion).

    Both clocks run one mechanism: requests wait in one queue ordered by
    deadline, and each batch is planned, run, answered and counted the same
    way; only waiting differs (a virtual clock, or a worker thread woken by
    `submit`). A request may pin its rate (`Request(rate=...)`,
    `submit(..., rate=...)`): it waits in the same queue, keeps its deadline
    and is counted like any other, and is answered in a batch of its rate.

    Live serving cannot hang a caller: a future cancelled by its caller is
    skipped; a request whose deadline has already passed is answered (late)
    and counted; `max_queue` bounds the queue and `submit` beyond it raises
    `QueueFullError` at once (`submit_batch` queues a batch whole or
    not at all, and refuses one larger than `max_queue` with
    `BatchTooLargeError`); an exception in the worker fails the requests
    it holds and everything queued with that error, and every later
    `submit` raises `ServerFailedError` (the thread never dies silently);
    `stop(timeout)` drains the queue, failing with `ServerStoppedError`
    whatever is left when the timeout expires.

    Args:
        bundle: A `Bundle` from `load_bundle`.
        profile: A `LatencyProfile` of the bundle on this device. `None`
            uses `bundle.profile()` (cached measurement or a new one).
        rates: The rates the server may use. Defaults to every rate of the
            bundle; a single rate gives a fixed-width server (a baseline).
        max_batch_size: Most requests per call. Defaults to the largest
            profiled batch size.
        clock: `"simulated"` or `"real"`. Defaults to `"simulated"`.
        plan_statistic: Profile statistic used for planning, `"p50"`,
            `"p90"` or `"mean"`. Defaults to `"p90"`.
        headroom: Factor (>= 1 is safer) on planned latencies. Defaults to 1.
        reserve_ms: Milliseconds to plan to finish before each deadline,
            absorbing stalls the profile cannot foresee (preemption by other
            processes on the real clock). Defaults to 0.
        max_queue: Most live requests waiting at once; `None` (the default)
            means no bound. Beyond it `submit` raises `QueueFullError`.
        simulated_latency: Cost of a batch on the simulated clock: `"p50"`
            (the profiled median, the default) or `"sampled"` (a draw from
            the profile's measured calls).
        seed: Seed of the `"sampled"` draws. Defaults to 0.

    Example:

    >>> server = ElasticServer(bundle, clock="simulated")
    >>> responses = server.replay(
    ...     Request(x, arrival_s=t, deadline_s=t + 0.02) for x, t in trace)
    >>> server.stats["late"], server.stats["by_rate"]

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    """

    def __init__(
        self,
        bundle,
        profile=None,
        rates=None,
        max_batch_size=None,
        clock="simulated",
        plan_statistic="p90",
        headroom=1.0,
        reserve_ms=0.0,
        max_queue=None,
        simulated_latency="p50",
        seed=0,
    ):
        if clock not in CLOCKS:
            raise ValueError(
                f"ElasticServer: clock must be one of {', '.join(CLOCKS)}. "
                f"Received: clock={clock!r}"
            )
        if plan_statistic not in STATISTICS:
            raise ValueError(
                "ElasticServer: plan_statistic must be one of "
                f"{', '.join(STATISTICS)}. Received: plan_statistic={plan_statistic!r}"
            )
        if not is_number(headroom) or not headroom > 0:
            raise ValueError(
                "ElasticServer: headroom must be a positive number. "
                f"Received: headroom={headroom!r}"
            )
        if not is_number(reserve_ms) or not reserve_ms >= 0:
            raise ValueError(
                "ElasticServer: reserve_ms must be a number >= 0. "
                f"Received: reserve_ms={reserve_ms!r}"
            )
        if max_queue is not None and (
            isinstance(max_queue, bool)
            or not isinstance(max_queue, numbers.Integral)
            or max_queue < 1
        ):
            raise ValueError(
                "ElasticServer: max_queue must be a positive integer or None. "
                f"Received: max_queue={max_queue!r}"
            )
        if simulated_latency not in SIMULATED_LATENCIES:
            raise ValueError(
                "ElasticServer: simulated_latency must be one of "
                f"{', '.join(SIMULATED_LATENCIES)}. Received: "
                f"simulated_latency={simulated_latency!r}"
            )
        self.bundle = bundle
        self.max_queue = None if max_queue is None else int(max_queue)
        self.simulated_latency = simulated_latency
        self._seed = seed
        chosen = bundle.resolve_rates(rates, "ElasticServer")
        self.rates = tuple(sorted(chosen, reverse=True))
        self.profile = profile if profile is not None else bundle.profile()
        measured = None
        for rate in self.rates:
            sizes = set(self.profile.batch_sizes(rate))  # raises for unprofiled
            measured = sizes if measured is None else measured & sizes
        if not measured:
            raise ValueError(
                "ElasticServer: the profile has no batch size measured for "
                "every rate; profile all rates at the same batch sizes."
            )
        measured = sorted(measured)
        if max_batch_size is None:
            max_batch_size = measured[-1]
        if (
            isinstance(max_batch_size, bool)
            or not isinstance(max_batch_size, numbers.Integral)
            or max_batch_size < 1
        ):
            raise ValueError(
                "ElasticServer: max_batch_size must be a positive integer. "
                f"Received: max_batch_size={max_batch_size!r}"
            )
        self.max_batch_size = int(max_batch_size)
        # An unmeasured maximum is interpolated by the profile.
        self._buckets = [s for s in measured if s < self.max_batch_size]
        self._buckets.append(self.max_batch_size)
        self.clock = clock
        self.plan_statistic = plan_statistic
        self.headroom = float(headroom)
        self.reserve_ms = float(reserve_ms)
        self._service_s = {
            (r, b): self.profile.latency_ms(r, b, "p50") / 1e3
            for r in self.rates
            for b in self._buckets
        }
        self._planner = WidthPlanner(
            self.rates,
            {
                (r, b): self.profile.latency_ms(r, b, plan_statistic) * self.headroom / 1e3
                for r in self.rates
                for b in self._buckets
            },
            self._service_s,
            self.max_batch_size,
            self.reserve_ms / 1e3,
        )
        self._arrivals = ArrivalRate()
        self._kind = bundle.output_kind
        self._lock = threading.Lock()
        self._reset_stats()
        self._queue = []
        self._thread = None
        self._fault = None
        self._finishing = None
        self._wakeup = threading.Condition()

    @property
    def stats(self):
        """Counters since construction.

        `served` (answered, late ones included), `late`, `batches`,
        `by_rate` (answers per rate), and for live serving `cancelled`
        (skipped because the caller cancelled), `rejected` (refused by a full
        queue), `failed` (failed by a worker fault or a stop timeout) and
        `queued` (waiting now).
        """
        with self._lock:
            stats = dict(self._stats)
            stats["by_rate"] = dict(self._stats["by_rate"])
        stats["queued"] = len(self._queue) if self._thread else 0
        return stats

    def plan(self, deadlines_s, now_s=0.0, arrival_rate=None):
        """The rate and batch size the server would choose now.

        Args:
            deadlines_s: Deadlines of the queued requests (any order).
            now_s: The current time on the same clock.
            arrival_rate: Requests per second arriving now. `None` uses the
                server's own estimate from the arrivals it has seen.

        Returns:
            `(rate, batch_size)`.
        """
        queue = sorted((float(d), i) for i, d in enumerate(deadlines_s))
        if not queue:
            raise ValueError("ElasticServer.plan: the queue is empty.")
        if arrival_rate is None:
            arrival_rate = self._arrivals.at(float(now_s))
        elif not is_number(arrival_rate, inf_ok=True) or not arrival_rate >= 0:
            raise ValueError(
                "ElasticServer.plan: arrival_rate must be a number >= 0 (requests "
                f"per second) or None. Received: arrival_rate={arrival_rate!r}"
            )
        return self._planner.plan(float(now_s), queue, float(arrival_rate))

    def replay(self, requests):
        """Serves a recorded stream of requests; returns the responses.

        Args:
            requests: Iterable of `Request`, arrival times in seconds from
                the start of the replay.

        Returns:
            A list of `Response`, one per request, in the order given.
        """
        if self._thread is not None:
            raise RuntimeError(
                "ElasticServer.replay: the server is serving live requests; "
                "call stop() first."
            )
        items = []
        for position, request in enumerate(requests):
            if not isinstance(request, Request):
                raise ValueError(
                    "ElasticServer.replay: expected Request objects. "
                    f"Received: {type(request).__name__} at position {position}"
                )
            arrival = _time(request.arrival_s, "arrival_s", position)
            deadline = _time(request.deadline_s, "deadline_s", position, inf_ok=True)
            if deadline < arrival:
                raise ValueError(
                    f"ElasticServer.replay: request {position} is due before "
                    f"it arrives. Received: arrival_s={arrival}, "
                    f"deadline_s={deadline}"
                )
            owner = f"ElasticServer.replay (request {position})"
            x = self._example(request.x, owner)
            rate = None if request.rate is None else self.pin_rate(request.rate, owner)
            rid = position if request.id is None else request.id
            items.append((deadline, position, rid, arrival, x, None, rate))
        items.sort(key=lambda item: (item[ARRIVAL], item[SEQUENCE]))
        responses = [None] * len(items)
        self._queue = []
        self._arrivals = ArrivalRate()
        rng = np.random.default_rng(self._seed)
        origin = time.perf_counter()
        now, nxt = 0.0, 0
        while nxt < len(items) or self._queue:
            if self.clock == "real":
                now = time.perf_counter() - origin
            while nxt < len(items) and items[nxt][ARRIVAL] <= now:
                bisect.insort(self._queue, items[nxt])
                self._arrivals.add(items[nxt][ARRIVAL])
                nxt += 1
            if not self._queue:
                wake = items[nxt][ARRIVAL]
                if self.clock == "simulated":
                    now = wake
                else:
                    time.sleep(max(0.0, wake - (time.perf_counter() - origin)))
                continue
            rate, batch = self._take(now)
            if self.clock == "real":
                finish = lambda bucket: time.perf_counter() - origin  # noqa: E731
            elif self.simulated_latency == "sampled":
                finish = lambda bucket: now + self.profile.sample_ms(rate, bucket, rng) / 1e3  # noqa: E731
            else:
                finish = lambda bucket: now + self._service_s[(rate, bucket)]  # noqa: E731
            answered = self._answer(rate, batch, now, finish)
            for entry, response in zip(batch, answered):
                responses[entry[SEQUENCE]] = response
            if self.clock == "simulated":
                now = answered[0].finish_s
        return responses

    def front_end(self, delivery_ms=0.0, cost_ms=0.0):
        """Tells the planner what a front end adds to every request.

        A front end that parses requests and sends answers (`HTTPFrontEnd`,
        `ASGIFrontEnd`) measures both and keeps them up to date here:

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
            if not is_number(value) or not value >= 0:
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

    def _take(self, now):
        """Plans the next batch and takes it off the queue: `(rate, entries)`.

        The earliest deadline leads. When it pinned a rate, the batch is the
        requests pinned to that rate; otherwise the planner chooses the rate
        for the whole queue and the batch is the free requests with those
        pinned to the chosen rate. Every request is first in time, so none
        waits forever.
        """
        queue = self._queue
        pinned = queue[0][RATE]
        if pinned is None:
            rate, count = self._planner.plan(now, queue, self._arrivals.at(now))
        else:
            rate, count = pinned, self.max_batch_size
        batch, rest = [], []
        for entry in queue:
            if len(batch) < count and (entry[RATE] == pinned or entry[RATE] == rate):
                batch.append(entry)
            else:
                rest.append(entry)
        queue[:] = rest
        return rate, batch

    def _answer(self, rate, batch, now, finish):
        """Runs `batch` at `rate`, counts it; returns its responses.

        `finish(bucket)` gives the time the batch finished on the server's
        clock. Live entries whose caller cancelled are skipped (answered
        `None`); once running, a future can no longer be cancelled.
        """
        taken = [e for e in batch if e[FUTURE] is None or e[FUTURE].set_running_or_notify_cancel()]
        if len(taken) < len(batch):
            with self._lock:
                self._stats["cancelled"] += len(batch) - len(taken)
        if not taken:
            return [None] * len(batch)
        count = len(taken)
        bucket = self._planner.bucket(count)
        examples = np.stack([entry[EXAMPLE] for entry in taken])
        if bucket > count:
            # Padding to a profiled size reuses a cached interpreter and
            # keeps the cost the profile measured; padded rows are dropped.
            pad = np.repeat(examples[-1:], bucket - count, axis=0)
            examples = np.concatenate([examples, pad])
        outputs = self.bundle.predict(examples, rate)[:count]
        end = finish(bucket)
        answered = {}
        for entry, out in zip(taken, outputs):
            answered[entry[SEQUENCE]] = Response(
                entry[ID], out, rate, count, entry[ARRIVAL], now, end,
                entry[DEADLINE], self._kind,
            )
        responses = list(answered.values())
        with self._lock:
            self._stats["served"] += count
            self._stats["late"] += sum(r.late for r in responses)
            self._stats["batches"] += 1
            self._stats["by_rate"][rate] = self._stats["by_rate"].get(rate, 0) + count
        if self.clock == "real":
            self._planner.observe(rate, bucket, end - now)
        return [answered.get(entry[SEQUENCE]) for entry in batch]

    def pin_rate(self, rate, owner="ElasticServer"):
        """The server's rate equal to `rate`; raises `ValueError` naming
        `owner` when the server does not serve it."""
        chosen = self.bundle.resolve_rates([rate], owner).pop()
        if chosen not in self.rates:
            raise ValueError(
                f"{owner}: rate={chosen:g} is not served here. Served rates: "
                f"{', '.join(format(r, 'g') for r in self.rates)}"
            )
        return chosen

    def _example(self, x, owner):
        prepared = self.bundle.prepare(np.asarray(x)[None], f"ElasticServer ({owner})")
        return prepared[0]

    def _reset_stats(self):
        self._stats = {
            "served": 0,
            "late": 0,
            "batches": 0,
            "by_rate": {},
            "cancelled": 0,
            "rejected": 0,
            "failed": 0,
        }


def _time(value, name, position, inf_ok=False):
    if not is_number(value, inf_ok) or value < 0:
        raise ValueError(
            f"ElasticServer.replay: request {position} needs {name} as a "
            f"number of seconds >= 0. Received: {name}={value!r}"
        )
    return float(value)
