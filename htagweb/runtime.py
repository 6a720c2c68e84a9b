"""The private runtime directory shared by every worker of one server.

Workers of one server (gunicorn ``-w``, uvicorn ``--workers``) are separate
processes that never talk to each other: they meet here. The directory holds
the fork-server socket, one socket per user process, the session database and
the server secret. It must be private (0700, owned by us) because whoever can
connect to a user socket can drive that user's app.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

SECRET_ENV = "HTAGWEB_SECRET"
RUNTIME_DIR_ENV = "HTAGWEB_RUNTIME_DIR"
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, NUL included


class RuntimeDirError(RuntimeError):
    pass


def default_runtime_dir(identity: str) -> Path:
    """A directory name every worker of the same server computes alike.

    Workers compute it independently, so it can only depend on what they share:
    the working directory and the served app.
    """
    if os.environ.get(RUNTIME_DIR_ENV):
        return Path(os.environ[RUNTIME_DIR_ENV])
    digest = hashlib.sha256(f"{os.getcwd()}\0{identity}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"htagweb-{os.getuid()}-{digest}"


def forkserver_sockets(folder: Path) -> list[Path]:
    return sorted(folder.glob("forkserver*.sock"))


class Runtime:
    def __init__(self, path: Path | str, secret: str | bytes | None = None) -> None:
        self.path = Path(path).absolute()
        if len(str(self.user_socket_path("x" * 32))) > _UNIX_PATH_MAX:
            raise RuntimeDirError(f"runtime directory path too long for Unix sockets: {self.path}")
        self._ensure_private_dir(self.path)
        self._ensure_private_dir(self.users_dir)
        #: the current secret first, then older ones still accepted (rotation)
        self.secrets = [part.strip() for part in self._load_secret(secret).split(b",") if part.strip()]
        self.secret = self.secrets[0]
        #: the code generation of this worker (see htagweb.generation), once known: its fork-server's socket depends on it
        self.generation = ""

    @property
    def users_dir(self) -> Path:
        return self.path / "u"

    @property
    def forkserver_socket(self) -> Path:
        """The socket of the fork-server of this worker's code generation."""
        return self.path / (f"forkserver-{self.generation}.sock" if self.generation else "forkserver.sock")

    def forkserver_sockets(self) -> list[Path]:
        """The sockets of every fork-server of this directory (one per code generation)."""
        return forkserver_sockets(self.path)

    @property
    def forkserver_lock(self) -> Path:
        return self.path / "forkserver.lock"

    @property
    def identity_path(self) -> Path:
        return self.path / "identity.pem"

    @property
    def sqlite_path(self) -> Path:
        return self.path / "sessions.sqlite3"

    def process_key(self, session_id: str, app_name: str) -> str:
        """Keyed hash naming the process of (session, app).

        Keyed so that a directory listing reveals no session id.
        """
        msg = f"{session_id}\0{app_name}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()[:32]

    def user_socket_path(self, key: str) -> Path:
        return self.users_dir / f"{key}.sock"

    def _load_secret(self, secret: str | bytes | None) -> bytes:
        secret = secret or os.environ.get(SECRET_ENV)
        if secret:
            return secret.encode() if isinstance(secret, str) else secret
        key_file = self.path / "secret.key"
        if not key_file.exists():
            # written aside then linked: concurrent workers never read a partial key
            tmp = self.path / f".secret.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_hex(32).encode())
            try:
                os.link(tmp, key_file)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return key_file.read_bytes()

    @staticmethod
    def _ensure_private_dir(path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise RuntimeDirError(f"{path} is not a directory owned by uid {os.getuid()}")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise RuntimeDirError(f"{path} must not be accessible to other users (mode {oct(stat.S_IMODE(st.st_mode))}, want 0700)")
