"""Logs and metrics in-process: the settings' rules, the formats, label values a client
cannot mint, and the database-unavailable count (real refused connections)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.handlers
import queue
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from pydantic import ValidationError

from provider.app import create_app
from provider.logs import (
    AccessLineHandler,
    AccessRecord,
    JsonFormatter,
    RequestContext,
    TextFormatter,
    close_request,
    open_request,
)
from provider.metrics import REQUEST_DURATION, count_tokens_issued, observe_request, sync
from provider.settings import Settings
from tests.conftest import make_settings

PRODUCTION: dict[str, Any] = {"env": "production", "issuer": "https://auth.example.com"}


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_production_refuses_a_public_metrics_endpoint_unless_told() -> None:
    with pytest.raises(ValidationError, match="PROVIDER_METRICS_TOKEN must be set"):
        settings(**PRODUCTION)
    with pytest.raises(ValidationError, match="PROVIDER_METRICS_TOKEN must be set"):
        settings(**PRODUCTION, metrics_token="")  # empty is unset
    assert settings(**PRODUCTION, metrics_public=True).metrics_token is None
    assert settings(**PRODUCTION, metrics_token="t" * 32).metrics_public is False


def test_log_format_defaults_to_json_in_production_only() -> None:
    assert settings(**PRODUCTION, metrics_public=True).effective_log_format == "json"
    assert settings().effective_log_format == "text"
    assert settings(log_format="json").effective_log_format == "json"
    assert settings(**PRODUCTION, metrics_public=True,
                    log_format="text").effective_log_format == "text"


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("provider.accounts", logging.ERROR, __file__, 1, message, None,
                             None)


def test_application_lines_carry_the_request_id_in_both_formats() -> None:
    token = open_request(RequestContext("req-1"))
    try:
        as_json = json.loads(JsonFormatter().format(_record("mail not sent")))
        as_text = TextFormatter().format(_record("mail not sent"))
    finally:
        close_request(token)
    assert {k: as_json[k] for k in ("level", "logger", "message", "request_id")} == {
        "level": "error", "logger": "provider.accounts", "message": "mail not sent",
        "request_id": "req-1"}
    assert as_text.endswith("ERROR provider.accounts: mail not sent request_id=req-1")
    assert "request_id" not in json.loads(JsonFormatter().format(_record("outside")))


def _access(request_id: str = "rid-1", client_id: str | None = "cl_1") -> AccessRecord:
    return AccessRecord("POST", "/oauth/token", 200, 0.0012345, "192.0.2.7", client_id, None,
                        request_id)


def test_access_lines_are_formatted_with_their_batch_other_lines_when_logged() -> None:
    stream = io.StringIO()
    handler = AccessLineHandler(stream)
    formatted: list[str] = []

    class Recording(TextFormatter):
        def format(self, record: logging.LogRecord) -> str:
            # Without asking an access record for its msg: it is written out (text_line).
            formatted.append(f"access {record.values[-1]}" if type(record) is AccessRecord
                             else record.getMessage())
            return super().format(record)

    handler.setFormatter(Recording())
    state = ["before"]

    async def requests() -> None:
        handler.write(_access())
        handler.write(logging.LogRecord("provider.accounts", logging.INFO, __file__, 1,
                                        "state %s", (state,), None))
        state[0] = "after"
        # The access line waits for its batch; the other line was formatted as logged.
        assert formatted == ["state ['before']"]
        assert stream.getvalue() == ""
        handler.flush()

    asyncio.run(requests())
    assert formatted == ["state ['before']", "access rid-1"]
    first, second = stream.getvalue().splitlines()
    assert first.endswith(" INFO provider.access: POST /oauth/token 200 method=POST "
                          "route=/oauth/token status=200 duration_ms=1.234 "
                          "client_address=192.0.2.7 client_id=cl_1 request_id=rid-1")
    assert second.endswith(" INFO provider.accounts: state ['before']")


def test_an_access_line_has_every_field_in_json_nulls_included() -> None:
    record = _access(client_id=None)
    line = json.loads(JsonFormatter().format(record))
    assert line == {"time": line["time"], "level": "info", "logger": "provider.access",
                    "message": "POST /oauth/token 200", "method": "POST",
                    "route": "/oauth/token", "status": 200, "duration_ms": 1.234,
                    "client_address": "192.0.2.7", "client_id": None, "user_id": None,
                    "request_id": "rid-1"}
    assert line["time"].endswith("Z") and len(line["time"]) == len("2026-01-01T00:00:00.000Z")


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()],
                         ids=["json", "text"])
def test_an_access_line_written_out_is_the_formatters_own(formatter: logging.Formatter) -> None:
    # The formatters write access lines out directly; the generic way (taken by a record
    # whose fields were replaced, here by themselves) must give the same text.
    odd = 'a "quoted" \\ back\nslash, é, \x01, \u2028'
    records = [
        _access(),
        _access(client_id=None),
        AccessRecord("GET", "<unmatched>", 404, 0.0, "unknown", None, "4f1c-user", "rid"),
        AccessRecord("OTHER", odd, 503, 12.3456789, odd, odd, odd, odd),
        AccessRecord("POST", "/oauth/token", 200, 1e-7, "2001:db8::1", "cl_x", None, "r"),
    ]
    for record in records:
        written_out = formatter.format(record)
        assert record.is_pristine
        record.fields = record.fields
        assert formatter.format(record) == written_out
        if isinstance(formatter, JsonFormatter):
            assert json.loads(written_out)["route"] == record.values[1]


def test_a_batch_line_that_fails_to_format_loses_only_itself() -> None:
    stream = io.StringIO()
    handler = AccessLineHandler(stream)
    failed: list[logging.LogRecord] = []

    class Failing(TextFormatter):
        def format(self, record: logging.LogRecord) -> str:
            if record.getMessage().startswith("POST") and \
                    getattr(record, "values", ())[-1:] == ("bad",):
                raise ValueError("cannot format")
            return super().format(record)

    handler.setFormatter(Failing())
    handler.handleError = failed.append  # type: ignore[assignment]

    async def requests() -> None:
        for request_id in ("rid-1", "bad", "rid-3"):
            handler.write(_access(request_id))
        handler.flush()

    asyncio.run(requests())
    assert [r.values[-1] for r in failed] == ["bad"]  # type: ignore[attr-defined]
    lines = stream.getvalue().splitlines()
    assert [line.rsplit("request_id=", 1)[1] for line in lines if line] == ["rid-1", "rid-3"]


def test_an_access_record_taking_loggings_usual_way_has_what_a_log_record_has() -> None:
    # %-style formats and SocketHandler/makeLogRecord read the record's __dict__.
    record = _access().materialize()
    plain = logging.Formatter("%(levelname)s %(name)s %(msg)s: %(message)s (%(lineno)d)")
    assert plain.format(record) == ("INFO provider.access POST /oauth/token 200: "
                                    "POST /oauth/token 200 (0)")
    rebuilt = logging.makeLogRecord(dict(record.__dict__))
    assert (rebuilt.name, rebuilt.levelno, rebuilt.getMessage()) == (
        "provider.access", logging.INFO, "POST /oauth/token 200")
    assert rebuilt.fields["request_id"] == "rid-1"  # type: ignore[attr-defined]
    # The handler of `provider serve` given another formatter by a user's logging set-up.
    stream = io.StringIO()
    handler = AccessLineHandler(stream)
    handler.setFormatter(plain)

    async def request() -> None:
        handler.write(_access())
        handler.flush()

    asyncio.run(request())
    assert stream.getvalue() == ("INFO provider.access POST /oauth/token 200: "
                                 "POST /oauth/token 200 (0)\n")


def test_an_access_record_through_logging_is_formatted_as_it_arrives() -> None:
    stream = io.StringIO()
    handler = AccessLineHandler(stream)
    handler.setFormatter(TextFormatter())
    record = _access()

    async def request() -> None:
        handler.handle(record)  # logging's way (emit), not the middleware's
        record.msg = "changed by a later handler"
        handler.flush()

    asyncio.run(request())
    assert " INFO provider.access: POST /oauth/token 200 method=POST" in stream.getvalue()
    assert "changed" not in stream.getvalue()


def test_logging_own_handlers_may_rewrite_an_access_record() -> None:
    # QueueHandler.prepare() replaces a record's msg and args, as other handlers may.
    handler = logging.handlers.QueueHandler(queue.Queue())
    handler.setFormatter(TextFormatter())
    prepared = handler.prepare(_access())
    assert prepared.msg.endswith("POST /oauth/token 200 method=POST route=/oauth/token "
                                 "status=200 duration_ms=1.234 client_address=192.0.2.7 "
                                 "client_id=cl_1 request_id=rid-1")
    assert prepared.getMessage() == prepared.msg


def test_a_client_cannot_mint_method_labels() -> None:
    observe_request("/healthz", "BREW", 405, 0.001)
    observe_request("/healthz", "PROPFIND", 405, 0.001)
    sync()
    labels = {"route": "/healthz", "method": "OTHER", "status": "4xx"}
    assert REGISTRY.get_sample_value("provider_http_requests_total", labels) >= 2
    assert REGISTRY.get_sample_value(
        "provider_http_requests_total", {**labels, "method": "BREW"}) is None


def test_batched_requests_publish_what_observe_would() -> None:
    """observe_request adds up in a dictionary and sync() hands the sums over: the
    exposition must be what a Histogram.observe() per request gives."""
    durations = [0.0, 0.004, 0.005, 0.0051, 0.07, 0.3, 0.3, 2.0, 9.9, 11.0, 1e9]
    reference_registry = CollectorRegistry()
    reference = Histogram("reference_seconds", "same buckets", registry=reference_registry,
                          buckets=REQUEST_DURATION._upper_bounds)
    for seconds in durations:
        observe_request("/test/sync", "GET", 200, seconds)
        reference.observe(seconds)
    labels = {"route": "/test/sync", "method": "GET", "status": "2xx"}
    assert REGISTRY.get_sample_value("provider_http_requests_total", labels) is None
    sync()
    assert REGISTRY.get_sample_value("provider_http_requests_total", labels) == len(durations)

    def samples(registry: CollectorRegistry, prefix: str, extra: dict[str, str]) -> dict:
        return {(sample.name.removeprefix(prefix), sample.labels.get("le")): sample.value
                for metric in registry.collect() for sample in metric.samples
                if sample.name.startswith(prefix) and not sample.name.endswith("_created")
                and extra.items() <= sample.labels.items()}

    ours = samples(REGISTRY, "provider_http_request_duration_seconds", labels)
    theirs = samples(reference_registry, "reference_seconds", {})
    assert ours == theirs and len(ours) == len(REQUEST_DURATION._upper_bounds) + 2
    sync()  # nothing pending: nothing counted twice
    assert REGISTRY.get_sample_value("provider_http_requests_total", labels) == len(durations)


def test_token_responses_are_counted_at_the_sync() -> None:
    labels = {"grant_type": "test_grant"}
    before = REGISTRY.get_sample_value("provider_tokens_issued_total", labels) or 0.0
    for _ in range(3):
        count_tokens_issued("test_grant")
    assert (REGISTRY.get_sample_value("provider_tokens_issued_total", labels) or 0.0) == before
    sync()
    assert REGISTRY.get_sample_value("provider_tokens_issued_total", labels) == before + 3
    sync()  # nothing pending: nothing counted twice
    assert REGISTRY.get_sample_value("provider_tokens_issued_total", labels) == before + 3


async def test_database_unavailable_answers_are_counted(settings_keys: tuple[str, Path]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, keys_dir = settings_keys
    app = create_app(make_settings(f"postgresql://postgres@127.0.0.1:{port}/none", keys_dir))
    before = REGISTRY.get_sample_value("provider_database_unavailable_total") or 0.0
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.post("/oauth/token", auth=("cl_x", "secret"),
                                       data={"grant_type": "client_credentials"})
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert REGISTRY.get_sample_value("provider_database_unavailable_total") == before + 1


WITHHELD_SCRIPT = r'''
import asyncio, gc, logging, logging.config, sys
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from provider.db import create_engine
from provider.logs import logging_config

logging.config.dictConfig(logging_config(sys.argv[2]))

async def main():
    engine = create_engine(sys.argv[1])
    async with engine.connect() as conn:
        await conn.execute(text("CREATE TEMP TABLE t (email text PRIMARY KEY, n int NOT NULL)"))
        await conn.execute(text("INSERT INTO t VALUES ('ada@example.com', 1)"))
        await conn.commit()
        statements = [
            ("INSERT INTO t VALUES (:v, 2)", "ada@example.com"),          # unique key
            ("INSERT INTO t VALUES (:v, NULL)", "bob\nnext-line@example.com"),  # not null
            ("SELECT CAST(:v AS uuid)", "carol-secret"),          # asyncpg cannot encode
            ("SELECT CAST(CAST(:v AS text) AS uuid)", "dave-secret"),  # PostgreSQL refuses
        ]
        for statement, value in statements:
            try:
                # Bound, as every statement of ours: the engine hides parameters.
                await conn.execute(text(statement), {"v": value})
            except DBAPIError as exc:
                # As the app's catch-all, uvicorn and a third party would log it.
                logging.getLogger("provider.app").error("unhandled error", exc_info=exc)
                logging.getLogger("uvicorn.error").error("Exception in ASGI application",
                                                         exc_info=exc)
                logging.getLogger("sqlalchemy.pool").error("during reset", exc_info=exc)
                group = ExceptionGroup("in a task group", [exc])
                logging.getLogger("provider.app").error("group", exc_info=group)
                logging.getLogger("provider.app").warning("as text: %s / %r", exc, exc)
                driver = exc.orig.__cause__  # asyncpg's own, its DETAIL in its text
                logging.getLogger("provider.app").warning("driver: %s", driver)
                # A traceback some other handler formatted before ours.
                app = logging.getLogger("provider.app")
                record = app.makeRecord("provider.app", logging.ERROR, "s", 1, "earlier",
                                        None, (type(exc), exc, exc.__traceback__))
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                app.handle(record)
                last = exc
            await conn.rollback()
    await engine.dispose()

    async def fails():
        raise last

    task = asyncio.ensure_future(fails())
    await asyncio.sleep(0)
    del task
    gc.collect()  # asyncio: "Task exception was never retrieved", with its repr

asyncio.run(main())
'''


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logged_database_errors_withhold_the_values_they_quote(
    log_format: str, postgres_url: str, tmp_path: Path
) -> None:
    """PostgreSQL's DETAIL line quotes the row ("Key (email)=(ada@...) already exists"):
    whoever logs the error with its traceback (our handler, uvicorn, a third party),
    the values stay out of the log, and the key's columns stay in."""
    run = subprocess.run([sys.executable, "-c", WITHHELD_SCRIPT, postgres_url, log_format],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    log = run.stderr
    assert log.count("UniqueViolationError") >= 5, log
    assert log.count("NotNullViolationError") >= 5, log
    assert "Task exception was never retrieved" in log
    assert "Key (email)=(...) [values withheld]" in log
    assert "DETAIL:  ... [values withheld]" in log  # "Failing row contains (...)"
    assert "invalid input syntax for type uuid: ... [values withheld]" in log
    assert "invalid input for query argument $1: ... [values withheld]" in log
    for value in ("ada@example.com", "next-line@example.com", "carol-secret", "dave-secret"):
        assert value not in log, value
    if log_format == "json":
        lines = [json.loads(line) for line in log.splitlines()]
        assert len(lines) == 4 * 7 + 1
        tracebacks = [line["exception"] for line in lines if "exception" in line]
        assert len(tracebacks) == 4 * 5 + 1
        assert all("[values withheld]" in traceback for traceback in tracebacks)
