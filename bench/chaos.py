"""Chaos: users clicking on ``gunicorn -w 4`` while processes are SIGKILLed or stopped.

    python bench/chaos.py [--users 20] [--seconds 30] [--every 2] [--spares N] [--max-processes N] [--busy]

Each user loads the page, opens its WebSocket and clicks, checking each answer's
count. Every ``--every`` seconds one of these is SIGKILLed at random: a user
process, a worker, the fork-server, its zygote; or the zygote is stopped (SIGSTOP)
or frozen (the cgroup freezer: it reads as running; as root only) for
:data:`STOPPED_FOR` seconds, longer than the fork-server waits for its answer;
or a user process is stopped for good (SIGSTOP, as a debugger
would: the server ends it once a click waited ``timeout_interaction``, here
:data:`TIMEOUT_INTERACTION`); or new code is deployed (the app's file touched, then
HUP to gunicorn's master: new workers, a new fork-server, the users' processes kept).
With ``--busy``, a process keeps every fork-server busy all along with a stream of stats
requests (as from many workers), each of which reads the zygotes' lines: what the loop reads
in one go piles up, as on a slow machine. Reported:

- clicks answered right;
- clicks lost without the user being told (must be 0): a wrong count in an answer,
  or a page state lost (seen again on the WebSocket's reconnection) with no error;
- WebSockets cut without a word (a worker killed, or replaced by a deploy: the browser
  sees only the connection drop, and htag's client reconnects), and whether the click in
  flight, if any, was done: one not yet read by the worker is gone with it (these users are
  not a browser: htagweb's addition to htag's client posts such a click again,
  htagweb/js/resend_cut_events.js);
- users told to reload (htag's error overlay or a close reason), who then do;
- after the fork-server or its zygote was killed, stopped or frozen, or a deploy, the time until a new user got a page again
  (apart, those that came while a zygote stopped or frozen by an earlier fault was still so: its forks wait);
- user processes left stopped at the end: none under a live fork-server; one stopped when its
  fork-server was killed keeps the SIGTERM of its death signal pending, and must end once resumed;
- processes and sockets left after the server's stop (must be 0);
- tracebacks in the server's log (must be 0: a fault handled is told in a line or two).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cgroups import Freezer, cgroup, unavailable  # noqa: E402
from servers import COUNTER_APP, ServerProcess, http_client, ws_connect  # noqa: E402

from htagweb import manage  # noqa: E402

#: every user of the bench comes from one address: its limit of new processes would refuse the reloads
OPTIONS = (
    "runtime_dir=RUNTIME_DIR, timeout_inactivity=0, new_processes_per_minute=0, max_connections_per_address=0, max_processes_per_address=0,"
    " timeout_interaction={timeout}"
)
#: the characters of a session id that name it in the server's logs and in ``htagweb ps``
SESSION_LABEL = 8
#: seconds a click may wait for a stopped user process before the server ends it
TIMEOUT_INTERACTION = 3
SOURCE = COUNTER_APP + f"\nfrom htagweb import WebServerWS\napp = WebServerWS(App, {OPTIONS.format(timeout=TIMEOUT_INTERACTION)})\n"
COUNT = re.compile(r"Count: (\d+)")
#: seconds a stopped zygote stays stopped (the fork-server gives up on it after 3)
STOPPED_FOR = 4.0


KINDS = ("user", "worker", "fork-server", "zygote", "zygote stopped", "zygote frozen", "user stopped", "deploy")


@dataclass
class Tally:
    right: int = 0
    lost_silently: int = 0
    told_to_reload: int = 0
    cut_done: int = 0
    cut_lost: int = 0
    cut_idle: int = 0
    page_failures: int = 0
    kills: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    #: (fault, seconds until a new user was served after it)
    recoveries: list[tuple[str, float]] = field(default_factory=list)
    #: user processes still stopped at the end, by what happened once resumed
    left_stopped: Counter[str] = field(default_factory=Counter)
    #: the sessions of users still clicking (those told to reload start a new one): their labels
    sessions: set[str] = field(default_factory=set)


async def page(url: str, tally: Tally, previous: str = "") -> tuple[str, int]:
    """A fresh page load until one is served, as a new session (that of ``previous`` left): (cookie, count shown)."""
    tally.sessions.discard(previous[:SESSION_LABEL])
    while True:
        try:
            async with http_client(url, timeout=30) as http:
                response = await http.get("/")
                if response.status_code == 200 and (match := COUNT.search(response.text)):
                    tally.sessions.add(http.cookies["htagweb_session"][:SESSION_LABEL])
                    return "; ".join(f"{k}={v}" for k, v in http.cookies.items()), int(match.group(1))
        except Exception:
            pass
        tally.page_failures += 1
        await asyncio.sleep(0.2)


def shown_count(message: dict) -> int | None:
    for html in message.get("updates", {}).values():
        if match := COUNT.search(html):
            return int(match.group(1))
    return None


async def user(url: str, until: float, tally: Tally) -> None:
    cookie, count = await page(url, tally)
    n = 0
    in_flight = reconnecting = False
    while time.monotonic() < until:
        try:
            async with ws_connect(url, cookie, open_timeout=30) as ws:
                first = json.loads(await asyncio.wait_for(ws.recv(), 30))
                state = shown_count(first)
                if reconnecting and state is not None:  # the page's state, as the user sees it again
                    if in_flight and state == count + 1:  # the click in flight was done, its answer cut
                        count += 1
                        tally.cut_done += 1
                    elif in_flight and state == count:  # it died with the worker that carried it
                        tally.cut_lost += 1
                    elif state == count:
                        tally.cut_idle += 1
                    else:  # the state was lost without a word
                        tally.lost_silently += 1
                        count = state
                in_flight = reconnecting = False
                while time.monotonic() < until:
                    n += 1
                    # a send on a connection already closed raises: that click never left
                    await ws.send(json.dumps({"id": "inc", "event": "click", "data": {"callback_id": str(n)}}))
                    in_flight = True
                    while True:
                        reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                        if reply.get("action") == "error":
                            raise Told(reply.get("traceback", ""))
                        if reply.get("callback_id") == str(n):
                            break
                    in_flight = False
                    if shown_count(reply) == count + 1:
                        tally.right += 1
                        count += 1
                    else:
                        tally.lost_silently += 1
                        count = shown_count(reply) or count
                    await asyncio.sleep(random.uniform(0.05, 0.2))
        except Told:
            tally.told_to_reload += 1
            cookie, count = await page(url, tally, session_of(cookie))
            in_flight = False
        except websockets.ConnectionClosed as closed:
            reason = closed.rcvd.reason if closed.rcvd else ""
            if "Reload" in reason:
                tally.told_to_reload += 1
                cookie, count = await page(url, tally, session_of(cookie))
                in_flight = False
            else:  # cut without a word (a worker killed): reconnect as htag's client does
                reconnecting = True
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake):  # a worker gone mid-handshake too
            reconnecting = True
            await asyncio.sleep(0.2)


class Told(Exception):
    pass


def session_of(cookie: str) -> str:
    """The session id at the start of the cookie's signed value (``htagweb_session=ID.…``)."""
    return cookie.partition("htagweb_session=")[2]


