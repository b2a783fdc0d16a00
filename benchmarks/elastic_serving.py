"""Elastic serving under bursts: fixed widths against the ElasticServer.

Builds a sliced CNN (`--model`), exports it as a TFLite bundle, profiles
every width with keras_slicing_lite on this machine, and serves the same
load with three servers that share the same queue and dynamic batching:
(a) full width fixed, (b) narrowest width fixed, (c) the ElasticServer.
- `--model=cnn32` (the default): six sliced 3x3 convolutions on 32x32x3
  inputs, random seeded weights; latency only, accuracy "n/a".
- `--model=digits`: a sliced 2-conv CNN trained on scikit-learn's 8x8
  digits (`--epochs`), with accuracy per width.

First two seeded, recorded traces are replayed on the simulated clock, each
batch costing a latency drawn (seeded) from the calls measured by the
profile, so a batch can overrun its plan and the numbers are reproducible:
- "bursty": Poisson arrivals whose rate peaks at 10x the trace's average
  (short bursts on a low base), every request due `slo_ms` after arrival.
- "steady": Poisson arrivals at the same average rate, no bursts: accuracy
  "at average load".
`--real_time_s` also replays the start of the bursty trace on the wall clock.

Then the live load test (`--live_s` seconds per server, 0 to skip). It
first measures, in this run, the closed-loop capacity of the live full-width
and narrowest servers (queue never empty), then sends one wall-clock bursty
trace (bursts of `--peak`x the base for 0.4 s every 2.5 s; the burst rate is
`--live_load` x full width's measured capacity, or `--live_base_rate`) to
each of the three servers in turn:
- live API: `--clients` threads calling `ElasticServer.submit`;
- HTTP: `keras-slicing-lite serve` in its own process, with `--http_procs`
  client processes holding `--http_clients` keep-alive connections in all
  (bursts at `--http_load` x full width's HTTP capacity measured in this
  run with the same body, or `--http_load_scale` x the API trace's rate),
  sending each image as a
  `.npy` body (`--http_body=npy`, the default) or as JSON (`json`). The
  closed-loop HTTP capacity is measured with both bodies in the same run.
The load average is printed (and recorded) around the live tests: on a
shared machine it says how much of the CPU the servers had.
`--cancel_fraction` of the clients give up at once (cancelling the future;
closing the connection unread). Reported per server: the offered rate the
clients achieved (and their lag behind the trace), p50/p99 latency, missed
deadlines, rejected (full queue), dropped (never answered nor failed within
the timeout), accuracy.

Targets: elastic deadline misses <= 1% where full width misses > 20% on the
bursty trace (simulated and live API); elastic accuracy within 1 point of
full width on the steady trace (digits); no request dropped, no hang. Prints
tables, writes benchmarks/results/elastic_serving.json, the trace, and a PNG
of width and latency over time.

    python benchmarks/elastic_serving.py [--model cnn32|digits] [--load 0.4]
        [--slo_ms 20] [--reserve_ms 5] [--duration_s 20] [--threads 1]
        [--real_time_s 6] [--live_s 6] [--live_load 3] [--live_rounds 1]
        [--clients 4] [--cnn32_channels 32]
        [--http_procs 2] [--http_clients 32] [--http_load 1.5]
        [--http_load_scale 0]
        [--http_body npy|json]
        [--cancel_fraction 0.05] [--trace PATH] [--output PATH]
"""

import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_slicing  # noqa: E402
import keras_slicing_lite as lite  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks import live_load  # noqa: E402
from keras_slicing import layers  # noqa: E402
from keras_slicing.model import SlicingModel  # noqa: E402

flags.DEFINE_integer("epochs", 40, "Training epochs of the sliced CNN.")
flags.DEFINE_integer("seed", 0, "Seed of training and of the traces.")
flags.DEFINE_float("load", 0.4, "Average arrival rate as a fraction of the "
                   "full width's capacity at the largest batch size.")
flags.DEFINE_float("peak", 10.0, "Burst arrival rate / average arrival rate.")
flags.DEFINE_float("burst_fraction", 0.05, "Fraction of time in bursts.")
flags.DEFINE_float("burst_s", 0.5, "Length of one burst in seconds.")
flags.DEFINE_float("slo_ms", 20.0, "Deadline of every request after arrival.")
flags.DEFINE_float("reserve_ms", 5.0, "Slack the elastic server keeps before "
                   "each deadline against stalls of a shared machine.")
