"""Commands of the api package: `cellgap serve` and `cellgap bench api`."""
from __future__ import annotations

import argparse
from pathlib import Path

from cellgap.core.clitools import add_device_option, positive_int


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1..65535, got {value}")
    return value


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add `serve` to the top-level commands and `api` to the `bench` commands."""
    serve = commands.add_parser(
        "serve", help="serve a trained run over REST (/v1/predict, /v1/evaluate, /v1/models, /healthz, /readyz, /metrics)",
        description="Load a trained run once and serve predictions and metrics over HTTP. Other settings come from "
                    "CELLGAP_* environment variables (see docs/api.md): CELLGAP_API_KEY, CELLGAP_MAX_BODY_BYTES, "
                    "CELLGAP_MAX_IMAGE_PIXELS, CELLGAP_BATCH_SIZE, CELLGAP_QUEUE_SIZE, CELLGAP_HEADER_TIMEOUT_S, "
                    "CELLGAP_BODY_TIMEOUT_S, CELLGAP_MAX_CONNECTIONS, ...")
    serve.add_argument("--run", type=Path, metavar="RUN_DIR",
                       help="trained run folder (default: CELLGAP_RUN_DIR; neither: /v1/evaluate only)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    serve.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: CELLGAP_DEVICE, else auto)")
    serve.add_argument("--threads", type=positive_int, help="CPU threads of the model (default: CELLGAP_THREADS, "
                                                            "else torch's default)")
    serve.add_argument("--slides-root", type=Path, metavar="DIR",
                       help="folder of slides /v1/predict/region reads (default: CELLGAP_SLIDES_ROOT; neither: off)")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                       help="default: CELLGAP_LOG_LEVEL, else info")
    serve.set_defaults(handler=run_serve)

    api = bench.add_parser(
        "api", help="HTTP latency and throughput of the served model against in-process prediction",
        description="Start the real server on loopback, then measure in-process predict latency for one tile, HTTP "
                    "p50/p95 for the same tile, and throughput with 1 and 8 concurrent clients against in-process "
                    "batch throughput.")
    api.add_argument("--run", type=Path, metavar="RUN_DIR", required=True, help="trained run folder")
    add_device_option(api)
    api.add_argument("--threads", type=positive_int, help="CPU threads of the model, in-process and in the server")
    api.add_argument("--requests", type=positive_int, default=40, help="timed requests per measurement (default 40)")
    api.add_argument("--clients", type=positive_int, default=8, help="concurrent clients of the throughput run (default 8)")
    api.add_argument("--port", type=_port, help="loopback port (default: a free one)")
    api.add_argument("--json", type=Path, metavar="OUT", help="also write the table as JSON")
    api.set_defaults(handler=run_bench)


def run_serve(args: argparse.Namespace) -> int:
    """Validate the settings, load the run (errors: one line, exit 2), then serve until stopped."""
    import logging

    import uvicorn
    from pydantic import ValidationError

    from cellgap.api.app import create_app
    from cellgap.api.errors import ApiError
    from cellgap.api.server import uvicorn_config
    from cellgap.api.service import load_predictor
    from cellgap.api.settings import Settings

    overrides = {k: v for k, v in (("run_dir", args.run), ("device", args.device), ("threads", args.threads),
                                   ("slides_root", args.slides_root), ("log_level", args.log_level)) if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        raise ApiError(f"invalid CELLGAP_* setting: {error.errors()[0]['loc']}: {error.errors()[0]['msg']}") from None
    logging.getLogger("cellgap").setLevel(settings.log_level.upper())
    if settings.run_dir is None:  # evaluate only: the app says so at startup and answers predict with 501
        app = create_app(settings)
    else:
        predictor = load_predictor(settings)  # before binding the port: a bad run is one line and exit 2
        app = create_app(settings, predictor_factory=lambda _: predictor)
    server = uvicorn.Server(uvicorn_config(app, settings, host=args.host, port=args.port))
    server.run()
    return 0 if server.started else 3  # uvicorn's exit code when it cannot start (it logged why: port in use, ...)


def run_bench(args: argparse.Namespace) -> int:
    from cellgap.api.bench import run_benchmark

    return run_benchmark(args)
