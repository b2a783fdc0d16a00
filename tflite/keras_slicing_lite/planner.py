"""The width choice of `ElasticServer`: deadlines of the whole queue, arrival rate.

A planner that checks only the batch at hand, assuming everything queued
behind it will be served at the narrowest width, is optimistic in a way
that defeats itself: at the next batch it makes the same assumption and
chooses wide again, so the narrow plan it relied on never runs. Under a
burst faster than the full width drains, it keeps choosing wide until the
queue sits just at the edge of its deadlines, and any stall then makes the
whole queue late. This planner chooses a width it could keep:

- the whole queue, served at that width in batches of `max_batch_size`,
  meets every deadline (less `reserve_s`); and
- at the arrival rate measured now, that width's throughput keeps up with
  margin: `arrival_rate * cost_per_request <= MAX_UTILIZATION`, so the
  queue does not grow while it serves.

The widest rate passing both wins; when none does the server is overloaded
and the narrowest rate drains the queue fastest. Costs are the profile's,
corrected on the real clock by `CostFit` from the batches measured.
"""

import bisect
import math

# Utilization a width may run at before a narrower one is chosen: below 1
# so that the queue stays short despite random arrivals and noisy costs.
MAX_UTILIZATION = 0.8
# Time constant of the arrival-rate estimate: short enough to see a burst
# within a fraction of a typical deadline, long enough to count dozens of
# arrivals at a few thousand per second.
ARRIVAL_WINDOW_S = 0.025
# Weight of the newest batch in the fit of real-clock costs: about the last
# 20 batches count.
OVERHEAD_SMOOTHING = 0.05
# Bounds of the fitted slowdown: a busy machine makes every call slower in
# proportion, not by a fixed amount, but one noisy fit must not freeze the
# server at the narrowest width forever.
MAX_SLOWDOWN = 20.0


class ArrivalRate:
    """Arrivals per second: a count decaying exponentially over `window_s`.

    Each arrival adds `1 / window_s`; the sum decays by `exp(-dt / window_s)`,
    so a steady stream of `r` per second reads `r`, and a burst shows after
    about one window.
    """

    def __init__(self, window_s=ARRIVAL_WINDOW_S):
        self.window_s = float(window_s)
        self._rate = 0.0
        self._last = None

    def add(self, t, count=1):
        self._rate = self.at(t) + count / self.window_s
        self._last = max(t, self._last) if self._last is not None else t

    def at(self, t):
        """The estimate at time `t` (seconds, the clock of `add`)."""
        if self._last is None:
            return 0.0
        return self._rate * math.exp(-max(0.0, t - self._last) / self.window_s)


class CostFit:
    """Real cost of a call as `fixed_s + slowdown * profiled median`.

    Another process taking the CPU makes every call slower in proportion
    (a 3x slowdown adds 2 ms to a 1 ms call and 40 ms to a 20 ms one), while
    Python work around a call adds about the same to each: a single additive
    overhead learned from cheap narrow batches would promise a wide batch far
    too soon. An exponentially weighted least-squares fit over recent
    batches separates the two; while recent batches cost too much alike to
    fit a slope (standard deviation under half the mean), the slowdown keeps
    its last value and only `fixed_s` moves.
    """

    def __init__(self, smoothing=OVERHEAD_SMOOTHING):
        self.smoothing = smoothing
        self.slowdown = 1.0
        self.fixed_s = 0.0
        self._sums = (0.0, 0.0, 0.0, 0.0, 0.0)  # weight, x, y, x*x, x*y

    def add(self, profiled_s, observed_s):
        keep = 1.0 - self.smoothing
        w, sx, sy, sxx, sxy = (v * keep for v in self._sums)
        x, y = profiled_s, observed_s
        self._sums = (w + 1, sx + x, sy + y, sxx + x * x, sxy + x * y)
        w, sx, sy, sxx, sxy = self._sums
        mean_x, mean_y = sx / w, sy / w
        variance = sxx / w - mean_x * mean_x
        # A slope needs batches of clearly different cost: with a spread of
        # only a few percent, one stalled call would set it.
        if variance > (0.5 * mean_x) ** 2:
            slope = (sxy / w - mean_x * mean_y) / variance
            self.slowdown = min(MAX_SLOWDOWN, max(1.0, slope))
        self.fixed_s = max(0.0, mean_y - self.slowdown * mean_x)

    def cost_s(self, planned_s):
        return self.fixed_s + self.slowdown * planned_s


class WidthPlanner:
    """Chooses `(rate, batch_size)` for a queue sorted by deadline.

    Args:
        rates: The allowed rates, widest first.
        plan_s: `{(rate, bucket): seconds}` planned per call.
        service_s: `{(rate, bucket): seconds}`, the profiled median per
            call, from which the real-clock overhead is measured.
        max_batch_size: Most requests per call.
        reserve_s: Seconds to plan to finish before each deadline.

    Two costs of a front end, 0 until set (`ElasticServer.front_end`):
    `delivery_s` is planned before each deadline as well (the time from an
    answer to its reply sent), and `front_end_s` is added to the cost per
    request of every width in the arrival-rate check (processor time the
    front end's threads take from the model's).
    """

    def __init__(self, rates, plan_s, service_s, max_batch_size, reserve_s=0.0):
        self.rates = tuple(rates)
        self.max_batch_size = int(max_batch_size)
        self.reserve_s = float(reserve_s)
        self.delivery_s = 0.0
        self.front_end_s = 0.0
        self._plan_s = plan_s
        self._service_s = service_s
        self._buckets = sorted({b for _, b in plan_s})
        self.costs = CostFit()

    def bucket(self, count):
        """The profiled batch size a batch of `count` is padded to."""
        return self._buckets[bisect.bisect_left(self._buckets, count)]

    def plan(self, now, queue, arrival_rate=0.0):
        """`(rate, count)` for `queue`: entries `(deadline_s, ...)`, sorted."""
        count = min(len(queue), self.max_batch_size)
        if len(self.rates) == 1:
            return self.rates[0], count
        for rate in self.rates:
            per_request = self.cost_per_request_s(rate) + self.front_end_s
            if arrival_rate * per_request > MAX_UTILIZATION:
                continue
            if self._meets_deadlines(now, queue, rate):
                return rate, count
        return self.rates[-1], count

    def cost_per_request_s(self, rate):
        """Planned seconds per request at `rate` in full batches: its throughput."""
        full = self.max_batch_size
        return self.costs.cost_s(self._plan_s[(rate, self.bucket(full))]) / full

    def observe(self, rate, bucket, seconds):
        """Learns from a real-clock batch how its cost relates to the profile."""
        self.costs.add(self._service_s[(rate, bucket)], seconds)

    def _meets_deadlines(self, now, queue, rate):
        # Serving in deadline order, each batch is due at its first (earliest)
        # deadline; later arrivals are due later and do not delay the queue.
        finish = now
        reserve = self.reserve_s + self.delivery_s
        for start in range(0, len(queue), self.max_batch_size):
            size = min(self.max_batch_size, len(queue) - start)
            finish += self.costs.cost_s(self._plan_s[(rate, self.bucket(size))])
            if finish > queue[start][0] - reserve:
                return False
        return True
