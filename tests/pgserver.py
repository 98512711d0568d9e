"""Provision a PostgreSQL server for the test suite.

    from tests.pgserver import provision_postgres, create_database, drop_database

    with provision_postgres() as server_url:      # str | None
        if server_url is not None:
            url = create_database(server_url, "provider_test_ab12")
            ...
            drop_database(server_url, "provider_test_ab12")

``provision_postgres()`` yields, in this order of preference:

1. ``$PROVIDER_TEST_DATABASE_URL`` when set (CI). The database named in it is only the
   one connected to for ``CREATE DATABASE``; the suite makes its own per run.
2. A throwaway cluster started with the machine's ``initdb``/``pg_ctl`` (found on
   PATH or in ``/usr/lib/postgresql/*/bin``): a temp dir, a free port on 127.0.0.1
   only, durability off for speed, trust auth. As root (initdb refuses to run as
   root) it runs as the ``postgres`` system user. Yields
   ``postgresql://postgres@127.0.0.1:PORT/postgres``. It is stopped (``-m immediate``)
   and deleted when the context exits, also on exceptions; a watchdog process stops
   it too should the test process be killed outright.
3. ``None`` when neither can be had. ``LAST_ERROR`` then says why.

``throwaway_postgres()`` always starts a cluster of its own (never the one named by
``$PROVIDER_TEST_DATABASE_URL``), for tests that stop, restart or freeze it
(``stop_server``, ``start_server``, ``freeze``, ``thaw``).

``python -m tests.pgserver`` is a smoke test: provision, create and drop a database,
print the URL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

ENV_URL = "PROVIDER_TEST_DATABASE_URL"
START_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 10

# Why the last provision_postgres() yielded None (for the caller's skip message).
LAST_ERROR: str | None = None

_T = TypeVar("_T")
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "log_min_messages": "warning",
}


class ProvisionError(Exception):
    pass


# --------------------------------------------------------------------------- public API


@contextlib.contextmanager
def provision_postgres() -> Iterator[str | None]:
    """Yield a PostgreSQL server URL (pointing at a maintenance database) or None."""
    global LAST_ERROR
    LAST_ERROR = None
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        yield url
        return
    try:
        cluster = ThrowawayCluster.start()
    except ProvisionError as exc:
        LAST_ERROR = str(exc)
        yield None
        return
    except Exception as exc:  # anything else: no PostgreSQL, not a crash
        LAST_ERROR = f"{type(exc).__name__}: {exc}"
        yield None
        return
    try:
        yield cluster.url
    finally:
        cluster.stop()


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[ThrowawayCluster]:
    """A cluster of the caller's own, stopped and deleted on exit (ProvisionError when
    none can be started). Never the shared server: this one may be stopped and frozen."""
    cluster = ThrowawayCluster.start()
    try:
        yield cluster
    finally:
        cluster.thaw()
        cluster.stop()


def create_database(server_url: str, name: str) -> str:
    """CREATE DATABASE ``name`` on the server; return the new database's URL."""
    ident = _quote_ident(name)

    async def create() -> None:
        conn = await _connect(server_url)
        try:
            # template0 accepts no connections, so parallel runs never collide on it.
            await conn.execute(f"CREATE DATABASE {ident} TEMPLATE template0")
        finally:
            await conn.close()

    _run_sync(create)
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """DROP DATABASE IF EXISTS ``name`` WITH (FORCE), disconnecting its sessions."""
    ident = _quote_ident(name)

    async def drop() -> None:
        conn = await _connect(server_url)
        try:
            if conn.get_server_version().major >= 13:
                await conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
            else:  # pragma: no cover - servers older than 13
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    name,
                )
                await conn.execute(f"DROP DATABASE IF EXISTS {ident}")
        finally:
            await conn.close()

    _run_sync(drop)


def database_url(server_url: str, name: str) -> str:
    """``server_url`` with its database replaced by ``name`` (scheme and query kept)."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


# ------------------------------------------------------------------------------ helpers


def _quote_ident(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"not a plain database name: {name!r}")
    return f'"{name}"'


def _asyncpg_dsn(url: str) -> str:
    """asyncpg wants postgresql://; accept SQLAlchemy's postgresql+asyncpg:// too."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return urlunsplit(parts._replace(scheme=scheme))


async def _connect(url: str) -> Any:
    import asyncpg  # type: ignore[import-untyped]

    return await asyncpg.connect(_asyncpg_dsn(url), timeout=CONNECT_TIMEOUT_S)