flags.DEFINE_float("duration_s", 20.0, "Length of each trace (simulated s).")
flags.DEFINE_float("real_time_s", 6.0, "Seconds of the bursty trace also "
                   "replayed on the wall clock (0 to skip).")
flags.DEFINE_float("live_s", 6.0, "Seconds of wall-clock load per server in "
                   "the live API and HTTP tests (0 to skip).")
flags.DEFINE_enum("model", "cnn32", ["cnn32", "digits"], "cnn32: a sliced "
                  "6-conv CNN on 32x32x3 inputs with random (seeded) weights, for "
                  "latency; accuracy is n/a. digits: a sliced 2-conv CNN trained on "
                  "scikit-learn's 8x8 digits, with accuracy.")
flags.DEFINE_integer("cnn32_channels", 32, "Channels of cnn32's first two "
                     "convolutions (then 2x and 4x).")
flags.DEFINE_float("live_load", 3.0, "Live burst arrival rate as a multiple of "
                   "full width's capacity, measured closed-loop through the live "
                   "server in this run (the base rate is the burst over --peak).")
flags.DEFINE_float("live_base_rate", 0.0, "Live base arrival rate per second; "
                   "overrides --live_load when > 0.")
flags.DEFINE_integer("live_rounds", 1, "Rounds of the live tests; each round "
                     "runs the three servers on the same trace, in rotated order.")
flags.DEFINE_float("live_slo_ms", 50.0, "Deadline of live requests.")
flags.DEFINE_integer("live_max_batch", 32, "Largest batch of the live servers.")
flags.DEFINE_integer("http_clients", 32, "Concurrent HTTP connections, all "
                     "client processes together.")
flags.DEFINE_integer("http_procs", 2, "HTTP client processes (JSON and sockets "
                     "of the clients are not bound by one interpreter's GIL).")
flags.DEFINE_integer("clients", 4, "Client threads of the live API test.")
flags.DEFINE_float("cancel_fraction", 0.05, "Fraction of live requests whose "
                   "client gives up right after sending.")
flags.DEFINE_float("http_load", 1.5, "HTTP burst arrival rate as a multiple of "
                   "full width's closed-loop HTTP capacity with --http_body, "
                   "measured in this run (0 skips the HTTP test): the "
                   "standard-library front end answers fewer requests per second "
                   "than the model, so its own capacity is the yardstick.")
flags.DEFINE_float("http_load_scale", 0.0, "When > 0: HTTP trace rate relative to "
                   "the live API trace instead of --http_load.")
flags.DEFINE_enum("http_body", "npy", ["npy", "json"], "Body of the HTTP "
                  "load test's requests: npy (application/x-npy, the deadline in "
                  "the query) or json.")
flags.DEFINE_integer("threads", 1, "LiteRT interpreter threads.")
flags.DEFINE_integer("max_batch", 32, "Largest batch a server forms.")
flags.DEFINE_string("trace", None, "Replay this recorded trace JSON instead "
                    "of generating one.")
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/).")
FLAGS = flags.FLAGS

RATES = (1.0, 0.75, 0.5, 0.25)
BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def digits_split(seed):
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=seed
    )


def cnn32_data(seed):
    """Random 32x32x3 images: inputs for latency, no labels."""
    rng = np.random.default_rng(seed)
    return rng.random((256, 32, 32, 3), dtype="float32"), None


def build_cnn32(seed, channels=32):
    """Six sliced 3x3 convolutions (c-c-2c-2c-4c-4c channels, two with
    stride 2), ReLU, global average pooling, a dense classifier. With
    c = 32: 39 MMACs per 32x32x3 image at full width, 2.6 at 0.25."""
    x = keras.Input((32, 32, 3), name="image")
    rate = keras_slicing.rate_input()
    h = x
    c = channels
    for i, (width, stride) in enumerate(
        zip((c, c, 2 * c, 2 * c, 4 * c, 4 * c), (1, 1, 2, 1, 2, 1))
    ):
        h = layers.SlicedConv2D(
            width, 3, strides=stride, padding="same", slice_input=i > 0,
            activation="relu",
        )(h, rate)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = layers.SlicedDense(10, slice_output=False, name="logits")(h, rate)
    return SlicingModel([x, rate], y, rates=RATES, seed=seed, name="cnn32")


