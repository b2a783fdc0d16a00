"""Elastic serving under bursts: fixed widths against the ElasticServer.

Trains a sliced CNN on scikit-learn's digits, exports it as a TFLite bundle,
profiles every width with keras_slicing_lite on this machine, and replays two
seeded, recorded arrival traces against three servers that share the same
queue and dynamic batching:
(a) full width fixed, (b) narrowest width fixed, (c) the ElasticServer.
- "bursty": Poisson arrivals whose rate peaks at 10x the trace's average
  (short bursts on a low base), every request due `slo_ms` after arrival.
- "steady": Poisson arrivals at the same average rate, no bursts: accuracy
  "at average load".
Replays run on the simulated clock, each batch costing a latency drawn
(seeded) from the calls measured by the profile, so a batch can overrun its
plan and the numbers are reproducible; `--real_time_s` also replays the start
of the bursty trace on the wall clock as a check.

Then the live load test (`--live_s` seconds per server, 0 to skip): a
wall-clock bursty trace (`--live_base_rate` per second, bursts of `--peak`x
for 0.4 s every 2.5 s; the full width's profiled capacity is printed beside) sent by `--clients` client threads
through `ElasticServer.submit` and through HTTP (`HTTPFrontEnd` on
127.0.0.1), with `--cancel_fraction` of the clients giving up at once
(cancelling the future; closing the connection unread). Reported per server:
p50/p99 latency, missed deadlines, rejected (full queue), dropped (never
answered nor failed within the timeout), accuracy.

Targets: elastic deadline misses <= 1% where full width misses > 20% on the
bursty trace (simulated and live API); elastic accuracy within 1 point of
full width on the steady trace; no request dropped, no hang. Prints tables,
writes benchmarks/results/elastic_serving.json, the trace, and a PNG of
width and latency over time.

    python benchmarks/elastic_serving.py [--epochs 40] [--load 0.4]
        [--slo_ms 20] [--reserve_ms 5] [--duration_s 20] [--threads 1]
        [--real_time_s 6] [--live_s 6] [--live_base_rate 250] [--clients 4]
        [--cancel_fraction 0.05]
        [--trace PATH] [--output PATH]
"""

import concurrent.futures
import http.client
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

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
flags.DEFINE_float("live_base_rate", 250.0, "Live API base arrival rate per "
                   "second (bursts at --peak x). Absolute, not a fraction of the "
                   "profiled capacity: on a shared machine that estimate moves "
                   "2-3x between runs, and in-process Python clients submit a "
                   "few thousand requests per second at most.")
flags.DEFINE_float("live_slo_ms", 50.0, "Deadline of live requests.")
flags.DEFINE_integer("live_max_batch", 32, "Largest batch of the live servers.")
flags.DEFINE_integer("http_clients", 32, "Concurrent HTTP connections.")
flags.DEFINE_integer("clients", 4, "Client threads of the live tests.")
flags.DEFINE_float("cancel_fraction", 0.05, "Fraction of live requests whose "
                   "client gives up right after sending.")
flags.DEFINE_float("http_load_scale", 0.1, "HTTP trace rate relative to the "
                   "live API trace (an HTTP request costs far more CPU: about "
                   "10 ms of a shared core here, client and server together).")
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
        "accuracy": float(correct.mean()),
        "accuracy_off_burst": mean(correct[~burst]),
        "accuracy_in_bursts": mean(correct[burst]),
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


def live_arrivals(base_rate, seconds, seed):
    """Poisson arrivals at `base_rate`/s with `peak`x bursts of 0.4 s every 2.5 s."""
    rng = np.random.default_rng(seed)
    segments, t = [], 0.0
    while t < seconds:
        burst = t + 1.05
        segments += [(t, burst, base_rate), (burst, burst + 0.4, FLAGS.peak * base_rate),
                     (burst + 0.4, t + 2.5, base_rate)]
        t += 2.5
    times, in_burst = [], []
    for start, end, rate in segments:
        end = min(end, seconds)
        if end <= start:
            continue
        count = rng.poisson(rate * (end - start))
        times.append(np.sort(rng.uniform(start, end, count)))
        in_burst.append(np.full(count, rate > base_rate))
    order = np.argsort(np.concatenate(times), kind="stable")
    return np.concatenate(times)[order], np.concatenate(in_burst)[order]


def _pace(origin, at):
    wait = at - (time.perf_counter() - origin)
    if wait > 0:
        time.sleep(wait)


