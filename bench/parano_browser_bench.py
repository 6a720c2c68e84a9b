"""Parano mode in real Chromium, per crypto backend: python bench/parano_browser_bench.py [--quick]

The same counter app on a plain server and on a parano server, clicked in headless
Chromium (WebSocket transport), three ways in alternating rounds:

- plain htagweb, opened as http://lanbox.test:PORT (plain HTTP to a LAN host name);
- parano, opened as http://127.0.0.1:PORT: a secure context, WebCrypto;
- parano, opened as http://lanbox.test:PORT: no WebCrypto there, the noble bundle.

Measured in the page (performance.now): a click's round trip, from the click to the
count updated in the DOM; the time spent in the crypto backend's operations per click
(every operation of the backend timed while the clicks run); a key exchange (the
``/_htagweb/kx`` round trip, ECDH and signature check) and its crypto alone; and the
noble bundle's size, raw and gzipped.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from chromium import LAN_HOST, LAN_RULE, chromium  # noqa: E402
from servers import Server, percentile, report  # noqa: E402

from htagweb.pages import fallback_bundle  # noqa: E402

ARGS = ("--ws-per-message-deflate", "false")  # as parano servers run (bench/RESULTS.md, parano section)
# new_processes_per_minute=0, max_connections_per_address=0, max_processes_per_address=0: every user of a bench comes from 127.0.0.1
SOURCE = (
    "\nfrom htagweb import WebServerWS\n"
    "app = WebServerWS(App, runtime_dir=RUNTIME_DIR, new_processes_per_minute=0, max_connections_per_address=0,"
    " max_processes_per_address=0{})\n"
)

# every operation of the page's crypto backend, timed into window.cryptoMs
INSTRUMENT = """() => {
    const backend = window.htagwebParano.backend;
    window.cryptoMs = 0;
    for (const name of Object.keys(backend)) {
        if (typeof backend[name] !== "function") continue;
        const real = backend[name];
        backend[name] = async function () {
            const start = performance.now();
            try { return await real.apply(this, arguments); } finally { window.cryptoMs += performance.now() - start; }
        };
    }
    return backend.name;
}"""

# n clicks, each timed from the click to the new count in the DOM
CLICKS = """async (n) => {
    const times = [];
    const cryptoBefore = window.cryptoMs || 0;
    for (let i = 0; i < n; i++) {
        const want = "Count: " + (Number(document.getElementById("count").textContent.split(": ")[1]) + 1);
        const start = performance.now();
        await new Promise((resolve, reject) => {
            const observer = new MutationObserver(() => {  // htag may replace <body> itself: watch the whole document
                if (document.getElementById("count").textContent === want) { observer.disconnect(); resolve(); }
            });
            observer.observe(document.documentElement, {subtree: true, childList: true, characterData: true});
            document.getElementById("inc").click();
            setTimeout(() => reject(new Error("no update within 10 s")), 10000);
        });
        times.push(performance.now() - start);
    }
    return {times: times, cryptoMs: (window.cryptoMs || 0) - cryptoBefore};
}"""

KEY_EXCHANGE = """async () => {
    const before = window.cryptoMs, start = performance.now();
    await window.htagwebParano.renew();
    return {totalMs: performance.now() - start, cryptoMs: window.cryptoMs - before};
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rounds, per_round = (5, 20) if args.quick else (20, 25)
    bundle = fallback_bundle()
    if bundle is None:
        sys.exit("the noble bundle is not built: pip install -e . with Node.js and npm")
    results: dict[str, float] = {
        "bundle_bytes": len(bundle.script),
        "bundle_gzip_bytes": len(gzip.compress(bundle.script, 9)),
    }
    with Server(SOURCE.format(""), *ARGS) as plain, Server(SOURCE.format(", parano=True"), *ARGS) as parano, chromium(LAN_RULE) as browser:
        pages = {}
        for name, url in (
            ("plain", f"http://{LAN_HOST}:{plain.port}/"),
            ("webcrypto", f"http://127.0.0.1:{parano.port}/"),
            ("noble", f"http://{LAN_HOST}:{parano.port}/"),
        ):
            page = browser.new_context().new_page()
            start = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("#count")
            results[f"{name}_first_load_ms"] = (time.perf_counter() - start) * 1000
            if name != "plain":
                assert page.evaluate(INSTRUMENT) == name
            page.evaluate(CLICKS, 20)  # warm-up
            pages[name] = page
        times: dict[str, list[float]] = {name: [] for name in pages}
        crypto: dict[str, float] = {name: 0.0 for name in pages}
        for _ in range(rounds):
            for name, page in pages.items():
                measured = page.evaluate(CLICKS, per_round)
                times[name] += measured["times"]
                crypto[name] += measured["cryptoMs"]
        for name in ("webcrypto", "noble"):
            exchanges = [pages[name].evaluate(KEY_EXCHANGE) for _ in range(5 if args.quick else 20)]
            results[f"{name}_key_exchange_p50_ms"] = percentile([e["totalMs"] for e in exchanges], 50)
            results[f"{name}_key_exchange_crypto_p50_ms"] = percentile([e["cryptoMs"] for e in exchanges], 50)
    for name, values in times.items():
        results[f"{name}_click_p50_ms"] = percentile(values, 50)
        results[f"{name}_click_p99_ms"] = percentile(values, 99)
        if name != "plain":
            results[f"{name}_crypto_per_click_ms"] = crypto[name] / len(values)
            results[f"{name}_click_p50_overhead_pct"] = (results[f"{name}_click_p50_ms"] / results["plain_click_p50_ms"] - 1) * 100
    report(results, args.json)


if __name__ == "__main__":
    main()
