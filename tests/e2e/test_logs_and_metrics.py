"""Logs and metrics of a real `provider serve`.

The log of a whole account flow (PROVIDER_LOG_FORMAT=json) is parsed line by line and
searched for every secret the flow used; request ids come from a trusted proxy only.
Prometheus text of a 2-worker server, parsed with prometheus_client's parser, counts
every request once whichever worker served it or the scrape (multiprocess mode: one
scrape is whole, no retrying until the sums look right).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from provider.metrics import SYNC_INTERVAL_S
from tests.e2e.conftest import START_TIMEOUT_S, LiveServer, free_port
from tests.factories import unique_email
from tests.smtp_sink import CODE_PATTERN, SmtpSink, plain_text

PASSWORD = "orchard lantern velvet"
WRONG_PASSWORD = "not-the-password-at-all"
TRUSTED_PROXY = "127.0.0.2"  # loopback too: the test connects from it to play the proxy
METRICS_TOKEN = "metrics-" + secrets.token_urlsafe(24)
ACCESS_FIELDS = {"time", "level", "logger", "message", "method", "route", "status",
                 "duration_ms", "client_address", "client_id", "user_id", "request_id"}
HSTS = "max-age=63072000; includeSubDomains"


def json_lines(log: str) -> list[dict[str, Any]]:
    """Every line of the server's output as a JSON object (the test fails on any other)."""
    entries = []
    for line in log.splitlines():
        if line.strip():
            entries.append(json.loads(line))
    return entries


def access_line(entries: list[dict[str, Any]], response: httpx.Response) -> dict[str, Any]:
    request_id = response.headers["x-request-id"]
    [line] = [e for e in entries
              if e["logger"] == "provider.access" and e["request_id"] == request_id]
    return line


@pytest.fixture(scope="module")
def json_server(request: pytest.FixtureRequest, postgres_server: str | None, keys_dir: Path,
                e2e_dir: Path, mail_sink: SmtpSink) -> Iterator[LiveServer]:
    """One worker, JSON logs, an https issuer (as behind a TLS proxy), a trusted proxy."""
    database_url = str(request.getfixturevalue("migrated"))
    port = free_port()
    server = LiveServer(database_url=database_url, keys_dir=keys_dir,
                        rundir=e2e_dir / "logs-json", extra_env={
                            "PROVIDER_LOG_FORMAT": "json",
                            "PROVIDER_ISSUER": f"https://127.0.0.1:{port}",
                            "PROVIDER_SMTP_URL": mail_sink.url,
                            "PROVIDER_TRUSTED_PROXIES": TRUSTED_PROXY,
                        })
    server.port, server.base_url = port, f"http://127.0.0.1:{port}"
    with server:
        yield server


