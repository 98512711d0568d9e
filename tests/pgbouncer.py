"""Debian's PgBouncer in transaction mode, in front of a throwaway PostgreSQL cluster
(tests.pgserver), for tests of provider behind a pooler.

    with throwaway_postgres() as cluster, PgBouncer(cluster, "provider_db") as bouncer:
        bouncer.url  # postgresql://postgres@127.0.0.1:PORT/provider_db

It listens on a free loopback port, trusts the local user, and multiplexes its clients
over ``pool_size`` server connections: between two transactions a server connection
serves any client. It runs as the cluster's owner (PgBouncer refuses to run as root),
in its own process group, and is stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.pgserver import ThrowawayCluster, _free_port

START_TIMEOUT_S = 20.0


def pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


class PgBouncer:
    def __init__(self, cluster: ThrowawayCluster, database: str, *, pool_size: int = 4) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise FileNotFoundError("pgbouncer is not installed")
        self.binary = binary
        self.cluster = cluster
        self.database = database
        self.pool_size = pool_size
        self.port = _free_port()
        # The cluster's directory belongs to its owner, who runs PgBouncer too.
        self.directory = Path(cluster.tmpdir) / f"pgbouncer-{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _write_config(self) -> Path:
        self.directory.mkdir()
        (self.directory / "userlist.txt").write_text('"postgres" ""\n')
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"{self.database} = host=127.0.0.1 port={self.cluster.port} "
            f"dbname={self.database} user=postgres\n"
            "\n[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.directory}/userlist.txt\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "min_pool_size = 0\n"
            "reserve_pool_size = 0\n"
            f"max_db_connections = {self.pool_size}\n"
            "max_client_conn = 500\n"
            "server_reset_query =\n"
            f"logfile = {self.directory}/pgbouncer.log\n"
            f"pidfile = {self.directory}/pgbouncer.pid\n"
        )
        if self.cluster.prefix:  # root: hand the files to the cluster's owner
            owner = os.stat(self.cluster.tmpdir)
            for path in (self.directory, *self.directory.iterdir()):
                os.chown(path, owner.st_uid, owner.st_gid)
        return config

    def start(self) -> PgBouncer:
        config = self._write_config()
        self.process = subprocess.Popen(
            [*self.cluster.prefix, self.binary, str(config)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.log()
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start:\n{log}") from None
                time.sleep(0.1)

    def log(self) -> str:
        try:
            return (self.directory / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        if process.poll() is None:
            process.wait(timeout=10)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