def build_model(seed):
    x = keras.Input((8, 8, 1), name="image")
    rate = keras_slicing.rate_input()
    h = layers.SlicedConv2D(64, 3, padding="same", slice_input=False)(x, rate)
    h = layers.SlicedGroupNormalization(groups=8)(h, rate)
    h = keras.layers.ReLU()(h)
    h = layers.SlicedConv2D(128, 3, padding="same")(h, rate)
    h = layers.SlicedGroupNormalization(groups=8)(h, rate)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = layers.SlicedDense(10, slice_output=False, name="logits")(h, rate)
    return SlicingModel([x, rate], y, rates=RATES, seed=seed, name="digits_cnn")


def make_trace(name, average_rate, seed):
    """Seeded Poisson arrivals; `bursty` peaks at `peak` x the average rate."""
    rng = np.random.default_rng(seed)
    duration = FLAGS.duration_s
    if name == "steady":
        segments = [(0.0, duration, average_rate)]
    else:
        peak = FLAGS.peak * average_rate
        # The base rate keeps the trace's mean at `average_rate`.
        f = FLAGS.burst_fraction
        base = average_rate * (1 - FLAGS.peak * f) / (1 - f)
        if base <= 0:
            raise ValueError(
                f"peak={FLAGS.peak} x burst_fraction={f} must stay below 1 so "
                "that the base rate is positive."
            )
        period = FLAGS.burst_s / f
        segments, t = [], 0.0
        while t < duration:
            burst_start = t + period / 2
            segments.append((t, min(burst_start, duration), base))
            if burst_start < duration:
                end = min(burst_start + FLAGS.burst_s, duration)
                segments.append((burst_start, end, peak))
            segments.append((min(burst_start + FLAGS.burst_s, duration),
                             min(t + period, duration), base))
            t += period
    arrivals, in_burst = [], []
    for start, end, rate in segments:
        count = rng.poisson(rate * (end - start))
        times = np.sort(rng.uniform(start, end, count))
        arrivals.append(times)
        in_burst.append(np.full(count, rate > average_rate))
    arrivals = np.concatenate(arrivals)
    in_burst = np.concatenate(in_burst)
    order = np.argsort(arrivals, kind="stable")
    return {
        "name": name,
        "seed": seed,
        "average_rate_per_s": average_rate,
        "slo_ms": FLAGS.slo_ms,
        "segments": segments,
        "arrival_s": np.round(arrivals[order], 7).tolist(),
        "in_burst": in_burst[order].astype(int).tolist(),
        "example": rng.integers(0, 1 << 30, len(arrivals)).tolist(),
    }


def requests_of(trace, x_test, seconds=None):
    slo = trace["slo_ms"] / 1e3
    requests = []
    for i, t in enumerate(trace["arrival_s"]):
        if seconds is not None and t >= seconds:
            break
        k = trace["example"][i] % len(x_test)
        requests.append(lite.Request(x_test[k], t, t + slo, id=i))
    return requests


def summarize(trace, requests, responses, y_test, macs):
    answered = {r.id for r in responses if r is not None}
    dropped = len(requests) - len(answered)
    latency = np.array([r.latency_ms for r in responses])
    late = np.array([r.late for r in responses])
    if y_test is None:
        correct = np.array([])
    else:
        labels = np.array([y_test[trace["example"][r.id] % len(y_test)] for r in responses])
        correct = np.array([r.prediction for r in responses]) == labels
    burst = np.array([trace["in_burst"][r.id] for r in responses], bool)
    rates = np.array([r.rate for r in responses])

    def mean(values):
        return float(values.mean()) if values.size else None

    return {
        "requests": len(requests),
        "dropped": dropped,
        "p50_ms": float(np.percentile(latency, 50)),
        "p99_ms": float(np.percentile(latency, 99)),
        "miss_rate": float(late.mean()),
        "miss_rate_in_bursts": mean(late[burst]),
        "accuracy": mean(correct),
        "accuracy_off_burst": mean(correct[~burst]) if correct.size else None,
        "accuracy_in_bursts": mean(correct[burst]) if correct.size else None,
        "mean_macs": float(np.mean([macs[r] for r in rates])),
        "width_mix": {f"{r:g}": float(np.mean(rates == r)) for r in RATES},
    }


