"""`qa-api`: serve the QA API and web form over one workdir's index.

It lives beside `infer-corpus` because it reads the same config file, every package's section
of it; the service itself is `qa_api.app`."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from inference.errors import UsageError, run_command
from inference.workdir import Workdir

from .config import load_config

EPILOG = """\
examples:
  qa-api --workdir demo-run                       # then open http://127.0.0.1:8000/
  qa-api --workdir runs/r1 --config configs/default.yaml --host 0.0.0.0 --port 8080
  curl -s localhost:8000/react -H 'content-type: application/json' \\
       -d '{"question": "How do tree rings record past climate?", "topic": "geoarchives"}'

The qa section of the config names the preset questions per topic, the answer models
(extractive, a local model, or OpenAI-compatible endpoints) and the API key variable: when
that variable (QA_API_KEY by default) is set, requests need the X-API-Key header.
API docs: /docs (OpenAPI at /openapi.json).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="qa-api", description="Serve question answering with cited sources, a search API "
        "and a web form over an infer-corpus workdir's index.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True,
                        help="a workdir that `infer-corpus run` (or `index`) has indexed")
    parser.add_argument("--config", help="YAML config (its qa section); default: built-in "
                        "defaults, as in configs/default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config option, e.g. "
                        "qa.default_model=smollm2 (repeatable)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a port number (0-65535)")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_command("qa-api", lambda: serve(args))


def serve(args: argparse.Namespace) -> int:
    """Check the config, the workdir and the port, load the index, then serve."""
    config = load_config(args.config, args.overrides)
    Workdir(args.workdir).manifest().require_partitioned()
    try:
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.bind((args.host, args.port))  # fail now, not after loading the models
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
    from qa_api.app import QAService, create_app
    from qa_api.guard import head_timeout_protocol

    try:
        service = QAService(args.workdir, config.qa)
        service.warm_up()
    except OSError as exc:
        raise UsageError(str(exc)) from None

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", force=True)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"qa-api: serving {args.workdir} ({len(service.topics)} topics); "
          f"open http://{shown}:{args.port}/ for the form, /docs for the API", flush=True)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning",
                http=head_timeout_protocol(config.qa.read_timeout_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
