"""The `keras-slicing-lite` command: inspect a bundle, serve it over HTTP.

    keras-slicing-lite info BUNDLE
    keras-slicing-lite serve BUNDLE [--port 8000] [--host 127.0.0.1]
        [--rates 1,0.5] [--deadline_ms MS] [--max_queue 1024] [--max_batch_size N]
        [--num_threads 1] [--reserve_ms 0] [--max_body_bytes 4194304]
        [--request_timeout_s 30] [--read_timeout_s 10] [--max_connections 256]
        [--model_name NAME] [--front asgi|stdlib] [--drain_s 5] [--verbose]

`serve` loads and verifies the bundle, profiles every width on this device
(cached beside the bundle), starts an `ElasticServer` on the wall clock and
answers HTTP (docs/http-api.md) until interrupted (Ctrl-C or SIGTERM), then
drains the queue for up to `--drain_s` seconds. The front end is the
standard library's (`--front stdlib`, measured to hold the latency better,
docs/http-api.md) or uvicorn's (`--front asgi`, the `serve` extra). A bundle or argument that cannot serve ends the command with one
line on stderr and exit status 1.
"""

import argparse
import signal
import sys
import threading

from keras_slicing_lite.bundle import load_bundle
from keras_slicing_lite.elastic_server import ElasticServer
from keras_slicing_lite.http_api import DEFAULT_MAX_BODY_BYTES
from keras_slicing_lite.http_server import HTTPFrontEnd
from keras_slicing_lite.manifest import BundleError
from keras_slicing_lite.transport import DEFAULT_MAX_CONNECTIONS
from keras_slicing_lite.transport import DEFAULT_READ_TIMEOUT_S

FRONTS = ("asgi", "stdlib")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-slicing-lite",
        description="Inspect or serve a keras-slicing TFLite bundle, choosing "
        "the width of every batch to meet request deadlines.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="verify BUNDLE and print its widths")
    info.add_argument("bundle", help="bundle directory (holding manifest.json)")
    serve = commands.add_parser("serve", help="serve BUNDLE over HTTP")
    serve.add_argument("bundle", help="bundle directory (holding manifest.json)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    serve.add_argument("--rates", default=None,
                       help="comma-separated rates the server may use "
                       "(default: all; one rate gives a fixed-width server)")
    serve.add_argument("--deadline_ms", type=float, default=None,
                       help="deadline of requests that name none (default: none)")
    serve.add_argument("--max_queue", type=int, default=1024,
                       help="most waiting examples; beyond it 503 (default 1024)")
    serve.add_argument("--max_batch_size", type=int, default=None,
                       help="most requests per model call (default: largest profiled)")
    serve.add_argument("--num_threads", type=int, default=1,
                       help="interpreter threads (default 1)")
    serve.add_argument("--reserve_ms", type=float, default=0.0,
                       help="slack to plan before each deadline (default 0)")
    serve.add_argument("--max_body_bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                       help="largest request body (default 4 MiB)")
    serve.add_argument("--request_timeout_s", type=float, default=30.0,
                       help="most seconds a request waits for its answer (default 30)")
    serve.add_argument("--read_timeout_s", type=float, default=DEFAULT_READ_TIMEOUT_S,
                       help="most seconds to receive a request's head, then its body "
                       "(default 10)")
    serve.add_argument("--max_connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                       help="most open connections; beyond it 503 (default 256)")
    serve.add_argument("--model_name", default=None,
                       help="model name in /v2/models/NAME (default: the manifest's)")
    serve.add_argument("--front", choices=FRONTS, default="stdlib",
                       help="HTTP front end: the standard library's (default) or "
                       "uvicorn's (needs the serve extra)")
    serve.add_argument("--drain_s", type=float, default=5.0,
                       help="seconds to answer queued requests on shutdown (default 5)")
    serve.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    name = f"keras-slicing-lite {args.command}"
    try:
        if args.command == "info":
            return _info(args)
        return _serve(args, name)
    except (BundleError, ValueError, OSError, ImportError, RecursionError) as error:
        print(f"{name}: error: {_one_line(error)}", file=sys.stderr)
        return 1


def _info(args):
    bundle = load_bundle(args.bundle)
    manifest = bundle.manifest
    print(f"{args.bundle}: {manifest.get('model_name', '?')}, output_kind "
          f"{bundle.output_kind}, input {list(bundle.input_shape)} {bundle.input_dtype}, "
          f"output {list(bundle.output_shape)}")
    for rate in bundle.rates:
        entry = bundle.rate_entry(rate)
        value = entry.get(bundle.metric)
        print(f"  rate {rate:g}: {entry['file']}, {entry['bytes']} bytes, "
              f"{entry.get('macs')} MACs, {bundle.metric} {value}")
    return 0


def _serve(args, name):
    front_class = _front_class(args.front)
    rates = None
    if args.rates:
        try:
            rates = [float(r) for r in args.rates.split(",")]
        except ValueError:
            raise ValueError(
                f"--rates must be comma-separated numbers. Received: {args.rates!r}"
            ) from None
    bundle = load_bundle(args.bundle, num_threads=args.num_threads)
    print(f"profiling {bundle} on this device...", file=sys.stderr, flush=True)
    server = ElasticServer(
        bundle,
        rates=rates,
        clock="real",
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        reserve_ms=args.reserve_ms,
    ).start()
    try:
        front = front_class(
            server,
            host=args.host,
            port=args.port,
            default_deadline_ms=args.deadline_ms,
            max_body_bytes=args.max_body_bytes,
            request_timeout_s=args.request_timeout_s,
            read_timeout_s=args.read_timeout_s,
            max_connections=args.max_connections,
            model_name=args.model_name,
            verbose=args.verbose,
        )
    except BaseException:
        server.stop(timeout=0)
        raise
    stopping = threading.Event()

    def stop(*_):
        stopping.set()

    # The front end serves on its own thread; the main thread only waits
    # for a signal, then stops the front end and drains the queue.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    front.start()
    print(f"serving {args.bundle} on {front.url}", flush=True)
    while not stopping.wait(0.5):
        pass
    front.shutdown()
    drained = server.stop(timeout=args.drain_s)
    print(f"stopped ({'drained' if drained else 'queue not drained'})", file=sys.stderr)
    return 0


def _front_class(front):
    if front == "stdlib":
        return HTTPFrontEnd
    try:
        from keras_slicing_lite.asgi_server import ASGIFrontEnd
    except ImportError as error:
        raise ImportError(
            f"--front asgi needs uvicorn and starlette ({error}); install "
            "them with pip install 'keras-slicing-lite[serve]'."
        ) from None
    return ASGIFrontEnd


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
