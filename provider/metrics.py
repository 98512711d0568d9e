"""Prometheus metrics, whole across worker processes.

`provider serve` gives its workers a fresh PROMETHEUS_MULTIPROC_DIR (removed when it
stops): every process writes its samples there and ``render()`` sums all of them, so
one scrape of any worker counts every request. Without that variable (tests, a plain
ASGI server) the metrics are the process's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client picks its mode when it is imported, by this variable (so do we).
MULTIPROCESS = bool(os.environ.get(MULTIPROC_DIR_ENV))

# --- requests (provider.middleware) -----------------------------------------------------

REQUESTS = Counter(
    "provider_http_requests_total",
    "HTTP requests answered, by route template, method and status class",
    ["route", "method", "status"],
)
REQUEST_DURATION = Histogram(
    "provider_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template, method and status class",
    ["route", "method", "status"],
)
THROTTLED = Counter(
    "provider_throttled_requests_total",
    "Requests answered 429 by a throttle (slow_down or rate_limited), by route template",
    ["route"],
)

# --- what the requests did --------------------------------------------------------------

TOKENS_ISSUED = Counter(
    "provider_tokens_issued_total", "Token responses issued, by grant type", ["grant_type"]
)
OAUTH_ERRORS = Counter(
    "provider_oauth_errors_total", "OAuth error responses, by error code", ["error"]
)
LOGIN_FAILURES = Counter(
    "provider_login_failures_total",
    "Password logins refused for a wrong identifier or password (throttled tries not included)",
)
REFRESH_REUSE_DETECTED = Counter(
    "provider_refresh_reuse_detected_total",
    "Rotated refresh tokens presented again (the session was revoked)",
)
MAIL_FAILURES = Counter("provider_mail_failures_total", "Emails that could not be sent")
DATABASE_UNAVAILABLE = Counter(
    "provider_database_unavailable_total",
    "Requests answered 503 because the database was unavailable",
)
RATE_LIMIT_UNAVAILABLE = Counter(
    "provider_rate_limit_unavailable_total",
    "Requests answered 503 because the rate-limit storage (Redis) was unavailable",
)

# --- the processes themselves (multiprocess mode) ------------------------------------------

# prometheus_client's process collector reads only the process it runs in and is not part
# of a multiprocess exposition, so under `provider serve` each worker publishes its own at
# every sync: memory, open files and start time per live worker (a `pid` label; a worker
# that has gone is dropped at the next scrape), and the CPU time of every worker the
# server has had, summed (a restarted worker's seconds are not lost). One process alone is
# covered by prometheus_client's own collector, under the same names.
if MULTIPROCESS:
    PROCESS_CPU = Counter("process_cpu_seconds_total",
                          "User and system CPU time of the server's workers, in seconds",
                          registry=None)
    PROCESS_MEMORY = Gauge("process_resident_memory_bytes",
                           "Resident memory of each worker, in bytes",
                           multiprocess_mode="liveall", registry=None)
    PROCESS_FDS = Gauge("process_open_fds", "Open file descriptors of each worker",
                        multiprocess_mode="liveall", registry=None)
    PROCESS_START = Gauge("process_start_time_seconds",
                          "Start time of each worker, in seconds since the epoch",
                          multiprocess_mode="liveall", registry=None)
_PAGE_SIZE = resource.getpagesize()
_IMPORTED_MONOTONIC = time.monotonic()
_PROC_SELF = Path("/proc/self")
# The CPU seconds this process has published so far, and which process that was: a child
# forked after the import (a preloading server) starts again from its own zero.
_cpu_published = 0.0
_published_by = 0
_LIVE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")


def _publish_process() -> None:
    """This worker's figures, for the next scrape of any worker (Linux's /proc; where it
    is missing, the CPU time alone)."""
    global _cpu_published, _published_by
    if _published_by != os.getpid():
        _published_by, _cpu_published = os.getpid(), 0.0
        PROCESS_START.set(_start_time())
    times = os.times()
    cpu = times.user + times.system
    PROCESS_CPU.inc(max(0.0, cpu - _cpu_published))
    _cpu_published = max(cpu, _cpu_published)
    with contextlib.suppress(OSError):
        PROCESS_MEMORY.set(int((_PROC_SELF / "statm").read_text().split()[1]) * _PAGE_SIZE)
        PROCESS_FDS.set(len(os.listdir(_PROC_SELF / "fd")))


def _start_time() -> float:
    """When this process started, in seconds since the epoch, as prometheus_client's own
    collector reads it (/proc: ticks since boot, plus the boot time)."""
    try:
        stat = _stat_fields("self")  # starttime is the 22nd field
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").open()
                    if line.startswith("btime "))
        return boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time() - time.monotonic() + _IMPORTED_MONOTONIC


def _forget_gone_processes(directory: str) -> None:
    """Drop the per-worker gauges of workers that are no longer running (a worker that
    crashed or was replaced); their counters stay, as counters must."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        match = _LIVE_FILE.fullmatch(name)
        if match is None:
            continue
        if _has_exited(int(match[1])):
            with contextlib.suppress(FileNotFoundError):  # another worker was first
                os.remove(os.path.join(directory, name))