async def test_a_whole_flow_logs_json_lines_and_no_secret(
    json_server: LiveServer, mail_sink: SmtpSink
) -> None:
    server = json_server
    email = unique_email("logs")
    client = server.cli_json("clients", "create", "--name", "logs", "--first-party",
                             "--grant", "password", "--grant", "refresh_token",
                             "--scope", "openid profile email account")
    basic = base64.b64encode(f"{client['client_id']}:{client['client_secret']}".encode())
    client_auth = {"Authorization": f"Basic {basic.decode()}"}
    secrets_used = [PASSWORD, WRONG_PASSWORD, client["client_secret"], basic.decode()]
    answers: dict[str, httpx.Response] = {}

    async with server.http() as http:
        answers["register"] = await http.post("/auth/register",
                                              json={"email": email, "password": PASSWORD})
        assert answers["register"].status_code == 202, answers["register"].text
        [mail] = await mail_sink.wait_for(email)
        [code] = CODE_PATTERN.findall(plain_text(mail))
        secrets_used.append(code)
        answers["verify"] = await http.post("/auth/verify-email",
                                            json={"email": email, "code": code})
        assert answers["verify"].status_code == 200, answers["verify"].text

        answers["login"] = await http.post("/oauth/token", headers=client_auth, data={
            "grant_type": "password", "username": email, "password": PASSWORD,
            "scope": "openid profile email account"})
        assert answers["login"].status_code == 200, answers["login"].text
        first = answers["login"].json()
        answers["refresh"] = await http.post("/oauth/token", headers=client_auth, data={
            "grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
        assert answers["refresh"].status_code == 200, answers["refresh"].text
        tokens = answers["refresh"].json()
        for body in (first, tokens):
            secrets_used += [body["access_token"], body["refresh_token"], body["id_token"]]
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}

        answers["me"] = await http.get("/users/me", headers=bearer)
        assert answers["me"].status_code == 200, answers["me"].text
        user_id = answers["me"].json()["id"]
        # A token in the query string is refused, and must not be logged either.
        answers["query"] = await http.get("/users/me",
                                          params={"access_token": tokens["access_token"]})
        assert answers["query"].status_code in (400, 401), answers["query"].text
        answers["introspect"] = await http.post("/oauth/introspect", headers=client_auth,
                                                data={"token": tokens["access_token"]})
        assert answers["introspect"].json()["active"] is True
        answers["revoke"] = await http.post("/oauth/revoke", headers=client_auth,
                                            data={"token": tokens["refresh_token"]})
        assert answers["revoke"].status_code == 200
        answers["failed"] = await http.post("/oauth/token", headers=client_auth, data={
            "grant_type": "password", "username": email, "password": WRONG_PASSWORD})
        assert answers["failed"].status_code == 400, answers["failed"].text
        # The request id of a client that is not a trusted proxy is never taken.
        answers["spoofed"] = await http.get("/healthz", headers={
            "X-Request-ID": "spoofed-by-a-client", "X-Forwarded-For": "198.51.100.7"})

    proxy = httpx.AsyncHTTPTransport(local_address=TRUSTED_PROXY)
    async with server.http(transport=proxy) as via_proxy:
        answers["proxied"] = await via_proxy.get("/healthz", headers={
            "X-Request-ID": "proxy-7f3a.1", "X-Forwarded-For": "203.0.113.9"})
        answers["proxied_bad_id"] = await via_proxy.get("/healthz", headers={
            "X-Request-ID": 'forged" "line', "X-Forwarded-For": "203.0.113.9"})

    # Each request's access line is written when its answer is complete; the last one
    # may still be on its way to the log file: wait for it (bounded), then read.
    await _wait_for_line(server, answers["proxied_bad_id"].headers["x-request-id"])
    log = server.log()
    secrets_used.append(f"Bearer {tokens['access_token']}")
    for secret in secrets_used:
        assert secret not in log, f"a secret reached the log: {secret[:12]}..."
    assert not re.search(rf"(?<!\d){code}(?!\d)", log)
    assert "access_token=" not in log

    entries = json_lines(log)
    access = [e for e in entries if e["logger"] == "provider.access"]
    assert len(access) >= len(answers)
    for entry in access:
        assert set(entry) == ACCESS_FIELDS, entry
        assert entry["level"] == "info"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])

    def line(name: str) -> dict[str, Any]:
        return access_line(entries, answers[name])

    assert {k: line("login")[k] for k in ("method", "route", "status", "client_address",
                                          "client_id", "user_id")} == {
        "method": "POST", "route": "/oauth/token", "status": 200,
        "client_address": "127.0.0.1", "client_id": client["client_id"], "user_id": user_id}
    assert (line("refresh")["client_id"], line("refresh")["user_id"]) == (
        client["client_id"], user_id)
    assert (line("me")["route"], line("me")["client_id"], line("me")["user_id"]) == (
        "/users/me", None, user_id)
    assert (line("failed")["status"], line("failed")["client_id"],
            line("failed")["user_id"]) == (400, client["client_id"], None)
    assert (line("introspect")["client_id"], line("revoke")["client_id"]) == (
        client["client_id"], client["client_id"])
    assert (line("register")["route"], line("register")["status"]) == ("/auth/register", 202)
    for entry in access:
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0

    # Request ids: generated unless a trusted proxy sent a well-formed one; echoed.
    spoofed = answers["spoofed"].headers["x-request-id"]
    assert spoofed != "spoofed-by-a-client" and re.fullmatch(r"[0-9a-f]{32}", spoofed)
    assert line("spoofed")["client_address"] == "127.0.0.1"
    assert answers["proxied"].headers["x-request-id"] == "proxy-7f3a.1"
    assert line("proxied")["client_address"] == "203.0.113.9"
    assert re.fullmatch(r"[0-9a-f]{32}", answers["proxied_bad_id"].headers["x-request-id"])
    assert len({r.headers["x-request-id"] for r in answers.values()}) == len(answers)

    # uvicorn's own lines are JSON too (application lines: see the metrics test).
    uvicorn_lines = [e for e in entries if e["logger"].startswith("uvicorn")]
    assert any(e["message"] == "Application startup complete." for e in uvicorn_lines)

    # An https issuer: HSTS on every answer, errors included.
    for response in answers.values():
        assert response.headers["strict-transport-security"] == HSTS


