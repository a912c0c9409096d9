"""``lungdr serve``: the model bundle as an HTTP API (Ray Serve), blocking until Ctrl-C."""

from __future__ import annotations

import argparse

from lungdr.config import TOPOLOGIES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model bundle over HTTP with Ray Serve (see docs/SERVING.md)")
    p.add_argument("--bundle", required=True, help="model bundle: local folder or s3:// prefix")
    p.add_argument("--host", default=None, help="bind address (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default from config: 8000)")
    p.add_argument("--token-env", default=None,
                   help="name of the environment variable holding the bearer token (no token: open API)")
    p.add_argument("--config", default=None, help="lungdr YAML; its serve: section sets replicas, batching, limits")
    p.add_argument("--max-upload-mb", type=float, default=None)
    p.add_argument("--topology", choices=TOPOLOGIES, default=None,
                   help="composed (default): a deployment per model; single: the ingress runs the models itself "
                        "(no model hops: lowest latency on a small node)")
    p.add_argument("--address", default=None, help="Ray address to join (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--direct-ingress", action="store_true",
                   help="experimental (Ray 2.60): the ingress replica also serves HTTP on a port of its own, "
                        "skipping the proxy (~6 ms less per request here); its URL is printed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lungdr.scale.serve import serve_forever

    app_args = {"bundle_uri": args.bundle, "config": args.config, "token_env": args.token_env,
                "max_upload_mb": args.max_upload_mb, "topology": args.topology}
    serve_forever({k: v for k, v in app_args.items() if v is not None},
                  host=args.host, port=args.port, address=args.address, direct_ingress=args.direct_ingress)
    return 0
