"""The fork-server: the one process that creates, watches and ends user processes.

Forked from the first worker that needs it (so it already holds htag, starlette
and the app classes, even an app defined in ``__main__``), then detached. Any
worker of the server talks to it through ``forkserver.sock`` with one JSON line
per request (:mod:`.messages`), answered in order; being a single process, it can
never spawn two processes for one user. It ends every user process and removes
every socket when the last worker says ``bye`` (server stop), or
``orphan_grace`` seconds after the last worker vanished without a word; its user
processes end with it if it is killed. It forks nothing itself: its zygote, a
quiet copy of it made once it is warm, forks every process on its behalf.

One module per job:

- :mod:`.loop`: the request loop and reaping;
- :mod:`.listener`: where workers connect, paused when no descriptor is left;
- :mod:`.lines`: the connections from workers, requests in and replies out in order;
- :mod:`.users`: the user processes, by pid and by session, and why recent ones ended;
- :mod:`.children`: the processes as objects (``is_alive``, ``terminate``,
  ``abort``, ``kill``, ``join``) and how every child is forked;
- :mod:`.zygote`: the process that forks them, and the line to it;
- :mod:`.zygotes`: the current zygote and the older ones, started again when one dies;
- :mod:`.imports`: an app named by a string, imported in a next zygote;
- :mod:`.spares`: the pool of spare user processes;
- :mod:`.watchdogs`: hung handlers, memory and open-files limits;
- :mod:`.loader`: what a user process runs (imported before the zygote, or in a next one), and when a development app is stale;
- :mod:`.daemon`: starting it, detached, from a worker.
"""

from .daemon import start

__all__ = ["start"]
