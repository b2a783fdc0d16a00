"""The `keras-slicing-lite` command: serve a bundle over HTTP.

    keras-slicing-lite serve BUNDLE [--port 8000] [--host 127.0.0.1]
        [--rates 1,0.5] [--deadline_ms MS] [--max_queue 1024] [--max_batch_size N]
        [--num_threads 1] [--reserve_ms 0] [--max_body_bytes 4194304]
        [--request_timeout_s 30] [--drain_s 5] [--verbose]

Loads and verifies the bundle, profiles every width on this device (cached
beside the bundle), starts an `ElasticServer` on the wall clock and answers
`POST /predict`, `GET /health` and `GET /stats` until interrupted (Ctrl-C
or SIGTERM), then drains the queue for up to `--drain_s` seconds.
"""

import argparse
import signal
import sys
import threading

from keras_slicing_lite.bundle import load_bundle
from keras_slicing_lite.elastic_server import ElasticServer
from keras_slicing_lite.http_server import DEFAULT_MAX_BODY_BYTES
from keras_slicing_lite.http_server import HTTPFrontEnd
from keras_slicing_lite.manifest import BundleError


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-slicing-lite",
        description="Serve a keras-slicing TFLite bundle, choosing the width "
        "of every batch to meet request deadlines.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve BUNDLE over HTTP/JSON")
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
                       help="most waiting requests; beyond it 503 (default 1024)")
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
    serve.add_argument("--drain_s", type=float, default=5.0,
                       help="seconds to answer queued requests on shutdown (default 5)")
    serve.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        bundle = load_bundle(args.bundle, num_threads=args.num_threads)
        print(f"profiling {bundle} on this device...", file=sys.stderr, flush=True)
        rates = None
        if args.rates:
            try:
                rates = [float(r) for r in args.rates.split(",")]
            except ValueError:
                raise ValueError(
                    f"--rates must be comma-separated numbers. Received: {args.rates!r}"
                ) from None
        server = ElasticServer(
            bundle,
            rates=rates,
            clock="real",
            max_batch_size=args.max_batch_size,
            max_queue=args.max_queue,
            reserve_ms=args.reserve_ms,
        ).start()
        front = HTTPFrontEnd(
            server,
            host=args.host,
            port=args.port,
            default_deadline_ms=args.deadline_ms,
            max_body_bytes=args.max_body_bytes,
            request_timeout_s=args.request_timeout_s,
            verbose=args.verbose,
        )
    except (BundleError, ValueError, OSError) as error:
        print(f"keras-slicing-lite serve: error: {error}", file=sys.stderr)
        return 1
    print(f"serving {args.bundle} on {front.url}", flush=True)

    def stop(*_):
        # shutdown() waits for serve_forever to return: not on its thread.
        threading.Thread(target=front.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        front.serve_forever()
    except KeyboardInterrupt:
        front.shutdown()
    drained = server.stop(timeout=args.drain_s)
    print(f"stopped ({'drained' if drained else 'queue not drained'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