def _run_sync(fn: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine in a fresh event loop, even if this thread already runs one."""

    async def main() -> _T:
        return await fn()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


# For test code that must run a coroutine from sync code, inside a test loop or not.
run_sync = _run_sync


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _version_key(path: str) -> tuple[int, ...]:
    nums = re.findall(r"\d+", path)
    return tuple(int(n) for n in nums)


def _find_bindir() -> Path | None:
    """A directory holding initdb, pg_ctl and postgres (PATH first, then Debian's)."""
    candidates: list[Path] = []
    for tool in ("initdb", "pg_ctl"):
        found = shutil.which(tool)
        if found:
            candidates.append(Path(os.path.realpath(found)).parent)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates.extend(Path(d) for d in debian)
    for d in candidates:
        if all(os.access(d / t, os.X_OK) for t in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _run_as_prefix() -> tuple[list[str], int | None, int | None]:
    """Command prefix to drop root, plus the uid/gid to chown the temp dir to."""
    if os.geteuid() != 0:
        return [], None, None
    import pwd

    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise ProvisionError(
            "running as root (initdb refuses) and there is no 'postgres' system user"
        ) from None
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid
    setpriv = shutil.which("setpriv")
    if setpriv:
        return (
            [setpriv, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"],
            pw.pw_uid,
            pw.pw_gid,
        )
    raise ProvisionError("running as root and neither runuser nor setpriv is available")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _stop_and_remove(tmpdir: str, stop_cmd: Sequence[str]) -> None:
    """Stop the cluster in ``tmpdir`` (if running) and delete ``tmpdir``.

    Shared by the normal exit path and the watchdog; stdlib only.
    """
    pidfile = os.path.join(tmpdir, "data", "postmaster.pid")
    pid: int | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(pidfile) as f:
            pid = int(f.readline().strip())
    if pid is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                list(stop_cmd),
                cwd=tmpdir,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
                check=False,
            )
        # Belt and braces: if the postmaster is somehow still there, kill it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(tmpdir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


# ---------------------------------------------------------------------- the cluster


@dataclass
class ThrowawayCluster:
    tmpdir: str
    prefix: list[str]
    bindir: Path
    port: int = 0
    watchdog: subprocess.Popen[bytes] | None = None
    stopped: bool = field(default=False)
    frozen: list[int] = field(default_factory=list)

    @property
    def datadir(self) -> str:
        return os.path.join(self.tmpdir, "data")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _stop_cmd(self) -> list[str]:
        return [
            *self.prefix,
            str(self.bindir / "pg_ctl"),
            "-D",
            self.datadir,
            "-m",
            "immediate",
            "-w",
            "-t",
            "20",
            "stop",
        ]

    @classmethod
    def start(cls) -> ThrowawayCluster:
        bindir = _find_bindir()
        if bindir is None:
            raise ProvisionError("no initdb/pg_ctl found on PATH or in /usr/lib/postgresql")
        prefix, uid, gid = _run_as_prefix()
        # As root, the temp dir must be reachable by the postgres user, which a
        # TMPDIR under /root would not be.
        base = "/tmp" if os.geteuid() == 0 and os.path.isdir("/tmp") else None  # noqa: S108
        tmpdir = tempfile.mkdtemp(prefix="provider-pg-", dir=base)
        self = cls(tmpdir=tmpdir, prefix=prefix, bindir=bindir)
        try:
            if uid is not None and gid is not None:
                os.chown(tmpdir, uid, gid)
            self._start_watchdog()
            self._initdb()
            last: ProvisionError | None = None
            for _ in range(3):  # a free port can be taken between probe and bind
                self.port = _free_port()
                try:
                    self._pg_ctl_start()
                    self._wait_ready()
                    return self
                except ProvisionError as exc:
                    last = exc
                    self._stop_server_only()
            assert last is not None
            raise last
        except BaseException:
            self.stop()
            raise

    # -- steps

    def _run(self, args: Sequence[str], what: str, timeout: float) -> None:
        try:
            proc = subprocess.run(
                [*self.prefix, *args],
                cwd=self.tmpdir,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ProvisionError(f"{what} failed: {exc}") from exc
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).decode(errors="replace").strip()
            raise ProvisionError(f"{what} failed (exit {proc.returncode}): {out[-2000:]}")

    def _initdb(self) -> None:
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                self.datadir,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
            timeout=120,
        )

    def _write_settings(self, settings: dict[str, str]) -> None:
        # postgresql.auto.conf is read last; root may write it, the owner stays postgres.
        path = os.path.join(self.datadir, "postgresql.auto.conf")
        with open(path, "w") as f:
            f.write("# written by tests/pgserver.py\n")
            for key, value in settings.items():
                f.write(f"{key} = {value}\n")

    def _pg_ctl_start(self) -> None:
        self._write_settings(
            {
                **_SERVER_SETTINGS,
                "port": str(self.port),
                "unix_socket_directories": f"'{self.tmpdir}'",
            }
        )
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                self.datadir,
                "-l",
                os.path.join(self.tmpdir, "postgres.log"),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
            ],
            "pg_ctl start",
            timeout=START_TIMEOUT_S + 10,
        )

    def _wait_ready(self) -> None:
        async def probe() -> None:
            conn = await _connect(self.url)
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                _run_sync(probe)
                return
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise ProvisionError(f"server on port {self.port} not ready: {exc}") from exc
                time.sleep(0.2)

    def _start_watchdog(self) -> None:
        """A detached process that stops and deletes the cluster once we are gone.

        It waits for EOF on its stdin, which happens when this process closes the
        pipe (normal stop) or dies in any way, SIGKILL included.
        """
        self.watchdog = subprocess.Popen(
            [
                sys.executable,
                "-I",  # isolated: no script dir on sys.path, no PYTHON* variables
                os.path.abspath(__file__),
                "--watchdog",
                self.tmpdir,
                *self._stop_cmd(),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # survives a kill of our process group
            env=_clean_env(),
        )

    def _stop_server_only(self) -> None:
        pidfile = os.path.join(self.datadir, "postmaster.pid")
        if os.path.exists(pidfile):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    self._stop_cmd(),
                    cwd=self.tmpdir,
                    env=_clean_env(),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=30,
                    check=False,
                )

    # -- faults (for tests of database outages)

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(os.path.join(self.datadir, "postmaster.pid")) as f:
                return int(f.readline().strip())
        return None

    def stop_server(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast|immediate|smart``, waiting until it is down."""
        self._run([str(self.bindir / "pg_ctl"), "-D", self.datadir, "-m", mode, "-w",
                   "-t", "20", "stop"], "pg_ctl stop", timeout=30)

    def start_server(self, *, wait: bool = True) -> None:
        """Start it again on the same port; ``wait=False`` returns while it may still be
        starting up (answering 57P03)."""
        if wait:
            self._pg_ctl_start()
            return
        self._write_settings({**_SERVER_SETTINGS, "port": str(self.port),
                              "unix_socket_directories": f"'{self.tmpdir}'"})
        self._run([str(self.bindir / "pg_ctl"), "-D", self.datadir, "-l",
                   os.path.join(self.tmpdir, "postgres.log"), "-W", "start"],
                  "pg_ctl start", timeout=30)

    def _processes(self) -> list[int]:
        """The postmaster and its children (the backends and auxiliary processes)."""
        postmaster = self.postmaster_pid()
        if postmaster is None:
            return []
        children = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat") as f:
                    # pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid == postmaster:
                    children.append(int(entry))
        return [postmaster, *children]

    def freeze(self) -> None:
        """SIGSTOP the whole server: connections are accepted by the kernel and then
        nothing answers, as with a hung host."""
        self.frozen = self._processes()
        for pid in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in reversed(self.frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        _stop_and_remove(self.tmpdir, self._stop_cmd())
        if self.watchdog is not None:
            with contextlib.suppress(OSError):
                if self.watchdog.stdin is not None:
                    self.watchdog.stdin.close()
            try:
                self.watchdog.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()
                self.watchdog.wait()


# ------------------------------------------------------------------------ entry points


def _watchdog_main(argv: list[str]) -> int:
    tmpdir, stop_cmd = argv[0], argv[1:]
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(65536):
            pass
    _stop_and_remove(tmpdir, stop_cmd)
    return 0


def _smoke() -> int:
    import secrets

    async def check(url: str) -> str:
        conn = await _connect(url)
        try:
            return str(await conn.fetchval("SELECT current_database()"))
        finally:
            await conn.close()

    with provision_postgres() as server_url:
        if server_url is None:
            print(f"no PostgreSQL available: {LAST_ERROR}", file=sys.stderr)
            return 1
        name = f"pgserver_smoke_{secrets.token_hex(4)}"
        db_url = create_database(server_url, name)
        try:
            got = _run_sync(lambda: check(db_url))
            if got != name:
                print(f"connected to {got!r}, expected {name!r}", file=sys.stderr)
                return 1
        finally:
            drop_database(server_url, name)
        print(f"server: {server_url}")
        print(f"created, used and dropped: {db_url}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--watchdog"]:
        sys.exit(_watchdog_main(sys.argv[2:]))
    sys.exit(_smoke())
