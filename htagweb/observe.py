"""``/_htagweb/health`` for load balancers and ``/_htagweb/metrics`` for Prometheus.

Both ask the fork-server, the one place that sees every user process and every
worker's counts, and those of older code generations (after a reload, their users stay);
neither says anything about a particular session.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .client import ForkServerClient
from .metrics import COUNTERS


class Observability:
    def __init__(self, client: ForkServerClient) -> None:
        self.client = client

    async def health(self, request: Request) -> Response:
        try:
            stats = await self.client.stats()
        except (OSError, ValueError) as exc:
            return JSONResponse({"status": "unavailable", "reason": f"fork-server: {exc}"}, status_code=503)
        return JSONResponse({"status": "ok", "user_processes": stats["processes"]})

    async def metrics(self, request: Request) -> Response:
        stats = await self.client.stats()
        lines = [
            "# HELP htagweb_user_processes Live user processes.",
            "# TYPE htagweb_user_processes gauge",
            f"htagweb_user_processes {stats['processes']}",
            "# HELP htagweb_max_processes The max_processes setting.",
            "# TYPE htagweb_max_processes gauge",
            f"htagweb_max_processes {stats['max_processes']}",
            "# HELP htagweb_spare_processes User processes forked ahead of need, ready for new users.",
            "# TYPE htagweb_spare_processes gauge",
            f"htagweb_spare_processes {stats['spares']}",
            "# HELP htagweb_starting_processes User processes asked of the zygote, not forked yet (a zygote slow to answer holds them).",
            "# TYPE htagweb_starting_processes gauge",
            f"htagweb_starting_processes {stats['starting']}",
            "# HELP htagweb_provisional_processes User processes whose page never went live (the first to make room).",
            "# TYPE htagweb_provisional_processes gauge",
            f"htagweb_provisional_processes {stats['provisional']}",
            "# HELP htagweb_busy_processes User processes running a handler.",
            "# TYPE htagweb_busy_processes gauge",
            f"htagweb_busy_processes {stats['busy']}",
        ]
        for name, value in stats["counters"].items():
            metric = f"htagweb_{name}_total"
            lines += [f"# HELP {metric} {COUNTERS[name]}", f"# TYPE {metric} counter", f"{metric} {value}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
