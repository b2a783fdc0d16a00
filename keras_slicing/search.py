"""Searching width configurations of a trained sliced model under a budget."""

import collections
import time

import keras
import numpy as np

from keras_slicing import graph
from keras_slicing import rates as rates_lib
from keras_slicing import widths as widths_lib
from keras_slicing.cost import model_cost
from keras_slicing.extract import extract_submodel

METHODS = ("greedy", "random")
COSTS = ("macs", "params")

SearchPoint = collections.namedtuple(
    "SearchPoint", ["config", "cost", "cost_fraction", "score"]
)
SearchPoint.__doc__ = """One evaluated configuration.

`config` is `{group name: rate}` for every width group, `cost` its cost
(MACs, parameters, or what the cost function returned), `cost_fraction`
that cost over the full width's, `score` its validation score.
"""


class SearchResult:
    """What `search_widths` found.

    Attributes:
        front: The Pareto front of every configuration evaluated, cheapest
            first: each point scores strictly better than all cheaper ones.
        budgets: `{budget: SearchPoint or None}`: per budget (a fraction of
            the full width's cost), the best-scoring configuration within
            it (of equal scores, the costlier), or None when even the
            narrowest is too costly.
        uniform: The uniform configurations (every group at one of the searched rates),
            evaluated alike, widest first.
        points: Every configuration evaluated, in evaluation order.
        evaluations: How many configurations were evaluated.
        seconds: The search's wall-clock time.
        complete: False when `max_evaluations` or `time_limit` stopped it.
    """

    def __init__(self, points, uniform, budgets, seconds, complete):
        self.points = list(points)
        self.uniform = list(uniform)
        self.front = pareto_front(self.points)
        self.budgets = {
            b: best_within(self.points, b) for b in (budgets or ())
        }
        self.evaluations = len(self.points)
        self.seconds = float(seconds)
        self.complete = bool(complete)

    def to_dict(self):
        """The result as JSON-ready dicts."""
        return {
            "front": [p._asdict() for p in self.front],
            "budgets": {
                str(b): (p._asdict() if p else None) for b, p in self.budgets.items()
            },
            "uniform": [p._asdict() for p in self.uniform],
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "complete": self.complete,
        }

    def __repr__(self):
        return (
            f"SearchResult(front of {len(self.front)} points, "
            f"{self.evaluations} evaluations in {self.seconds:.1f} s)"
        )


