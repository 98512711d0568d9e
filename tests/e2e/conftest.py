"""End-to-end fixtures: the real `provider serve` process, driven over loopback HTTP.

``LiveServer`` starts ``.venv/bin/provider serve`` in its own process group (so that
uvicorn's worker processes die with it), waits until every worker has started and
``/healthz`` answers, and stops the whole group by PID: SIGTERM, then SIGKILL. Test
data is made with the real CLI (``provider users create --json``, ``provider clients
create --json``) against the same environment, which exercises the CLI as well.

Servers are package-scoped (``live_pg``, ``live_sqlite``: started once for tests/e2e
and stopped when it is done, so no idle connection pool outlives it) or module-scoped
where a test needs one of its own (key rotation). A test that must cross processes
starts two servers on two ports over one database (``ServerPair``) and sends each
request to a server of its choosing: nothing depends on how the OS spreads connections
over a server's workers.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from provider.services import build_services
from tests.conftest import make_settings, migrate
from tests.factories import DEFAULT_PASSWORD, Factory, unique_email
from tests.factories import TestClient as OAuthClient
from tests.factories import TestUser as User
from tests.smtp_sink import SmtpSink

# (Aliased: test modules importing the names `Test*` would make pytest try to collect
# them as test classes, and the collection warning is an error here.)

VENV_BIN = Path(sys.executable).parent
PROVIDER_BIN = VENV_BIN / "provider"
# A bound, not a measure: on a loaded machine a server's start-up takes many seconds.
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
CLI_TIMEOUT_S = 60.0
# Servers check their key store once a second, in the background (provider.keys.service).
KEYS_RECHECK_WAIT_S = 1.5
# Only plain HTTP is spoken, but every httpx client builds a TLS context (tens of ms,
# which adds up with a client per request): share one.
_TLS_CONTEXT = ssl.create_default_context()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """One ``provider serve`` process group on 127.0.0.1, plus the CLI in its environment."""

    def __init__(
        self,
        *,
        database_url: str,
        keys_dir: Path,
        rundir: Path,
        workers: int = 1,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.keys_dir = keys_dir
        self.workers = workers
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.issuer = self.base_url
        # A directory of its own as the working directory: no stray `.env` is read.
        self.rundir = rundir
        rundir.mkdir(parents=True, exist_ok=True)
        self.log_path = rundir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PROVIDER_") and k != "DATABASE_URL"}
        env.update({
            "DATABASE_URL": database_url,
            "PROVIDER_KEYS_DIR": str(keys_dir),
            "PROVIDER_ISSUER": self.issuer,
            "PROVIDER_ENV": "test",
            "PROVIDER_ARGON2_MEMORY_COST": "1024",
            "PROVIDER_ARGON2_TIME_COST": "1",
            # Every request of the e2e suite comes from 127.0.0.1, as every in-process
            # one does (tests/conftest.py): the per-address throttles would couple tests.
            # The throttle tests name their client addresses through a trusted proxy.
            "PROVIDER_LOGIN_THROTTLE_ADDRESS": "100000 per minute",
            "PROVIDER_CLIENT_AUTH_THROTTLE_ADDRESS": "100000 per minute",
            "PROVIDER_CODE_THROTTLE_ADDRESS": "100000 per minute",
            **(extra_env or {}),
        })
        self.env = env

    # --- process lifecycle -------------------------------------------------------------

    def start(self) -> LiveServer:
        args = [str(PROVIDER_BIN), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                args, cwd=self.rundir, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Every worker has run its lifespan and /healthz answers (bounded)."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(base_url=self.base_url, timeout=2.0, trust_env=False) as http:
            while True:
                if _has_exited(self.process.pid):
                    pytest.fail(f"provider serve exited early:\n{self.log()}")
                started = self.log().count("Application startup complete.")
                if started >= self.workers:
                    try:
                        if http.get("/healthz").status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                if time.monotonic() > deadline:
                    pytest.fail(f"provider serve not ready within {START_TIMEOUT_S:.0f} s:\n"
                                f"{self.log()}")
                time.sleep(0.05)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after STOP_TIMEOUT_S; then SIGKILL to
        whatever is left of the group (workers) while the exited supervisor is still
        unreaped, so that its PID, which is the group's id, cannot have been reused."""
        process, self.process = self.process, None
        if process is None:
            return
        if not _has_exited(process.pid):
            self._signal_group(process.pid, signal.SIGTERM)
            if not _wait_exited(process.pid, STOP_TIMEOUT_S):
                self._signal_group(process.pid, signal.SIGKILL)
                _wait_exited(process.pid, STOP_TIMEOUT_S)
        self._signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --- the CLI in the server's environment -------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cli_parallel([list(args)], check=check)[0]

    def cli_parallel(self, commands: list[list[str]],
                     check: bool = True) -> list[subprocess.CompletedProcess[str]]:
        """Run several CLI commands at once (each is a Python start-up: this halves the
        wait on two cores), each bounded in time."""
        processes = [
            subprocess.Popen(
                [str(PROVIDER_BIN), *args], cwd=self.rundir, env=self.env, text=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            for args in commands
        ]
        results = []
        for args, process in zip(commands, processes, strict=True):
            try:
                out, err = process.communicate(timeout=CLI_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
                err += f"\n(killed after {CLI_TIMEOUT_S:.0f} s)"
            results.append(subprocess.CompletedProcess(args, process.returncode, out, err))
        for result in results:
            if check and result.returncode != 0:
                pytest.fail(f"provider {' '.join(result.args)} exited with "
                            f"{result.returncode}:\n{result.stderr}{result.stdout}")
        return results

    def cli_json(self, *args: str) -> dict[str, Any]:
        return _one_json_object(self.cli(*args, "--json"))

    def create_account(self, *, client_name: str = "e2e",
                       scope: str = "openid profile email account",
                       password: str = DEFAULT_PASSWORD) -> tuple[User, OAuthClient]:
        """A verified user and a confidential password + refresh_token client, made with
        `provider users create` and `provider clients create` (run side by side)."""
        email = unique_email("e2e")
        user_out, client_out = self.cli_parallel([
            ["users", "create", "--email", email, "--password", password, "--verified",
             "--json"],
            ["clients", "create", "--name", client_name, "--first-party", "--grant", "password",
             "--grant", "refresh_token", "--scope", scope, "--json"],
        ])
        user, client = _one_json_object(user_out), _one_json_object(client_out)
        assert user == {"id": user["id"], "email": email}, user
        assert set(client) == {"client_id", "client_secret"}, client
        assert client["client_secret"], client
        return (User(user["id"], email, password, None),
                OAuthClient(client["client_id"], client["client_secret"]))

    # --- HTTP ----------------------------------------------------------------------------

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        """A new client (so new connections) for the server; plain HTTP on loopback.

        No keep-alive by default: on a loaded machine a request can go out on a connection
        the server is just closing for idleness (uvicorn: 5 s), and fail with a read error.
        """
        kwargs.setdefault("limits", httpx.Limits(max_keepalive_connections=0))
        return httpx.AsyncClient(base_url=self.base_url, timeout=30.0, trust_env=False,
                                 verify=_TLS_CONTEXT, **kwargs)


def _has_exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it (it stays a zombie)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _wait_exited(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _has_exited(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _one_json_object(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json printed other than one line: {result.stdout!r}"
    data: dict[str, Any] = json.loads(lines[0])
    return data


@pytest.fixture(scope="package")
def e2e_dir(workdir: Path) -> Path:
    path = workdir / f"e2e-{secrets.token_hex(3)}"
    path.mkdir()
    return path


@pytest.fixture(scope="package")
def live_pg(request: pytest.FixtureRequest, postgres_server: str | None, keys_dir: Path,
            e2e_dir: Path) -> Iterator[LiveServer]:
    """`provider serve --workers 2` on the session's migrated PostgreSQL database."""
    if postgres_server is None:
        pytest.skip("no PostgreSQL available")
    database_url = str(request.getfixturevalue("migrated"))
    assert database_url.startswith("postgres"), database_url
    with LiveServer(database_url=database_url, keys_dir=keys_dir,
                    rundir=e2e_dir / "pg", workers=2) as server:
        yield server


@pytest.fixture(scope="package")
def sqlite_e2e_url(e2e_dir: Path) -> str:
    """A fresh SQLite file of the e2e suite's own, migrated with Alembic."""
    url = f"sqlite:///{e2e_dir}/live.db"
    migrate(url)
    return url


@pytest.fixture(scope="package")
def live_sqlite(sqlite_e2e_url: str, keys_dir: Path, e2e_dir: Path) -> Iterator[LiveServer]:
    """`provider serve --workers 2` on its own migrated SQLite file."""
    with LiveServer(database_url=sqlite_e2e_url, keys_dir=keys_dir,
                    rundir=e2e_dir / "sqlite", workers=2) as server:
        yield server


@pytest.fixture(scope="package", params=["postgresql", "sqlite"])
def live(request: pytest.FixtureRequest) -> LiveServer:
    """Each live server in turn (PostgreSQL is skipped when there is none)."""
    name = "live_pg" if request.param == "postgresql" else "live_sqlite"
    server: LiveServer = request.getfixturevalue(name)
    return server


@pytest.fixture(scope="package")
def live_account(live: LiveServer) -> tuple[User, OAuthClient]:
    """A verified user and a confidential password/refresh client on ``live``, made with
    the CLI once per server (tests only add refresh families to them)."""
    return live.create_account()


@pytest.fixture(scope="module")
def private_keys_dir(keys_dir: Path, e2e_dir: Path) -> Path:
    """A copy of the session keys directory that a test may rotate freely."""
    target = e2e_dir / f"keys-{secrets.token_hex(3)}"
    shutil.copytree(keys_dir, target)
    return target



class ServerPair:
    """Two `provider serve` processes on two ports over one database and keys directory:
    requests are split between them by the test, so a race crosses processes for sure."""

    def __init__(self, database_url: str, keys_dir: Path, rundir: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        first = LiveServer(database_url=database_url, keys_dir=keys_dir, rundir=rundir / "a",
                           extra_env=extra_env)
        # One issuer for both, as behind a load balancer: each accepts the other's tokens.
        second = LiveServer(database_url=database_url, keys_dir=keys_dir, rundir=rundir / "b",
                            extra_env={**(extra_env or {}), "PROVIDER_ISSUER": first.issuer})
        second.issuer = first.issuer
        self.servers = (first, second)
        self.issuer = first.issuer

    def __getitem__(self, index: int) -> LiveServer:
        return self.servers[index % 2]

    def start(self) -> ServerPair:
        try:
            for server in self.servers:
                server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> ServerPair:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@pytest.fixture(scope="package")
def pair_pg(request: pytest.FixtureRequest, postgres_server: str | None, keys_dir: Path,
            e2e_dir: Path, mail_sink: SmtpSink) -> Iterator[ServerPair]:
    """Two servers on the session's migrated PostgreSQL database, mailing to the sink."""
    if postgres_server is None:
        pytest.skip("no PostgreSQL available")
    database_url = str(request.getfixturevalue("migrated"))
    with ServerPair(database_url, keys_dir, e2e_dir / "pair-pg",
                    {"PROVIDER_SMTP_URL": mail_sink.url}) as pair:
        yield pair


@pytest.fixture(scope="package")
def pair_sqlite(sqlite_e2e_url: str, keys_dir: Path, e2e_dir: Path,
                mail_sink: SmtpSink) -> Iterator[ServerPair]:
    """Two servers on the e2e suite's SQLite file, mailing to the sink."""
    with ServerPair(sqlite_e2e_url, keys_dir, e2e_dir / "pair-sqlite",
                    {"PROVIDER_SMTP_URL": mail_sink.url}) as pair:
        yield pair


@pytest.fixture(scope="package", params=["postgresql", "sqlite"])
def pair(request: pytest.FixtureRequest) -> ServerPair:
    """Each server pair in turn (PostgreSQL is skipped when there is none)."""
    name = "pair_pg" if request.param == "postgresql" else "pair_sqlite"
    server_pair: ServerPair = request.getfixturevalue(name)
    return server_pair


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def pair_factory(pair: ServerPair, keys_dir: Path) -> AsyncIterator[Factory]:
    """Test data made in-process, straight into the pair's database (fast enough to make
    a fresh user and client for each of many trials)."""
    services = build_services(make_settings(pair[0].database_url, keys_dir))
    try:
        yield Factory(services)
    finally:
        await services.engine.dispose()
