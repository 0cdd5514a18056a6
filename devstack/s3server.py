"""moto's S3 service alone, on one port, without per-request logging.

``python -m moto.server`` serves every AWS service behind a dispatcher that works out the service from
each request's host (scanning moto's module directories on every request) and logs every request line.
Here only S3 is needed, so this serves moto's S3 application directly, with moto's own request handler
(it keeps the original spelling of ``x-amz-meta-*`` header names, as S3 does). Same S3 implementation,
about half the CPU per request (``bench/pipeline.py`` shares two cores with it).

The local S3 server is SeaweedFS (``devstack.services.start_s3``); this one keeps objects in memory and
accepts any credentials, and only the benches start it, to show the two side by side.

    python -m devstack.s3server --port 9000 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

#: The first line printed: the URL it listens on.
READY_PREFIX = "S3 server (moto) listening on "


class QuietRequestHandler(MotoRequestHandler):
    """Errors are still logged; the line per request is not."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0: a free port, printed once bound")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Bound here, then printed: a port the parent picked could be taken by someone else in between.
    server = make_server(
        args.host, args.port, create_backend_app("s3"), threaded=True, request_handler=QuietRequestHandler
    )
    print(f"{READY_PREFIX}http://{args.host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