def search_widths(
    model,
    validation_data,
    budgets=None,
    cost="macs",
    metric="accuracy",
    method="greedy",
    rates=None,
    max_evaluations=None,
    time_limit=None,
    seed=None,
    batch_size=256,
    verbose=1,
    calibration_data=None,
):
    """Finds the best-scoring width configuration for each cost budget.

    Runs the trained sliced `model` at many width configurations (see
    `keras_slicing.width_groups`) on `validation_data`, without retraining,
    and keeps the ones on the accuracy–cost Pareto front. The uniform
    configurations (every group at one of `rates`) are always evaluated, so
    on the validation data the chosen configuration is never worse than
    the best uniform one within a budget.

    `method="greedy"` is AutoSlim's greedy slimming: from the full width,
    each step narrows to its next rate the group whose narrowing keeps the
    best score (ties: the cheaper), until every group is at its narrowest
    or the smallest budget is met: about `n * (R - 1)` steps of at most `n`
    evaluations for `n` groups and `R` rates.
    `method="random"` evaluates configurations drawn at random from `seed`
    (`max_evaluations` of them, default 100): the reference a search must
    beat.

    A model with `SlicedBatchNormalization` keeps statistics per uniform
    rate only, so it needs `calibration_data`: each configuration is then
    scored on its plain model, `extract_submodel(model, config,
    calibration_data=calibration_data)` (a mixed one with its batch-norm
    statistics recomputed on that data). Each candidate then costs a cut
    (building the plain model and copying its weights), one pass over
    `calibration_data` and one over `validation_data`, instead of the one
    pass over `validation_data` of a model without batch norm: keep
    `calibration_data` to a few thousand examples, and bound a large
    model's search with `max_evaluations` or `time_limit`.

    Args:
        model: A trained functional model with a rate input (e.g. a
            `SlicingModel`).
        validation_data: `(x, y)`; the search sees nothing else. Keep the
            test split out of it.
        budgets: Optional cost budgets, each a fraction of the full width's
            cost in (0, 1]: `result.budgets` gives the best configuration
            within each.
        cost: `"macs"` (per example, as `model_cost`), `"params"`, or a
            function `cost(model, config) -> float`, such as
            `keras_slicing.search.litert_latency()` (measured LiteRT
            milliseconds of `extract_submodel(model, config)`).
        metric: `"accuracy"` (argmax of the last axis against integer or
            one-hot labels) or a function `metric(y_true, y_pred) -> float`,
            higher is better.
        method: `"greedy"` or `"random"`.
        rates: The rates each group may take. Defaults to the model's
            `rates` (the trained widths of a `SlicingModel`), else every
            `k / G` of each group's `G` slice groups.
        max_evaluations: Optional cap on the configurations evaluated.
        time_limit: Optional cap in seconds; the search stops after the
            evaluation that passes it (`result.complete` is then False).
        seed: Integer seed of `method="random"`; the greedy search is
            deterministic.
        batch_size: Batch size of the evaluations. Defaults to `256`.
        verbose: `1` shows a progress bar, `0` nothing.
        calibration_data: Training inputs recomputing the batch-norm
            statistics of each mixed configuration, as
            `keras_slicing.extract_submodel` reads them (arrays, `(x, y)`,
            or a re-iterable of batches such as a `tf.data` dataset: it is
            read once per configuration). Required for, and only used by, a
            model with `SlicedBatchNormalization`. Not the validation data.

    Returns:
        A `SearchResult`.

    Example:

    >>> result = keras_slicing.search_widths(model, (x_val, y_val),
    ...                                      budgets=[0.1, 0.25, 0.5])
    >>> result.budgets[0.25].config, result.budgets[0.25].score
    """
    owner = "search_widths"
    if method not in METHODS:
        raise ValueError(
            f"{owner}: method must be one of {METHODS}. Received: method={method!r}"
        )
    if budgets is not None:
        budgets = [rates_lib.validate_rate(b, f"{owner}: budgets") for b in budgets]
    analysis = widths_lib.analyze(model)
    groups = analysis.groups
    if not groups:
        raise ValueError(
            f"{owner}: model '{model.name}' has no width group (no sliced "
            "layer narrows its output), so there is nothing to search."
        )
    if analysis.batch_norms and calibration_data is None:
        raise ValueError(
            f"{owner}: model '{model.name}' has SlicedBatchNormalization "
            f"layers ({', '.join(analysis.batch_norms)}), whose statistics are "
            "kept per uniform rate, so a mixed configuration is scored with "
            "statistics recomputed for it: pass calibration_data (training "
            "inputs, a few thousand examples). Received: calibration_data=None"
        )
    x, y = _split(validation_data, owner)
    cost_fn = _cost_function(cost, owner)
    score_fn = _metric_function(metric, owner)
    sizes = [g.slice_groups for g in groups]
    names = [g.name for g in groups]
    if rates is None:
        rates = getattr(model, "rates", None)
    if rates is None:
        rates = sorted({k / g for g in sizes for k in range(1, g + 1)})
    rates = sorted(set(rates_lib.validate_rates(rates, f"{owner}: rates")),
                   reverse=True)
    # The active slice groups each group may keep, widest first.
    choices = [
        sorted({rates_lib.active_groups(r, g) for r in rates}, reverse=True)
        for g in sizes
    ]

    start = time.perf_counter()
    limit = _Limit(max_evaluations, time_limit, start)
    progress = keras.utils.Progbar(
        target=_planned(method, choices, max_evaluations), verbose=verbose,
        unit_name="configuration",
    )
    cache = {}
    order = []

    def evaluate(ks):
        if ks in cache:
            return cache[ks]
        config = {n: k / g for n, k, g in zip(names, ks, sizes)}
        value = float(cost_fn(model, config))
        if analysis.batch_norms:
            plain = extract_submodel(
                model, config, calibration_data=calibration_data,
                batch_size=batch_size,
            )
            predictions = plain.predict(x, batch_size=batch_size, verbose=0)
        else:
            layer_rates = widths_lib.resolve(model, config, owner, analysis)
            predictions = _predict(model, layer_rates, x, batch_size)
        score = float(score_fn(y, predictions))
        cache[ks] = (config, value, score)
        order.append(ks)
        progress.update(len(order))
        return cache[ks]

    full = tuple(c[0] for c in choices)
    full_cost = evaluate(full)[1]
    uniform_keys = []
    for r in rates:
        ks = tuple(rates_lib.active_groups(r, g) for g in sizes)
        if ks not in uniform_keys:
            uniform_keys.append(ks)
    complete = True
    for ks in uniform_keys:
        if limit.reached(len(order)):
            complete = False
            break
        evaluate(ks)
    if complete:
        if method == "greedy":
            stop = min(budgets) * full_cost if budgets else -np.inf
            complete = _greedy(full, choices, evaluate, stop, limit, order)
        else:
            complete = _random(choices, evaluate, seed, limit, order,
                               max_evaluations or 100)
    progress.update(len(order), finalize=True)

    def point(ks):
        config, value, score = cache[ks]
        return SearchPoint(config, value, value / full_cost, score)

    return SearchResult(
        [point(ks) for ks in order],
        [point(ks) for ks in uniform_keys if ks in cache],
        budgets,
        time.perf_counter() - start,
        complete,
    )