def live_api_run(bundle, profile, rates, arrivals, x, seed):
    """Clients submit through `ElasticServer.submit` on the wall clock."""
    server = lite.ElasticServer(
        bundle, profile, rates=rates, max_batch_size=FLAGS.live_max_batch,
        clock="real", reserve_ms=FLAGS.reserve_ms, max_queue=4096,
    ).start()
    outcome = [None] * len(arrivals)
    origin = time.perf_counter()

    def client(k):
        rng = np.random.default_rng(seed + k)
        for i in range(k, len(arrivals), FLAGS.clients):
            _pace(origin, arrivals[i])
            try:
                future = server.submit(x[i], deadline_ms=FLAGS.live_slo_ms)
            except lite.QueueFullError:
                outcome[i] = "rejected"
                continue
            if rng.random() < FLAGS.cancel_fraction and future.cancel():
                outcome[i] = "cancelled"
            else:
                outcome[i] = future

    threads = [threading.Thread(target=client, args=(k,)) for k in range(FLAGS.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    futures = [o for o in outcome if isinstance(o, concurrent.futures.Future)]
    concurrent.futures.wait(futures, timeout=30)
    server.stop(timeout=10)
    records = []
    for o in outcome:
        if isinstance(o, str):
            records.append(o)
        elif not o.done():
            records.append("dropped")
        elif o.exception() is not None:
            records.append("failed")
        else:
            r = o.result()
            records.append((r.latency_ms, r.late, r.prediction, r.rate))
    return records, time.perf_counter() - origin


def live_http_run(bundle, profile, rates, arrivals, x, seed):
    """Open-loop HTTP clients: each request sent at its arrival time.

    The server is `keras-slicing-lite serve` in its own process (as
    deployed), reusing the profile cached beside the bundle; only the
    clients run here.
    """
    command = [
        sys.executable, "-m", "keras_slicing_lite", "serve", str(bundle.path),
        "--port", "0", "--rates", ",".join(f"{r:g}" for r in rates),
        "--max_batch_size", str(FLAGS.live_max_batch), "--max_queue", "4096",
        "--reserve_ms", str(FLAGS.reserve_ms), "--num_threads", str(FLAGS.threads),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    if "serving" not in line:
        process.kill()
        raise RuntimeError(f"keras-slicing-lite serve did not start: {line!r}")
    host, port = line.rsplit("http://", 1)[1].strip().split(":")
    port = int(port)
    local = threading.local()
    rng = np.random.default_rng(seed)
    cancel = rng.random(len(arrivals)) < FLAGS.cancel_fraction
    records = [None] * len(arrivals)
    client_errors = []

    def call(i, sent):
        # Bytes, so that http.client sends headers and body in one write.
        body = json.dumps({"input": x[i].tolist(), "deadline_ms": FLAGS.live_slo_ms}).encode()
        if cancel[i]:
            # A client that gives up: sends, then closes without reading.
            connection = http.client.HTTPConnection(host, port, timeout=30)
            connection.request("POST", "/predict", body)
            connection.close()
            records[i] = "cancelled"
            return
        if getattr(local, "connection", None) is None:
            local.connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            local.connection.request("POST", "/predict", body)
            response = local.connection.getresponse()
            answer = json.loads(response.read())
        except (OSError, http.client.HTTPException) as error:
            local.connection = None
            records[i] = "dropped"
            client_errors.append(repr(error))
            return
        if response.status == 503 and "queue is full" in answer.get("error", ""):
            records[i] = "rejected"
        elif response.status != 200:
            records[i] = "failed"
        else:
            latency = (time.perf_counter() - sent) * 1e3
            late = answer["late"] or latency > FLAGS.live_slo_ms
            records[i] = (latency, late, answer["prediction"], answer["rate"])

    origin = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(FLAGS.http_clients) as pool:
        for i, at in enumerate(arrivals):
            _pace(origin, at)
            # Latency counts from the scheduled arrival: a request waiting
            # for a free client connection is waiting for the service.
            pool.submit(call, i, origin + at)
    seconds = time.perf_counter() - origin
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    if client_errors:
        print(f"  HTTP client errors ({len(client_errors)}): {client_errors[:3]}")
    return [r if r is not None else "dropped" for r in records], seconds


def summarize_live(records, labels, in_burst, seconds):
    answered = [(i, r) for i, r in enumerate(records) if isinstance(r, tuple)]
    counts = {k: sum(r == k for r in records) for k in
              ("cancelled", "rejected", "failed", "dropped")}
    latency = np.array([r[0] for _, r in answered])
    late = np.array([r[1] for _, r in answered])
    correct = np.array([r[2] == labels[i] for i, r in answered])
    burst = np.array([in_burst[i] for i, _ in answered], bool)
    rates = np.array([r[3] for _, r in answered])
    return {
        "requests": len(records),
        "answered": len(answered),
        **counts,
        "wall_s": seconds,
        "p50_ms": float(np.percentile(latency, 50)),
        "p99_ms": float(np.percentile(latency, 99)),
        # Missed among requests that were to be answered (not cancelled).
        "miss_rate": float((late.sum() + counts["rejected"] + counts["failed"]
                            + counts["dropped"]) / max(1, len(records) - counts["cancelled"])),
        "miss_rate_in_bursts": float(late[burst].mean()) if burst.any() else None,
        "accuracy": float(correct.mean()),
        "width_mix": {f"{r:g}": float(np.mean(rates == r)) for r in RATES},
    }


def live_tests(bundle, profile, x_test, y_test, results):
    capacity = FLAGS.live_max_batch / (
        profile.latency_ms(1.0, FLAGS.live_max_batch) / 1e3
    )
    base = FLAGS.live_base_rate
    servers = {"full": [1.0], "narrowest": [RATES[-1]], "elastic": list(RATES)}
    rows = []
    for path, scale, runner in (("live API", 1.0, live_api_run),
                                ("HTTP", FLAGS.http_load_scale, live_http_run)):
        arrivals, in_burst = live_arrivals(base * scale, FLAGS.live_s, FLAGS.seed + 7)
        pick = np.random.default_rng(FLAGS.seed).integers(0, len(x_test), len(arrivals))
        x, labels = x_test[pick], y_test[pick]
        print(f"\n{path}: {len(arrivals):,} requests in {FLAGS.live_s:g} s, base "
              f"{base * scale:,.0f}/s, bursts {FLAGS.peak * base * scale:,.0f}/s "
              f"(full width capacity {capacity:,.0f}/s at batch "
              f"{FLAGS.live_max_batch}), deadline {FLAGS.live_slo_ms:g} ms")
        for name, rates in servers.items():
            records, seconds = runner(bundle, profile, rates, arrivals, x, FLAGS.seed)
            summary = summarize_live(records, labels, in_burst, seconds)
            summary["base_rate_per_s"] = base * scale
            results[f"live-{path}/{name}"] = summary
            rows.append((
                path, name, summary["requests"], f"{summary['p50_ms']:.2f}",
                f"{summary['p99_ms']:.2f}", f"{100 * summary['miss_rate']:.2f}%",
                summary["cancelled"], summary["rejected"], summary["dropped"],
                summary["failed"], f"{summary['accuracy']:.4f}",
                "/".join(f"{100 * summary['width_mix'][f'{r:g}']:.0f}" for r in RATES),
            ))
    common.print_table(
        f"live, wall clock: {FLAGS.clients} API client threads / "
        f"{FLAGS.http_clients} HTTP connections, {100 * FLAGS.cancel_fraction:g}% "
        "of clients cancel",
        ["path", "server", "requests", "p50 ms", "p99 ms", "missed", "cancelled",
         "rejected", "dropped", "failed", "accuracy", "width mix 1/.75/.5/.25"],
        rows,
    )


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
    x_train, x_test, y_train, y_test = digits_split(FLAGS.seed)
    model = build_model(FLAGS.seed)
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, epochs=FLAGS.epochs, batch_size=64, verbose=0)
    trained = time.perf_counter()

    tmp = tempfile.mkdtemp()
    bundle_dir = pathlib.Path(tmp) / "digits_bundle"
    keras_slicing.export_tflite(
        model, bundle_dir, rates=RATES, evaluation_data=(x_test, y_test)
    )
    bundle = lite.load_bundle(bundle_dir, num_threads=FLAGS.threads)
    # Cached beside the bundle, where the HTTP server process finds it.
    profile = bundle.profile(batch_sizes=BATCH_SIZES, repeats=30, cache=True)
    macs = {r: bundle.rate_entry(r)["macs"] for r in RATES}
    accuracy = {r: bundle.rate_entry(r)["accuracy"] for r in RATES}
    rows = []
    for r in RATES:
        rows.append(
            (f"{r:g}", f"{macs[r] / 1e6:.3f}", f"{accuracy[r]:.4f}",
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
        live_tests(bundle, profile, x_test, y_test, results)
    shutil.rmtree(tmp, ignore_errors=True)
    full = results["bursty/full"]
    elastic = results["bursty/elastic"]
    targets = {
        "elastic_miss_rate_le_1pct": elastic["miss_rate"] <= 0.01,
        "full_miss_rate_gt_20pct": full["miss_rate"] > 0.20,
        "steady_elastic_accuracy_within_1pt_of_full": (
            results["steady/full"]["accuracy"] - results["steady/elastic"]["accuracy"]
            <= 0.01
        ),
        "nothing_dropped": all(r["dropped"] == 0 for r in results.values()),
    }
    if FLAGS.live_s > 0:
        targets["live_api_elastic_miss_rate_le_1pct"] = (
            results["live-live API/elastic"]["miss_rate"] <= 0.01)
        targets["live_api_full_miss_rate_gt_20pct"] = (
            results["live-live API/full"]["miss_rate"] > 0.20)
        targets["live_nothing_failed"] = all(
            r.get("failed", 0) == 0 for r in results.values())
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
                for name in ("epochs", "seed", "load", "peak", "burst_fraction",
                             "burst_s", "slo_ms", "reserve_ms", "duration_s", "real_time_s",
                             "threads", "max_batch", "trace", "live_s", "live_base_rate",
                             "live_slo_ms", "live_max_batch", "clients", "http_clients",
                             "cancel_fraction", "http_load_scale")
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
        f"{s['accuracy']:.4f}",
        "-" if s["accuracy_off_burst"] is None else f"{s['accuracy_off_burst']:.4f}",
        f"{s['mean_macs'] / 1e6:.3f}",
        "/".join(f"{100 * s['width_mix'][f'{r:g}']:.0f}" for r in RATES),
    )


if __name__ == "__main__":
    app.run(main)
