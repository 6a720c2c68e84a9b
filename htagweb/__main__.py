"""Command line.

- ``python -m htagweb [DIR | module:App] [options]``: a development server for the
  htag apps of a folder (the current one by default), or for one app.
- ``python -m htagweb kiosk URL --out FILE [--fingerprint FP]``: a kiosk bootstrap
  file pinning a parano server's identity key.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path


def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m htagweb",
        description="Serve the htag apps of a folder (an index page lists them), or one app, with htagweb: "
        "one process per user, server-side sessions. Edit an app and press F5 to run the new code.",
        epilog="Also: python -m htagweb kiosk URL --out FILE, to pin a parano server in a kiosk bootstrap file.",
    )
    parser.add_argument("target", nargs="?", default=".", help="a folder (default: the current one), or module:App for one app on /")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--http-only", action="store_true", help="plain HTTP exchanges only: no WebSocket, no SSE")
    parser.add_argument("--parano", action="store_true", help="encrypt every exchange in the browser (see crypto/PROTOCOL.md)")
    parser.add_argument(
        "--debug", action=argparse.BooleanOptionalAction, default=True, help="tracebacks in error pages and htag's overlay (default: on)"
    )
    parser.add_argument(
        "--timeout-inactivity", type=float, default=600, metavar="S", help="destroy a user process idle for S seconds (default 600)"
    )
    parser.add_argument(
        "--timeout-interaction", type=float, default=60, metavar="S", help="kill a user process whose handler runs S seconds (default 60)"
    )
    args = parser.parse_args(argv)
    options = {
        "debug": args.debug,
        "parano": args.parano,
        "timeout_inactivity": args.timeout_inactivity,
        "timeout_interaction": args.timeout_interaction,
    }
    from .devserver import HtagServer
    from .server import WebServer, WebServerWS

    if os.path.isdir(args.target):
        app = HtagServer(args.target, http_only=args.http_only, **options)
    elif ":" in args.target:
        sys.path.insert(0, os.getcwd())
        module = args.target.partition(":")[0]
        if not _findable(module):  # else the server would start, and fail only at the first request
            parser.error(
                f"cannot find module {module!r} in {os.getcwd()}: run this from the folder that holds "
                f"{module.replace('.', '/')}.py, or serve that folder (python -m htagweb FOLDER)"
            )
        app = (WebServer if args.http_only else WebServerWS)(args.target, **options)
    else:
        parser.error(f"{args.target!r} is neither a folder nor module:App")
    app.run(host=args.host, port=args.port)
    return 0


def _findable(module: str) -> bool:
    """Whether ``module`` can be imported from here (found, not imported: the front never runs app code)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def kiosk(argv: list[str]) -> int:
    from .kiosk import KioskError, write_kiosk

    parser = argparse.ArgumentParser(
        prog="python -m htagweb kiosk", description="Write a kiosk bootstrap file pinning a parano server's identity key."
    )
    parser.add_argument("url", help="the app's URL on the parano server, e.g. http://192.168.1.10:8000/")
    parser.add_argument("--out", required=True, type=Path, help="the HTML file to write (open it from the kiosk's disk)")
    parser.add_argument("--fingerprint", help="the identity fingerprint the server logged at start-up (SHA256:...), checked before pinning")
    args = parser.parse_args(argv)
    try:
        pinned = write_kiosk(args.url, args.out, args.fingerprint)
    except (KioskError, OSError, ValueError) as exc:
        print(f"kiosk: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}, pinning {pinned}" + ("" if args.fingerprint else " (not checked: pass --fingerprint to be sure)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["kiosk"]:
        return kiosk(argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