def replay(name, bundle, profile, rates, requests, clock="simulated"):
    server = lite.ElasticServer(
        bundle,
        profile,
        rates=rates,
        max_batch_size=FLAGS.max_batch,
        clock=clock,
        reserve_ms=FLAGS.reserve_ms,
        simulated_latency="sampled",
        seed=FLAGS.seed,
    )
    start = time.perf_counter()
    responses = server.replay(requests)
    return responses, time.perf_counter() - start


def live_tests(bundle, profile, x_test, y_test, results, workdir):
    cfg = types.SimpleNamespace(
        clients=FLAGS.clients, max_batch=FLAGS.live_max_batch, reserve_ms=FLAGS.reserve_ms,
        slo_ms=FLAGS.live_slo_ms, cancel_fraction=FLAGS.cancel_fraction,
        threads=FLAGS.threads, http_clients=FLAGS.http_clients, http_procs=FLAGS.http_procs,
        http_body=FLAGS.http_body,
    )
    load = results.setdefault("load_average", {})
    load["live_start"] = _load_average("before the live tests")
    narrowest = RATES[-1]
    # Measured now, through the live server, so that the overload factor
    # below is against this run's machine, not the profile's quiet moment.
    capacity = {
        name: live_load.closed_loop_capacity(bundle, profile, rates, x_test, cfg.max_batch)
        for name, rates in (("full", [1.0]), ("narrowest", [narrowest]))
    }
    base = FLAGS.live_base_rate or FLAGS.live_load * capacity["full"] / FLAGS.peak
    print(f"\nlive API capacity, closed loop, batches up to {cfg.max_batch}: full width "
          f"{capacity['full']:,.0f}/s, narrowest {capacity['narrowest']:,.0f}/s")
    results["live_capacity_per_s"] = capacity
    http = FLAGS.http_load > 0 or FLAGS.http_load_scale > 0
    if http:
        # Both bodies, each width, in this run: the front end's own cost
        # shows as the gap between the HTTP and the API figures.
        for name, rates in (("full", [1.0]), ("narrowest", [narrowest])):
            for body in ("npy", "json"):
                capacity[f"http_{name}_{body}"] = live_load.http_capacity(
                    bundle.path, rates, x_test, cfg, workdir, body=body)
            print(f"HTTP capacity, closed loop, {name} width, {cfg.http_clients} "
                  f"connections in {cfg.http_procs} processes: npy body "
                  f"{capacity[f'http_{name}_npy']:,.0f}/s, JSON body "
                  f"{capacity[f'http_{name}_json']:,.0f}/s")
        load["after_http_capacity"] = _load_average("after the HTTP capacity")
    servers = {"full": [1.0], "narrowest": [narrowest], "elastic": list(RATES)}
    rows = []
    http_scale = FLAGS.http_load_scale
    if http and not http_scale:
        http_scale = FLAGS.http_load * capacity[f"http_full_{FLAGS.http_body}"] / (
            FLAGS.peak * base)
    for path, scale in (("live API", 1.0), ("HTTP", http_scale)):
        if scale <= 0:
            continue
        arrivals, in_burst = live_load.bursty_arrivals(
            base * scale, FLAGS.peak, FLAGS.live_s, FLAGS.seed + 7)
        pick = np.random.default_rng(FLAGS.seed).integers(0, len(x_test), len(arrivals))
        x = x_test[pick]
        labels = None if y_test is None else y_test[pick]
        burst_rate = FLAGS.peak * base * scale
        own = capacity["full"]
        if path == "HTTP":
            own = capacity[f"http_full_{FLAGS.http_body}"]
        body = f", {FLAGS.http_body} bodies" if path == "HTTP" else ""
        print(f"\n{path}{body}: {len(arrivals):,} requests in {FLAGS.live_s:g} s, base "
              f"{base * scale:,.0f}/s, bursts {burst_rate:,.0f}/s = "
              f"{burst_rate / own:.1f}x full width's {path} capacity, deadline "
              f"{FLAGS.live_slo_ms:g} ms")
        runs = {name: [] for name in servers}
        for round_ in range(FLAGS.live_rounds):
            # Rounds rotate the order, so that a slow phase of a shared
            # machine does not always hit the same server.
            names = list(servers)[round_ % 3:] + list(servers)[:round_ % 3]
            for name in names:
                if path == "live API":
                    runs[name].append(live_load.live_api_run(
                        bundle, profile, servers[name], arrivals, x, cfg, FLAGS.seed))
                else:
                    runs[name].append(live_load.live_http_run(
                        bundle.path, servers[name], arrivals, x, cfg, FLAGS.seed,
                        workdir))
        load[f"after_{path}"] = _load_average(f"after the {path} test")
        for name in servers:
            summary = live_load.summarize_live(runs[name], arrivals, labels, in_burst)
            summary["base_rate_per_s"] = base * scale
            summary["burst_rate_per_s"] = burst_rate
            results[f"live-{path}/{name}"] = summary
            print(f"  {name}: offered {summary['offered_per_s']:,.0f}/s "
                  f"(trace {summary['trace_per_s']:,.0f}/s), client lag p99 "
                  f"{summary['client_lag_p99_ms']:.1f} ms, missed "
                  f"{100 * summary['miss_rate']:.2f}%")
            rows.append((
                path, name, summary["requests"], f"{summary['offered_per_s']:,.0f}",
                f"{summary['p50_ms']:.2f}", f"{summary['p99_ms']:.2f}",
                f"{100 * summary['miss_rate']:.2f}%", summary["cancelled"],
                summary["rejected"], summary["dropped"], summary["failed"],
                _accuracy(summary["accuracy"]),
                "/".join(f"{100 * summary['width_mix'].get(f'{r:g}', 0):.0f}"
                         for r in RATES),
            ))
    common.print_table(
        f"live, wall clock: {FLAGS.clients} API client threads / "
        f"{FLAGS.http_clients} HTTP connections in {FLAGS.http_procs} processes, "
        f"{100 * FLAGS.cancel_fraction:g}% of clients cancel",
        ["path", "server", "requests", "offered/s", "p50 ms", "p99 ms", "missed",
         "cancelled", "rejected", "dropped", "failed", "accuracy",
         "width mix 1/.75/.5/.25"],
        rows,
    )