def _has_exited(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet (uvicorn reaps a dead worker only
    when it next checks on them all)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # running, as another user
    try:
        state = _stat_fields(pid)[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat's fields from the 3rd (the state) on: those after the command's
    closing parenthesis, as the command itself may hold spaces and parentheses."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


# Methods outside this set share one label value: a client cannot mint label values.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}
_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

# Each request's count and duration are added up here first and handed to prometheus_client
# by ``sync()`` (every second from the app's lifespan, and before every scrape). In
# multiprocess mode each of its increments takes a lock, a getpid() and an mmap write:
# three per request, on every request, where one dictionary update does. A scrape of
# another worker sees this process's last second a second late; a process that stops
# syncs first.
SYNC_INTERVAL_S = 1.0
_BOUNDS: tuple[float, ...] = tuple(REQUEST_DURATION._upper_bounds)
# key -> [count, sum of seconds, count per bucket (not cumulative)]
_pending: dict[tuple[str, str, int], list[Any]] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request (a dictionary update; ``sync()`` publishes it)."""
    if method not in _METHODS:
        method = "OTHER"
    key = (route, method, status // 100)
    entry = _pending.get(key)
    if entry is None:
        entry = _pending[key] = [0, 0.0, [0] * len(_BOUNDS)]
    entry[0] += 1
    entry[1] += seconds
    entry[2][bisect_left(_BOUNDS, seconds)] += 1
    if status == 429:
        THROTTLED.labels(route).inc()


def sync() -> None:
    """Hand the requests and token responses counted since the last sync, and in
    multiprocess mode this process's own figures, to prometheus_client."""
    if MULTIPROCESS:
        _publish_process()
    if _issued_pending:
        issued = list(_issued_pending.items())
        _issued_pending.clear()
        for grant_type, count in issued:
            child = _issued.get(grant_type)
            if child is None:
                child = _issued[grant_type] = TOKENS_ISSUED.labels(grant_type)
            child.inc(count)
    if not _pending:
        return
    pending = list(_pending.items())
    _pending.clear()
    for key, (count, total, buckets) in pending:
        children = _children.get(key)
        if children is None:
            route, method, status_class = key
            labels = (route, method, _STATUS_CLASSES.get(status_class, "other"))
            children = _children[key] = (REQUESTS.labels(*labels),
                                         REQUEST_DURATION.labels(*labels))
        counter, histogram = children
        counter.inc(count)
        # Histogram.observe() one by one would redo the work saved: add to its sum and
        # (non-cumulative) buckets as observe() itself does (tests/test_logs_and_metrics
        # checks the exposition against observe()'s).
        histogram._sum.inc(total)
        for index, n in enumerate(buckets):
            if n:
                histogram._buckets[index].inc(n)


async def sync_periodically(interval_s: float = SYNC_INTERVAL_S) -> None:
    while True:
        await asyncio.sleep(interval_s)
        sync()


_issued: dict[str, Counter] = {}
_issued_pending: dict[str, int] = {}


def count_tokens_issued(grant_type: str) -> None:
    """One token response of a registered grant type, counted like a request: here, and
    published by ``sync()``."""
    _issued_pending[grant_type] = _issued_pending.get(grant_type, 0) + 1


def render() -> bytes:
    """The Prometheus text exposition of every process (or of this one)."""
    sync()
    # The mode prometheus_client chose when it was imported, not the variable now.
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if MULTIPROCESS and directory:
        _forget_gone_processes(directory)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


if MULTIPROCESS:
    # Created above with 0 in the shared files: a scrape must not see a worker at 0 bytes.
    _publish_process()