def title(process: psutil.Process) -> str:
    try:
        return " ".join(part for part in process.cmdline() if part)
    except psutil.Error:
        return ""


def clicking(srv: ServerProcess, sessions: set[str]) -> list[psutil.Process]:
    """The user processes of users still clicking (not those of users told to reload, left idle)."""
    try:
        listed = manage.users(srv.runtime_dir)
    except manage.ManageError:  # no fork-server now (one killed a moment ago)
        return []
    found = []
    for user in listed:
        if user.session in sessions:
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(user.pid))
    return found


def is_stopped(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_STOPPED
    except psutil.Error:  # ended meanwhile
        return False


async def resume_later(process: psutil.Process) -> None:
    await asyncio.sleep(STOPPED_FOR)
    try:
        process.resume()
    except psutil.NoSuchProcess:  # killed meanwhile (its fork-server's death takes it along)
        pass


async def thaw_later(freezer: Freezer) -> None:
    await asyncio.sleep(STOPPED_FOR)
    freezer.thaw()


async def chaos(srv: ServerProcess, until: float, every: float, tally: Tally, freezer: Freezer | None) -> None:
    master = psutil.Process(srv.proc.pid)
    stopped: list[asyncio.Task[None]] = []
    thawed: asyncio.Task[None] | None = None
    while time.monotonic() < until - every:
        await asyncio.sleep(every)
        processes = srv.processes()
        victims = {
            "user": [p for p in processes if title(p).startswith("htagweb user")],
            "worker": [p for p in master.children() if p.is_running()],
            "fork-server": [p for p in processes if title(p).startswith("htagweb fork-server")],
            "zygote": [p for p in processes if title(p).startswith("htagweb zygote")],
        }
        victims["zygote stopped"] = victims["zygote"]
        frozen_now = thawed is not None and not thawed.done()
        victims["zygote frozen"] = victims["zygote"] if freezer is not None and not frozen_now else []
        # stopped only while users still click: the server ends a stopped process once a click waited for it
        late = time.monotonic() > until - TIMEOUT_INTERACTION - 1
        victims["user stopped"] = [] if late else [p for p in clicking(srv, tally.sessions) if not is_stopped(p)]
        victims["deploy"] = [master]
        kind = random.choice([kind for kind, found in victims.items() if found])
        victim = random.choice(victims[kind])
        # a new user may wait for a zygote stopped or frozen by an earlier fault: told apart
        overlapping = any(not task.done() for task in stopped)
        try:
            if kind == "zygote stopped":
                victim.suspend()
                stopped.append(asyncio.create_task(resume_later(victim)))
            elif kind == "zygote frozen":
                assert freezer is not None
                freezer.freeze(victim.pid)
                thawed = asyncio.create_task(thaw_later(freezer))
                stopped.append(thawed)
            elif kind == "user stopped":
                victim.suspend()
            elif kind == "deploy":
                (srv.workdir / "srv.py").touch()  # new code: a new generation, a new fork-server
                victim.send_signal(signal.SIGHUP)
            else:
                victim.kill()
        except psutil.NoSuchProcess:  # it ended since it was listed (a fault before took it along)
            continue
        tally.kills[kind] += 1
        if kind.startswith(("fork-server", "zygote", "deploy")):
            start = time.monotonic()
            cookie, _ = await page(srv.url, tally)
            tally.sessions.discard(session_of(cookie)[:SESSION_LABEL])  # a newcomer who clicks nothing: not one to stop
            tally.recoveries.append((f"{kind} (a zygote stopped or frozen before)" if overlapping else kind, time.monotonic() - start))
    await asyncio.gather(*stopped)


def keep_busy(runtime_dir: Path, until: float) -> None:
    """Stats requests to each fork-server, in bursts, until ``until`` (a deploy starts a new one)."""
    lines: dict[Path, socket.socket] = {}
    answered = 0
    while time.monotonic() < until:
        for path in runtime_dir.glob("forkserver*.sock"):
            if path not in lines:
                try:
                    lines[path] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    lines[path].settimeout(10)
                    lines[path].connect(str(path))
                except OSError:  # gone meanwhile, or not yet listening
                    lines.pop(path).close()
                    continue
            try:
                lines[path].sendall(b'{"op": "stats"}\n' * 500)
                replies = 0
                while replies < 500:
                    chunk = lines[path].recv(1 << 20)
                    if not chunk:
                        raise ConnectionError
                    replies += chunk.count(b"\n")
                answered += replies
            except OSError:  # that fork-server ended (killed, or retired once its users left)
                lines.pop(path).close()
        time.sleep(0.001)
    for line in lines.values():
        line.close()
    print(f"stats requests answered meanwhile (--busy): {answered}")


async def scenario(srv: ServerProcess, users: int, seconds: float, every: float, freezer: Freezer | None) -> Tally:
    tally = Tally()
    until = time.monotonic() + seconds
    await asyncio.gather(chaos(srv, until, every, tally, freezer), *(user(srv.url, until, tally) for _ in range(users)))
    await asyncio.sleep(TIMEOUT_INTERACTION + 1)  # a process stopped last has had a click waiting since
    server_pids = {process.pid for process in srv.processes()}
    for process in srv.processes():
        if title(process).startswith("htagweb user") and is_stopped(process):
            # one whose fork-server died (killed) keeps the SIGTERM of its death signal pending: it ends once resumed
            orphaned = process.ppid() not in server_pids
            process.resume()
            try:
                process.wait(5)
                tally.left_stopped["orphaned, ended once resumed" if orphaned else "ended once resumed"] += 1
            except psutil.TimeoutExpired:
                tally.left_stopped["orphaned, alive once resumed" if orphaned else "alive once resumed"] += 1
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--every", type=float, default=2, help="seconds between two kills")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--spares", type=int, help="the server's spare_processes (default: its own): few, and new users need forks")
    parser.add_argument(
        "--max-processes", type=int, help="the server's max_processes (default: its own): under --users, users make room for each other"
    )
    parser.add_argument("--busy", action="store_true", help="keep every fork-server busy with stats requests all along")
    args = parser.parse_args()
    random.seed(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="hwc-"))
    options = {"spare_processes": args.spares, "max_processes": args.max_processes}
    given = "".join(f"{name}={value}, " for name, value in options.items() if value is not None)
    source = SOURCE.replace("(App, ", f"(App, {given}")
    srv = ServerProcess(source, workdir)
    with contextlib.ExitStack() as frozen:  # its cgroup goes once the server stopped
        cannot_freeze = unavailable("freezer")
        freezer = None if cannot_freeze else Freezer(*frozen.enter_context(cgroup("freezer")))
        if cannot_freeze:
            print(f"the zygote is not frozen among the faults: {cannot_freeze}")
        try:
            srv.start("-w", "4", "--graceful-timeout", "5", gunicorn=True)
            busy = multiprocessing.Process(target=keep_busy, args=(srv.runtime_dir, time.monotonic() + args.seconds))
            if args.busy:
                busy.start()
            tally = asyncio.run(scenario(srv, args.users, args.seconds, args.every, freezer))
            if args.busy:
                busy.join()
            srv.halt(signal.SIGTERM, group=False)  # raises if a process or a socket is left
            left = "0 processes, 0 sockets"
        except AssertionError as exc:
            left = f"LEFT: {exc}\n--- the server's log, its end ---\n" + "\n".join(srv.log.splitlines()[-80:])
        finally:
            if freezer is not None:
                freezer.thaw()
            try:
                srv.stop()
            except AssertionError:  # told above already
                pass
            tracebacks = srv.log.split("Traceback (most recent call last):")[1:]
            given_up = Counter(re.findall(r"its zygote is stuck \((it is stopped|no answer within)", srv.log))
            shutil.rmtree(workdir, ignore_errors=True)
    by_fault: dict[str, list[str]] = {}
    for kind, seconds in tally.recoveries:
        by_fault.setdefault(kind, []).append(f"{seconds:.2f}")
    recoveries = "; ".join(f"{kind} {', '.join(seconds)}" for kind, seconds in by_fault.items()) or "-"
    print(f"users {args.users}, {args.seconds:g} s, a kill every {args.every:g} s: {tally.kills}")
    print(f"clicks answered right: {tally.right}")
    print(f"clicks lost without the user being told: {tally.lost_silently}")
    print(f"users told to reload: {tally.told_to_reload}")
    print(
        "WebSockets cut without a word (a worker killed or replaced), state kept: "
        f"{tally.cut_done} with the click in flight done, {tally.cut_lost} with it lost, {tally.cut_idle} between clicks"
    )
    print(f"page loads refused or failed (retried): {tally.page_failures}")
    print(f"seconds until a new user was served after the fork-server's or the zygote's death or stop, or a deploy: {recoveries}")
    print(f"user processes left stopped at the end (must be 0 but for orphans that end once resumed): {dict(tally.left_stopped) or 0}")
    print(f"left after stop: {left}")
    # a fault the server handles is logged in a line or two; a traceback is one it did not expect
    print(f"zygotes given up by the fork-server: {given_up['it is stopped']} stopped, {given_up['no answer within']} not answering")
    print(f"tracebacks in the server's log (must be 0): {len(tracebacks)}")
    for traceback in tracebacks[:3]:
        print("Traceback (most recent call last):" + "\n".join(traceback.splitlines()[:40]))


if __name__ == "__main__":
    main()