def litert_latency(batch_size=1, num_threads=1, repeats=15, calibration_data=None):
    """A `cost` for `search_widths`: measured LiteRT milliseconds per call.

    Each configuration is cut out (`extract_submodel`), converted with
    builtin operators (`keras_slicing.export.convert_to_tflite`) and timed
    on this machine's LiteRT interpreter with a random input (the median of
    `repeats` rounds). Needs TensorFlow; a conversion takes seconds, so
    bound the search (`max_evaluations`, `time_limit`). Timings on a busy
    machine are noisy: run it on the target device, or where load is
    steady.

    Args:
        batch_size: Examples per call. Defaults to `1`.
        num_threads: LiteRT CPU threads. Defaults to `1`.
        repeats: Timing rounds. Defaults to `15`.
        calibration_data: Training inputs for the batch-norm statistics of
            mixed configurations of a model with batch normalization, as
            in `extract_submodel`; the timing does not depend on them, so
            a few batches are enough. Defaults to `None`.
    """

    def cost(model, config):
        from keras_slicing.export import convert_to_tflite
        from keras_slicing.interpreter import load_interpreter
        from keras_slicing.interpreter import measure_latencies
        from keras_slicing.interpreter import set_random_input

        content = convert_to_tflite(
            extract_submodel(model, config, calibration_data=calibration_data)
        )
        interpreter = load_interpreter(model_content=content, num_threads=num_threads)
        set_random_input(interpreter, batch_size)
        (seconds,) = measure_latencies([interpreter], repeats)
        return 1000.0 * seconds

    return cost


def pareto_front(points):
    """The points no other point beats at lower or equal cost, cheapest first."""
    front = []
    for p in sorted(points, key=lambda p: (p.cost, -p.score)):
        if not front or p.score > front[-1].score:
            front.append(p)
    return front


def best_within(points, budget):
    """The best-scoring point whose cost fraction is at most `budget`.

    Of equal scores the costlier wins: on a small validation set many
    configurations tie, and the one using more of the budget is the safer
    bet on new data.
    """
    fitting = [p for p in points if p.cost_fraction <= budget + 1e-12]
    if not fitting:
        return None
    return max(fitting, key=lambda p: (p.score, p.cost))


