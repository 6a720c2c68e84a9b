"""Command line: ``python -m htagweb kiosk URL --out FILE [--fingerprint FP]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def kiosk(argv: list[str]) -> int:
    from .kiosk import KioskError, write_kiosk

    parser = argparse.ArgumentParser(
        prog="python -m htagweb kiosk", description="Write a kiosk bootstrap file pinning a parano server's identity key."
    )
    parser.add_argument("url", help="the app's URL on the parano server, e.g. http://192.168.1.10:8000/")
    parser.add_argument("--out", required=True, type=Path, help="the HTML file to write (open it from the kiosk's disk)")
    parser.add_argument("--fingerprint", help="the identity fingerprint the server logged at start-up (SHA256:...): checked before pinning")
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
    print("usage: python -m htagweb kiosk URL --out FILE [--fingerprint FP]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
