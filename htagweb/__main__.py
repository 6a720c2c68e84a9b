"""Command line.

- ``python -m htagweb [DIR | module:App] [options]``: a development server for the
  htag apps of a folder (the current one by default), or for one app.
- ``python -m htagweb kiosk URL --out FILE [--fingerprint FP]``: a kiosk bootstrap
  file pinning a parano server's identity key.
- ``python -m htagweb ps [--runtime-dir DIR]``: the live user processes of a server.
- ``python -m htagweb kill SESSION_PREFIX [--app APP] [--runtime-dir DIR]``: end some
  (their on_destroy runs).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from .config import Config


def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m htagweb",
        description="Serve the htag apps of a folder (an index page lists them), or one app, with htagweb: "
        "one process per user, server-side sessions. Edit an app and press F5 to run the new code.",
        epilog="Also: python -m htagweb kiosk URL --out FILE, to pin a parano server in a kiosk bootstrap file; "
        "python -m htagweb ps / kill SESSION_PREFIX, to see and end the user processes of a running server.",
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
        "--timeout-inactivity",
        type=float,
        default=Config.timeout_inactivity,
        metavar="S",
        help=f"destroy a user process idle for S seconds (default {Config.timeout_inactivity:g})",
    )
    parser.add_argument(
        "--timeout-interaction",
        type=float,
        default=Config.timeout_interaction,
        metavar="S",
        help=f"kill a user process whose handler (or an app's import) runs S seconds (default {Config.timeout_interaction:g})",
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

    app: WebServer
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


RUNTIME_DIR_HELP = "the server's runtime directory (its log names it: 'fork-server PID serving DIR'; default: $HTAGWEB_RUNTIME_DIR)"


def ps(argv: list[str]) -> int:
    from .manage import ManageError, users

    parser = argparse.ArgumentParser(prog="python -m htagweb ps", description="List the live user processes of a running server.")
    parser.add_argument("--runtime-dir", help=RUNTIME_DIR_HELP)
    args = parser.parse_args(argv)
    try:
        found = users(args.runtime_dir)
    except ManageError as exc:
        print(f"ps: {exc}", file=sys.stderr)
        return 1
    print(f"{'SESSION':<9} {'PID':>7} {'AGE':>8} {'IDLE':>8} {'RSS':>8}  {'STATE':<6} APP")
    for user in sorted(found, key=lambda user: user.age, reverse=True):
        rss = "?" if user.rss is None else f"{user.rss / 2**20:.1f}M"
        print(f"{user.session:<9} {user.pid:>7} {_duration(user.age):>8} {_duration(user.idle):>8} {rss:>8}  {user.state:<6} {user.app}")
    return 0


def kill(argv: list[str]) -> int:
    from .manage import ManageError
    from .manage import kill as end

    parser = argparse.ArgumentParser(
        prog="python -m htagweb kill", description="End the user processes of a session (on_destroy runs; the user is told to reload)."
    )
    parser.add_argument("session", help="the session's prefix, as 'ps' and the server's log show it")
    parser.add_argument("--app", help="only the process of this app (as 'ps' shows it)")
    parser.add_argument("--runtime-dir", help=RUNTIME_DIR_HELP)
    args = parser.parse_args(argv)
    try:
        ended = end(args.session, args.app, args.runtime_dir)
    except ManageError as exc:
        print(f"kill: {exc}", file=sys.stderr)
        return 1
    if not ended:
        print(f"kill: no live user process of a session starting with {args.session!r}", file=sys.stderr)
        return 1
    for user in ended:
        print(f"ending pid {user.pid}: session {user.session}, app {user.app}")
    return 0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


COMMANDS = {"kiosk": kiosk, "ps": ps, "kill": kill}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