async def _wait_for_line(server: LiveServer, request_id: str) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while f'"request_id": "{request_id}"' not in server.log():
        assert loop.time() < deadline, f"no access line for {request_id}:\n{server.log()}"
        await asyncio.sleep(0.05)


# --- metrics ------------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nobody listens on (mail sent there fails at once)."""
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


@pytest.fixture(scope="module")
def metrics_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("metrics-tmpdir")


@pytest.fixture(scope="module")
def two_workers(request: pytest.FixtureRequest, keys_dir: Path, e2e_dir: Path,
                metrics_tmp: Path) -> Iterator[LiveServer]:
    """Two workers, a metrics token, a mail server that is down, tight login throttles
    (per process: no Redis), JSON logs, and a TMPDIR of its own to see the metrics
    directory come and go."""
    database_url = str(request.getfixturevalue("migrated"))
    server = LiveServer(database_url=database_url, keys_dir=keys_dir,
                        rundir=e2e_dir / "metrics", workers=2, extra_env={
                            "PROVIDER_METRICS_TOKEN": METRICS_TOKEN,
                            "PROVIDER_LOG_FORMAT": "json",
                            "PROVIDER_SMTP_URL": f"smtp://127.0.0.1:{closed_port()}",
                            "PROVIDER_LOGIN_THROTTLE_ACCOUNT": "2 per hour",
                            "TMPDIR": str(metrics_tmp),
                        })
    with server:
        yield server
    assert list(metrics_tmp.glob("provider-metrics-*")) == [], "metrics directory left"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics",
                              headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


async def settled_scrape(http: httpx.AsyncClient) -> Samples:
    """A scrape once the requests before it are all published: each worker hands its
    counts over every second, so two scrapes a sync interval apart that agree (but for
    the scrapes themselves) have seen everything."""
    def without_scrapes(samples: Samples) -> Samples:
        # The processes' own figures (CPU, memory) move by themselves.
        return {key: v for key, v in samples.items()
                if ("route", "/metrics") not in key[1] and not key[0].startswith("process_")}

    previous = await scrape(http)
    for _ in range(20):
        # Two sync intervals and a margin: a worker that idles still syncs in between,
        # also when the machine is busy.
        await asyncio.sleep(2 * SYNC_INTERVAL_S + 0.5)
        current = await scrape(http)
        if without_scrapes(current) == without_scrapes(previous):
            return current
        previous = current
    pytest.fail("the metrics kept changing with no requests")


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def fresh_connection(server: LiveServer) -> httpx.AsyncClient:
    # No keep-alive: every request is a new connection, for any worker to accept.
    return server.http(limits=httpx.Limits(max_keepalive_connections=0))


