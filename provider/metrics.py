"""Prometheus metrics, whole across worker processes.

`provider serve` gives its workers a fresh PROMETHEUS_MULTIPROC_DIR (removed when it
stops): every process writes its samples there and ``render()`` sums all of them, so
one scrape of any worker counts every request. Without that variable (tests, a plain
ASGI server) the metrics are the process's own.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

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

# Methods outside this set share one label value: a client cannot mint label values.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}
_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request (cheap: the labelled children are looked up once)."""
    if method not in _METHODS:
        method = "OTHER"
    status_class = status // 100
    key = (route, method, status_class)
    children = _children.get(key)
    if children is None:
        labels = (route, method, _STATUS_CLASSES.get(status_class, "other"))
        children = _children[key] = (REQUESTS.labels(*labels),
                                     REQUEST_DURATION.labels(*labels))
    children[0].inc()
    children[1].observe(seconds)
    if status == 429:
        THROTTLED.labels(route).inc()


_issued: dict[str, Counter] = {}


def count_tokens_issued(grant_type: str) -> None:
    """One token response of a registered grant type (the child is looked up once)."""
    child = _issued.get(grant_type)
    if child is None:
        child = _issued[grant_type] = TOKENS_ISSUED.labels(grant_type)
    child.inc()


def render() -> bytes:
    """The Prometheus text exposition of every process (or of this one)."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