def _greedy(ks, choices, evaluate, stop, limit, order):
    while evaluate(ks)[1] > stop:
        candidates = []
        for i, (k, allowed) in enumerate(zip(ks, choices)):
            position = allowed.index(k)
            if position + 1 < len(allowed):
                candidates.append(ks[:i] + (allowed[position + 1],) + ks[i + 1:])
        if not candidates:
            return True
        results = []
        for candidate in candidates:
            if limit.reached(len(order)):
                return False
            _, value, score = evaluate(candidate)
            results.append((score, -value, candidate))
        # max on (score, -cost); equal ones keep the earliest group's.
        best = max(results, key=lambda r: (r[0], r[1]))
        ks = best[2]
    return True


def _random(choices, evaluate, seed, limit, order, count):
    rng = np.random.default_rng(seed)
    tries = 0
    space = int(np.prod([len(c) for c in choices]))
    while len(order) < min(count, space) and tries < 100 * count:
        if limit.reached(len(order)):
            return False
        tries += 1
        evaluate(tuple(int(allowed[rng.integers(len(allowed))]) for allowed in choices))
    return True


class _Limit:
    def __init__(self, max_evaluations, time_limit, start):
        self.max_evaluations = max_evaluations
        self.deadline = None if time_limit is None else start + float(time_limit)

    def reached(self, evaluations):
        if self.max_evaluations is not None and evaluations >= self.max_evaluations:
            return True
        return self.deadline is not None and time.perf_counter() > self.deadline


def _planned(method, choices, max_evaluations):
    if method == "random":
        return max_evaluations or 100
    n = len(choices)
    planned = max(len(c) for c in choices) + n * sum(len(c) - 1 for c in choices)
    return min(planned, max_evaluations) if max_evaluations else planned


def _split(validation_data, owner):
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise ValueError(
            f"{owner}: validation_data must be a pair (x, y). Received: "
            f"{type(validation_data).__name__}"
        )
    x, y = validation_data
    if len(keras.tree.flatten(x)[0]) != len(y) or not len(y):
        raise ValueError(
            f"{owner}: validation_data x and y must hold the same number of "
            f"examples, at least one. Received: {len(keras.tree.flatten(x)[0])} "
            f"and {len(y)}"
        )
    return x, np.asarray(y)


def _cost_function(cost, owner):
    if callable(cost):
        return cost
    if cost not in COSTS:
        raise ValueError(
            f"{owner}: cost must be one of {COSTS} or a function "
            f"cost(model, config) -> float. Received: cost={cost!r}"
        )
    return lambda model, config: model_cost(model, config)[cost]


def _metric_function(metric, owner):
    if callable(metric):
        return metric
    if metric != "accuracy":
        raise ValueError(
            f"{owner}: metric must be 'accuracy' or a function "
            f"metric(y_true, y_pred) -> float. Received: metric={metric!r}"
        )
    return accuracy


def accuracy(y_true, y_pred):
    """Top-1 accuracy of integer or one-hot labels against scores."""
    y_true = np.asarray(y_true)
    if y_true.ndim == y_pred.ndim:
        y_true = y_true.argmax(-1)
    return float(np.mean(y_pred.argmax(-1) == y_true.reshape(-1)))


def _predict(model, layer_rates, x, batch_size):
    """The model's output on `x` at `layer_rates`, without building a model."""
    arrays = keras.tree.flatten(x)
    outputs = []
    for start in range(0, len(arrays[0]), batch_size):
        batch = [
            keras.ops.convert_to_tensor(a[start : start + batch_size]) for a in arrays
        ]
        (output,) = keras.tree.flatten(
            graph.replay(
                model, layer_rates, lambda layer, *a, **k: layer(*a, **k),
                inputs=batch,
            )
        )
        outputs.append(keras.ops.convert_to_numpy(output))
    return np.concatenate(outputs)