async def test_one_scrape_counts_every_worker(two_workers: LiveServer,
                                              metrics_tmp: Path) -> None:
    server = two_workers
    assert len(list(metrics_tmp.glob("provider-metrics-*"))) == 1
    requests_of = {"route": "/healthz", "method": "GET", "status": "2xx"}
    email, client_id, client_secret = _account(server)
    auth = (client_id, client_secret)

    async with fresh_connection(server) as http:
        before = await settled_scrape(http)
        for _ in range(40):
            assert (await http.get("/healthz")).status_code == 200
        logins = []
        for _ in range(3):
            response = await http.post("/oauth/token", auth=auth, data={
                "grant_type": "password", "username": email, "password": PASSWORD})
            assert response.status_code == 200, response.text
            logins.append(response.json())
        # Refresh-token reuse: the first rotation succeeds, the replay is detected.
        rotated = await http.post("/oauth/token", auth=auth, data={
            "grant_type": "refresh_token", "refresh_token": logins[0]["refresh_token"]})
        assert rotated.status_code == 200, rotated.text
        replay = await http.post("/oauth/token", auth=auth, data={
            "grant_type": "refresh_token", "refresh_token": logins[0]["refresh_token"]})
        assert replay.status_code == 400, replay.text
        # Wrong passwords: 2 per hour per account in each process, so some are 429.
        statuses = []
        for _ in range(8):
            response = await http.post("/oauth/token", auth=auth, data={
                "grant_type": "password", "username": email, "password": WRONG_PASSWORD})
            statuses.append(response.status_code)
        assert set(statuses) <= {400, 429} and statuses.count(429) >= 4, statuses
        # The mail server is down: the registration mail fails after the answer.
        registered = await http.post("/auth/register", json={
            "email": unique_email("metrics"), "password": PASSWORD})
        assert registered.status_code == 202
        await _wait_for(server, "mail not sent")

        def expected(after: Samples) -> dict[str, tuple[float, float]]:
            def delta(name: str, **labels: str) -> float:
                return value(after, name, **labels) - value(before, name, **labels)

            return {
                "healthz requests": (delta("provider_http_requests_total", **requests_of), 40),
                "healthz durations": (delta("provider_http_request_duration_seconds_count",
                                            **requests_of), 40),
                # at least the first scrape (each one is counted after it answers)
                "scrapes": (min(delta("provider_http_requests_total", route="/metrics",
                                      method="GET", status="2xx"), 1), 1),
                "password tokens": (delta("provider_tokens_issued_total",
                                          grant_type="password"), 3),
                "refresh tokens": (delta("provider_tokens_issued_total",
                                         grant_type="refresh_token"), 1),
                "reuse": (delta("provider_refresh_reuse_detected_total"), 1),
                "login failures": (delta("provider_login_failures_total"),
                                   statuses.count(400)),
                "throttled": (delta("provider_throttled_requests_total", route="/oauth/token"),
                              statuses.count(429)),
                "token 4xx": (delta("provider_http_requests_total", route="/oauth/token",
                                    method="POST", status="4xx"), 1 + len(statuses)),
                "mail failures": (delta("provider_mail_failures_total"), 1),
                "database unavailable": (value(after, "provider_database_unavailable_total"), 0),
            }

        # Each worker hands its requests' counts over every second (provider.metrics): a
        # scrape answered by one worker sees the other's last second a second later.
        deadline = asyncio.get_running_loop().time() + 15.0
        while True:
            found = expected(await scrape(http))
            if all(got == want for got, want in found.values()):
                break
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"metrics never added up: {found}")
            await asyncio.sleep(0.25)

    # The mail failure's line is JSON and carries the request id of the registration.
    [failure] = [e for e in json_lines(server.log()) if e["message"].startswith("mail not")]
    assert failure["request_id"] == registered.headers["x-request-id"]
    # Plain http issuer: no HSTS.
    assert "strict-transport-security" not in registered.headers


def _account(server: LiveServer) -> tuple[str, str, str]:
    email = unique_email("metrics")
    user, client = server.cli_parallel([
        ["users", "create", "--email", email, "--password", PASSWORD, "--verified", "--json"],
        ["clients", "create", "--name", "metrics", "--first-party", "--grant", "password",
         "--grant", "refresh_token", "--scope", "openid", "--json"],
    ])
    client_json = json.loads(client.stdout)
    assert json.loads(user.stdout)["email"] == email
    return email, client_json["client_id"], client_json["client_secret"]


async def _wait_for(server: LiveServer, text: str) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15.0
    while text not in server.log():
        assert loop.time() < deadline, f"{text!r} never logged:\n{server.log()}"
        await asyncio.sleep(0.05)