def _load_average(when):
    load = os.getloadavg()
    print(f"load average {when}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"({os.cpu_count()} CPUs)")
    return list(load)


def _accuracy(value):
    return "n/a" if value is None else f"{value:.4f}"


def plot(path, trace, runs, slo_ms):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    arrivals = np.array(trace["arrival_s"])
    bins = np.arange(0, arrivals.max() + 0.05, 0.05)
    counts, _ = np.histogram(arrivals, bins)
    axes[0].step(bins[:-1], counts / 0.05, where="post", color="black")
    axes[0].set_ylabel("arrivals / s")
    axes[0].set_title("bursty trace: load, width and latency over time")
    elastic = runs["elastic"]
    starts = np.array([r.start_s for r in elastic])
    widths = np.array([r.rate for r in elastic])
    axes[1].scatter(starts, widths, s=2, color="tab:green")
    axes[1].set_ylabel("elastic width (rate)")
    axes[1].set_yticks(RATES)
    colors = {"full": "tab:red", "narrowest": "tab:blue", "elastic": "tab:green"}
    for name, responses in runs.items():
        axes[2].scatter(
            [r.arrival_s for r in responses],
            [r.latency_ms for r in responses],
            s=1, color=colors[name], label=name, alpha=0.5,
        )
    axes[2].axhline(slo_ms, color="gray", linestyle="--", label="deadline")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("latency ms")
    axes[2].set_xlabel("arrival time s (simulated clock)")
    axes[2].legend(loc="upper right", markerscale=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(_):
    logging.set_verbosity(logging.WARNING)
    began = time.perf_counter()
    facts = common.machine_facts()
    facts["litert_runtime"] = lite.runtime_name()
    facts["litert_version"] = lite.runtime.runtime_version()
    facts["litert_threads"] = FLAGS.threads
    print("machine:", facts)

    keras.utils.set_random_seed(FLAGS.seed)
    tmp = tempfile.mkdtemp()
    bundle_dir = pathlib.Path(tmp) / f"{FLAGS.model}_bundle"
    if FLAGS.model == "cnn32":
        # Random weights: latency does not depend on them.
        x_test, y_test = cnn32_data(FLAGS.seed)
        model = build_cnn32(FLAGS.seed, FLAGS.cnn32_channels)
        trained = time.perf_counter()
        keras_slicing.export_tflite(model, bundle_dir, rates=RATES)
    else:
        x_train, x_test, y_train, y_test = digits_split(FLAGS.seed)
        model = build_model(FLAGS.seed)
        model.compile(
            keras.optimizers.Adam(3e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x_train, y_train, epochs=FLAGS.epochs, batch_size=64, verbose=0)
        trained = time.perf_counter()
        keras_slicing.export_tflite(
            model, bundle_dir, rates=RATES, evaluation_data=(x_test, y_test)
        )
    bundle = lite.load_bundle(bundle_dir, num_threads=FLAGS.threads)
    # Cached beside the bundle, where the HTTP server process finds it.
    profile = bundle.profile(batch_sizes=BATCH_SIZES, repeats=30, cache=True)
    macs = {r: bundle.rate_entry(r)["macs"] for r in RATES}
    accuracy = {r: bundle.rate_entry(r).get("accuracy") for r in RATES}
    rows = []
    for r in RATES:
        rows.append(
            (f"{r:g}", f"{macs[r] / 1e6:.3f}", _accuracy(accuracy[r]),
             *(f"{profile.latency_ms(r, b):.3f}" for b in BATCH_SIZES))
        )
    common.print_table(
        f"bundle: test accuracy (LiteRT) and median latency ms per call "
        f"({FLAGS.threads} thread(s))",
        ["rate", "MMACs", "accuracy", *(f"b={b}" for b in BATCH_SIZES)],
        rows,
    )

    full_capacity = FLAGS.max_batch / (profile.latency_ms(1.0, FLAGS.max_batch) / 1e3)
    narrow_capacity = FLAGS.max_batch / (
        profile.latency_ms(RATES[-1], FLAGS.max_batch) / 1e3
    )
    results_dir = pathlib.Path(FLAGS.output).parent if FLAGS.output else common.RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    if FLAGS.trace:
        traces = json.loads(pathlib.Path(FLAGS.trace).read_text())
    else:
        average = FLAGS.load * full_capacity
        traces = {
            name: make_trace(name, average, FLAGS.seed + i)
            for i, name in enumerate(("bursty", "steady"))
        }
        trace_path = results_dir / "elastic_serving_trace.json"
        tmp_path = trace_path.with_suffix(".json.tmp")
        tmp_path.write_text(json.dumps(traces))
        tmp_path.replace(trace_path)
    average = traces["bursty"]["average_rate_per_s"]
    print(
        f"\ncapacity at batch {FLAGS.max_batch}: full {full_capacity:,.0f}/s, "
        f"narrowest {narrow_capacity:,.0f}/s; average arrival rate "
        f"{average:,.0f}/s, bursts at {FLAGS.peak:g}x = "
        f"{FLAGS.peak * average:,.0f}/s; deadline {traces['bursty']['slo_ms']:g} ms"
    )

    servers = {"full": [1.0], "narrowest": [RATES[-1]], "elastic": list(RATES)}
    results, bursty_runs = {}, {}
    rows = []
    for trace_name in ("bursty", "steady"):
        trace = traces[trace_name]
        requests = requests_of(trace, x_test)
        for name, rates in servers.items():
            responses, seconds = replay(name, bundle, profile, rates, requests)
            summary = summarize(trace, requests, responses, y_test, macs)
            summary["replay_wall_s"] = seconds
            results[f"{trace_name}/{name}"] = summary
            if trace_name == "bursty":
                bursty_runs[name] = responses
            rows.append(_row(trace_name, name, summary))
    if FLAGS.real_time_s > 0:
        trace = traces["bursty"]
        requests = requests_of(trace, x_test, seconds=FLAGS.real_time_s)
        for name in ("full", "elastic"):
            responses, _ = replay(
                name, bundle, profile, servers[name], requests, clock="real"
            )
            summary = summarize(trace, requests, responses, y_test, macs)
            results[f"bursty-real-time-{FLAGS.real_time_s:g}s/{name}"] = summary
            rows.append(_row(f"bursty, wall clock {FLAGS.real_time_s:g}s", name, summary))
    common.print_table(
        f"{len(traces['bursty']['arrival_s']):,} bursty / "
        f"{len(traces['steady']['arrival_s']):,} steady requests over "
        f"{FLAGS.duration_s:g} s, batches up to {FLAGS.max_batch}",
        ["trace", "server", "p50 ms", "p99 ms", "missed", "missed in bursts",
         "dropped", "accuracy", "acc. off-burst", "MMACs/req", "width mix 1/.75/.5/.25"],
        rows,
    )
    if FLAGS.live_s > 0:
        live_tests(bundle, profile, x_test, y_test, results, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    full = results["bursty/full"]
    elastic = results["bursty/elastic"]
    targets = {
        "elastic_miss_rate_le_1pct": elastic["miss_rate"] <= 0.01,
        "full_miss_rate_gt_20pct": full["miss_rate"] > 0.20,
        "nothing_dropped": all(
            r["dropped"] == 0 for r in results.values() if isinstance(r, dict)
            and "dropped" in r),
    }
    if y_test is not None:
        targets["steady_elastic_accuracy_within_1pt_of_full"] = (
            results["steady/full"]["accuracy"] - results["steady/elastic"]["accuracy"]
            <= 0.01
        )
    if FLAGS.live_s > 0:
        targets["live_api_elastic_miss_rate_le_1pct"] = (
            results["live-live API/elastic"]["miss_rate"] <= 0.01)
        targets["live_api_full_miss_rate_gt_20pct"] = (
            results["live-live API/full"]["miss_rate"] > 0.20)
        if "live-HTTP/elastic" in results:
            targets["http_elastic_miss_rate_le_1pct"] = (
                results["live-HTTP/elastic"]["miss_rate"] <= 0.01)
            targets["http_full_miss_rate_gt_20pct"] = (
                results["live-HTTP/full"]["miss_rate"] > 0.20)
        targets["live_nothing_failed"] = all(
            r.get("failed", 0) == 0 for k, r in results.items() if k.startswith("live-"))
    print("\ntargets met:", targets)
    png = results_dir / "elastic_serving.png"
    plot(png, traces["bursty"], bursty_runs, traces["bursty"]["slo_ms"])
    print(f"wrote {png}")
    common.write_json(
        "elastic_serving",
        {
            "machine": facts,
            "flags": {
                name: FLAGS[name].value
                for name in ("model", "cnn32_channels", "epochs", "seed", "load", "peak",
                             "burst_fraction", "burst_s", "slo_ms", "reserve_ms",
                             "duration_s", "real_time_s", "threads", "max_batch", "trace",
                             "live_s", "live_base_rate", "live_load", "live_rounds",
                             "live_slo_ms", "live_max_batch", "clients", "http_clients",
                             "http_procs", "cancel_fraction", "http_load", "http_load_scale",
                             "http_body")
            },
            "bundle": {
                f"{r:g}": {"macs": macs[r], "accuracy": accuracy[r]} for r in RATES
            },
            "profile": profile.to_dict(),
            "capacity_per_s": {"full": full_capacity, "narrowest": narrow_capacity},
            "results": results,
            "targets": targets,
            "train_s": trained - began,
            "total_s": time.perf_counter() - began,
        },
        FLAGS.output,
    )


def _row(trace_name, name, s):
    def pct(value):
        return "-" if value is None else f"{100 * value:.2f}%"

    return (
        trace_name, name, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}",
        pct(s["miss_rate"]), pct(s["miss_rate_in_bursts"]), s["dropped"],
        _accuracy(s["accuracy"]), _accuracy(s["accuracy_off_burst"]),
        f"{s['mean_macs'] / 1e6:.3f}",
        "/".join(f"{100 * s['width_mix'][f'{r:g}']:.0f}" for r in RATES),
    )


if __name__ == "__main__":
    app.run(main)