async def test_metrics_need_the_token(two_workers: LiveServer) -> None:
    async with two_workers.http() as http:
        missing = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        basic = await http.get("/metrics", auth=("metrics", METRICS_TOKEN))
        right = await http.get("/metrics",
                               headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    for refused in (missing, wrong, basic):
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"].startswith('Bearer realm="provider"')
        assert "provider_" not in refused.text
    assert wrong.json() == {"error": "invalid_token",
                            "error_description": "The metrics token is not valid."}
    assert right.status_code == 200
    assert METRICS_TOKEN not in two_workers.log()


def worker_pids(server: LiveServer) -> set[int]:
    """The server's worker processes (multiprocessing's spawned children), from /proc."""
    assert server.process is not None
    pids = set()
    for children in Path(f"/proc/{server.process.pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(FileNotFoundError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.add(int(pid))
    return pids


def reported_pids(samples: Samples) -> set[int]:
    return {int(dict(labels)["pid"]) for name, labels in samples
            if name == "process_resident_memory_bytes"}


async def scrape_until(http: httpx.AsyncClient, condition: Callable[[Samples], bool],
                       what: str) -> Samples:
    # A new worker's start-up is as slow as the server's on a busy machine.
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        samples = await scrape(http)
        if condition(samples):
            return samples
        assert time.monotonic() < deadline, f"never {what}: {reported_pids(samples)}"
        await asyncio.sleep(0.2)


async def test_every_worker_reports_its_process_and_a_gone_one_is_dropped(
    request: pytest.FixtureRequest, keys_dir: Path, e2e_dir: Path, tmp_path: Path,
) -> None:
    """prometheus_client's process metrics do not cover a multiprocess exposition: each
    worker publishes its own, with its pid; one that is killed is dropped, and the CPU
    seconds it used stay counted."""
    database_url = str(request.getfixturevalue("migrated"))
    with LiveServer(database_url=database_url, keys_dir=keys_dir,
                    rundir=e2e_dir / "process-metrics", workers=2,
                    extra_env={"PROVIDER_METRICS_TOKEN": METRICS_TOKEN,
                               "TMPDIR": str(tmp_path)}) as server:
        [metrics_dir] = tmp_path.glob("provider-metrics-*")
        workers = worker_pids(server)
        assert len(workers) == 2, workers
        async with fresh_connection(server) as http:
            first = await scrape_until(http, lambda s: reported_pids(s) == workers,
                                       "both workers reported")
            for pid in map(str, workers):
                assert value(first, "process_resident_memory_bytes", pid=pid) > 10 * 2**20
                assert value(first, "process_open_fds", pid=pid) >= 3
                started = value(first, "process_start_time_seconds", pid=pid)
                assert time.time() - 600 < started <= time.time()
            cpu_before = value(first, "process_cpu_seconds_total")
            assert cpu_before > 0.1  # two interpreters' start-up at least

            gone = min(workers)
            os.kill(gone, signal.SIGKILL)  # uvicorn starts another in its place

            def replaced(samples: Samples) -> bool:
                pids = reported_pids(samples)
                return gone not in pids and len(pids) == 2

            after = await scrape_until(http, replaced, "the killed worker dropped")
            assert reported_pids(after) == worker_pids(server)
            # A counter: the killed worker's seconds are still in the sum (its file is
            # what the sum reads), and the sum never went down.
            assert (metrics_dir / f"counter_{gone}.db").is_file()
            assert not list(metrics_dir.glob(f"gauge_live*_{gone}.db"))
            assert value(after, "process_cpu_seconds_total") >= cpu_before


def test_production_refuses_public_metrics(json_server: LiveServer) -> None:
    env = {"PROVIDER_ENV": "production", "PROVIDER_ISSUER": "https://auth.example.com",
           "PROVIDER_SMTP_URL": "smtp://127.0.0.1:25",
           "PROVIDER_ARGON2_MEMORY_COST": "19456", "PROVIDER_ARGON2_TIME_COST": "2"}
    server = json_server
    saved = dict(server.env)
    try:
        server.env.update(env)
        refused = server.cli("serve", "--port", str(free_port()), check=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.strip() == (
            "error: invalid configuration (settings): Value error, PROVIDER_METRICS_TOKEN "
            "must be set when PROVIDER_ENV=production (or set PROVIDER_METRICS_PUBLIC=true "
            "to serve /metrics to anyone on purpose)")
    finally:
        server.env.clear()
        server.env.update(saved)
