"""Logs: the request's context (id, client, user), the JSON and text formats, the set-up.

provider.middleware opens a RequestContext for each request; every line logged while the
request runs (deferred mail and account work included) carries its request id. Log lines
name users and clients by id and never carry a token, code, password or secret, nor the
values a database error quotes (``WithholdDatabaseValues``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["json", "text"]

ACCESS_LOGGER = "provider.access"


@dataclass(slots=True)
class RequestContext:
    """What the access line says about who made the request; filled in as it is learnt."""

    request_id: str
    client_id: str | None = None
    user_id: str | None = None


_current: ContextVar[RequestContext | None] = ContextVar("provider_request", default=None)


def open_request(context: RequestContext) -> object:
    """Make ``context`` the current request's; returns the token for ``close_request``."""
    return _current.set(context)


def close_request(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def current_request() -> RequestContext | None:
    return _current.get()


def note_client(client_id: str) -> None:
    """An OAuth client authenticated in this request."""
    context = _current.get()
    if context is not None:
        context.client_id = client_id


def note_user(user_id: object) -> None:
    """This request acts for (or issued tokens to) this user; None says nothing."""
    context = _current.get()
    if context is not None and user_id is not None:
        context.user_id = str(user_id)


_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)
_second: list[Any] = [None, ""]  # the last second formatted, and its text


class AccessRecord(logging.LogRecord):
    """The access line's record, made without LogRecord's per-record work (caller, thread
    and process names), which on the token path cost more than formatting the line.

    It holds the request's values as they were when the answer completed (of the types
    the middleware gives them); ``msg`` and ``fields`` are made from them when first
    asked for, which our formatters do in the batch, off the request's way, and only for
    a record that takes logging's usual way (``materialize``).
    """

    # What formatters may ask of a record and an access line does not know.
    pathname = filename = module = funcName = ""
    lineno = 0
    exc_info = exc_text = stack_info = None
    thread = threadName = process = processName = taskName = None
    relativeCreated = 0.0
    name = ACCESS_LOGGER
    levelno = logging.INFO
    levelname = "INFO"
    args = None

    def __init__(self, method: str, route: str, status: int, duration_s: float,
                 client_address: str, client_id: str | None, user_id: str | None,
                 request_id: str) -> None:
        self.created = created = time.time()
        self.msecs = (created % 1) * 1000
        self.values = (method, route, status, duration_s, client_address, client_id,
                       user_id, request_id)

    def __getattr__(self, name: str) -> Any:
        # Only for what the instance does not hold yet: msg and fields, made once and
        # kept (so they may be replaced, as logging's own handlers do to msg).
        if name == "msg":
            method, route, status = self.values[:3]
            value: Any = f"{method} {route} {status}"
        elif name == "fields":
            (method, route, status, duration_s, address, client_id, user_id,
             request_id) = self.values
            value = {
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(duration_s * 1000, 3),
                "client_address": address,
                "client_id": client_id,
                "user_id": user_id,
                "request_id": request_id,
            }
        else:
            raise AttributeError(name)
        self.__dict__[name] = value
        return value

    @property
    def is_pristine(self) -> bool:
        """Neither msg nor fields was asked for or replaced: the lines below are its."""
        held = self.__dict__
        return "msg" not in held and "fields" not in held

    def materialize(self) -> AccessRecord:
        """Every attribute in the record's own ``__dict__``, as a LogRecord has them, for
        logging's usual way: %-style formats, SocketHandler and the like read it."""
        held = self.__dict__
        for name in _RECORD_ATTRIBUTES:
            if name not in held:
                held[name] = getattr(self, name)
        return self

    def json_line(self, time_text: str) -> str:
        """The line JsonFormatter makes of it, written out: what its encoder does with the
        entry (same keys, order, separators and escaping), at a third of the cost."""
        method, route, status, duration_s, address, client_id, user_id, request_id = \
            self.values
        return (f'{{"time": "{time_text}", "level": "info", "logger": "{ACCESS_LOGGER}", '
                f'"message": {_json_str(f"{method} {route} {status}")}, '
                f'"method": {_json_str(method)}, "route": {_json_str(route)}, '
                f'"status": {int(status)}, '
                f'"duration_ms": {float(round(duration_s * 1000, 3))!r}, '
                f'"client_address": {_json_str(address)}, '
                f'"client_id": {_json_str_or_null(client_id)}, '
                f'"user_id": {_json_str_or_null(user_id)}, '
                f'"request_id": {_json_str(request_id)}}}')

    def text_line(self, time_text: str) -> str:
        """The line TextFormatter makes of it, written out (None fields left out)."""
        method, route, status, duration_s, address, client_id, user_id, request_id = \
            self.values
        return (f"{time_text} INFO {ACCESS_LOGGER}: {method} {route} {status} "
                f"method={method} route={route} status={status} "
                f"duration_ms={round(duration_s * 1000, 3)} client_address={address}"
                f"{'' if client_id is None else f' client_id={client_id}'}"
                f"{'' if user_id is None else f' user_id={user_id}'}"
                f" request_id={request_id}")


_RECORD_ATTRIBUTES = ("name", "msg", "args", "levelname", "levelno", "pathname", "filename",
                      "module", "exc_info", "exc_text", "stack_info", "lineno", "funcName",
                      "relativeCreated", "thread", "threadName", "processName", "process",
                      "taskName", "fields")

# The JSON encoder's own string escaping (C), as JSONEncoder(ensure_ascii=False) uses it.
_json_str: Callable[[str], str] = json.encoder.encode_basestring


def _json_str_or_null(value: str | None) -> str:
    return "null" if value is None else _json_str(value)


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds; the seconds' text is reused within a second."""
    created = record.created
    second = int(created)
    if _second[0] != second:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second[:] = [second, text]
    return f"{_second[1]}.{int((created - second) * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's structured fields: an access line's own, else the request id."""
    fields: dict[str, Any] | None = getattr(record, "fields", None)
    if fields is not None:
        return fields
    context = _current.get()
    return {"request_id": context.request_id} if context is not None else {}


# What a database error quotes of the data, which the driver's and SQLAlchemy's errors
# carry into every traceback and repr of them, whatever hide_parameters hides:
# PostgreSQL's DETAIL line ("Key (email)=(ada@...) already exists.", "Failing row
# contains (...)"), its "invalid input syntax for type uuid: "..."", and asyncpg's
# "invalid input for query argument $1: '...'". An error's own ``detail`` is withheld
# exactly (a value may span lines); what is left, line by line (a repr's escaped line
# ends too).
_LINE_REST = r"(?:(?!\\n)[^\n])*"
_DETAIL = re.compile(r"(DETAIL:[ \t]*)(" + _LINE_REST + ")")
_INPUT = re.compile(r"(invalid input (?:syntax |value )?for [^:\n]*: )(" + _LINE_REST + ")")
_KEY_COLUMNS = re.compile(r"Key \(([^)]*)\)=")
_ARGUMENT = "invalid input for query argument"
_TRACEBACKS = logging.Formatter()


def _withheld_detail(detail: str) -> str:
    key = _KEY_COLUMNS.match(detail)
    return f"Key ({key[1]})=(...) [values withheld]" if key else "... [values withheld]"


def _error_details(error: BaseException | None) -> set[str]:
    """The ``detail`` of every database error in ``error``'s chain (causes, contexts,
    SQLAlchemy's ``orig``, the members of exception groups)."""
    found: set[str] = set()
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        detail = getattr(current, "detail", None)
        if isinstance(detail, str) and detail:
            found.add(detail)
        if str(current).startswith(_ARGUMENT) and current.__cause__ is not None:
            # asyncpg could not encode a value: its codec's own error quotes it ("invalid
            # UUID 'ada@...'"), and is the cause.
            found.add(str(current.__cause__))
        stack += [current.__cause__, current.__context__, getattr(current, "orig", None)]
        if isinstance(current, BaseExceptionGroup):
            stack += current.exceptions
    return found


def withhold_database_values(text: str, details: Iterable[str] = ()) -> str:
    """``text`` without the data a database error quotes (a key's columns stay);
    ``details``: the errors' own DETAIL texts, withheld wherever they appear."""
    for detail in details:
        withheld = _withheld_detail(detail)
        text = text.replace(repr(detail)[1:-1], withheld)  # inside a repr
        # As printed, its lines perhaps indented (an exception group's "  | ").
        lines = re.compile(r"\n[ \t|]*".join(map(re.escape, detail.split("\n"))))
        text = lines.sub(withheld.replace("\\", r"\\"), text)
    if "DETAIL:" in text:
        text = _DETAIL.sub(lambda m: m[1] + (
            m[2] if m[2].endswith("[values withheld]") else _withheld_detail(m[2])), text)
    if "invalid input" in text:
        text = _INPUT.sub(r"\1... [values withheld]", text)
    return text


class WithholdDatabaseValues(logging.Filter):
    """On every handler but the access lines': a record's traceback, formatted once here,
    and the message of a warning or an error, without the data a database error quotes.
    Every formatter then writes that text (logging's own and uvicorn's use ``exc_text``
    when it is set; a traceback another handler formatted first is withheld here too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        errors: list[BaseException | None] = [
            arg for arg in (record.args if isinstance(record.args, tuple) else ())
            if isinstance(arg, BaseException)]
        if isinstance(record.exc_info, tuple):
            errors.append(record.exc_info[1])
        details = {detail for error in errors for detail in _error_details(error)}
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = withhold_database_values(record.exc_text, details)
        if record.levelno >= logging.WARNING:
            message = record.getMessage()
            withheld = withhold_database_values(message, details)
            if withheld != message:
                record.msg, record.args = withheld, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        if type(record) is AccessRecord and record.is_pristine:
            return record.json_line(_timestamp(record))
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return _ENCODER.encode(entry)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` for people reading a terminal.

    Written out rather than through logging's %-style template: an access line per
    request is on the token path, and localtime + strftime per record cost more than
    the rest of the line (the second's text is reused within the second)."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (
                second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second)))
        return f"{cached[1]},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        if type(record) is AccessRecord and record.is_pristine:
            return record.text_line(self.formatTime(record))
        line = (f"{self.formatTime(record)} {record.levelname} {record.name}: "
                f"{record.getMessage()}")
        extra = " ".join([f"{k}={v}" for k, v in _fields(record).items() if v is not None])
        if extra:
            line = f"{line} {extra}"
        # A traceback (if any) goes below the fields, not after them.
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class AccessLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `provider serve` gives the access logger. The middleware hands it each
    access line's record directly (``access_writer``), past logging's per-record route
    (logger, hierarchy, filters, handler lock and emit), which cost as much as the line.

    Lines are formatted and written in batches: at most ``FLUSH_S`` after the first of a
    batch (a timer on the running event loop), at once when ``MAX_LINES`` wait, and at
    exit (logging's shutdown flushes every handler). A request only leaves its record
    (``AccessRecord``, plain values): formatted one by one between requests, the line
    cost a third of the JWKS answer's CPU; a batch formats its lines in one go
    (bench/README.md, "The access line, formatted in batches"). A write per line was the
    largest single cost before that. What a crash can lose is the last ``FLUSH_S`` of
    access lines (README, "Logs"). A record that arrives through logging (``emit``) is
    formatted when it arrives, and joins the same batch.
    """

    FLUSH_S = 0.05
    MAX_LINES = 64

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._lines: list[str | AccessRecord] = []

    def write(self, record: logging.LogRecord) -> None:
        """A record from the middleware (``access_writer``): an access record waits for
        its batch unformatted (its values are fixed), anything else is formatted now."""
        self._append(record if type(record) is AccessRecord else self.format(record))

    def emit(self, record: logging.LogRecord) -> None:
        # Through logging, other handlers and filters may see (and change) the record
        # after this one: formatted now, as it is.
        try:
            if type(record) is AccessRecord:
                record.materialize()
            self._append(self.format(record))
        except Exception:
            self.handleError(record)

    def _append(self, line: str | AccessRecord) -> None:
        with self.lock:  # type: ignore[union-attr]
            # Under the lock that flush() swaps the batch under: a line appended by one
            # thread while another writes the batch out is never lost.
            self._lines.append(line)
            waiting = len(self._lines)
        if waiting == 1:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)
            except RuntimeError:  # no event loop in this thread: write now
                self.flush()
        elif waiting >= self.MAX_LINES:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            batch, self._lines = self._lines, []
            if batch and self.stream is not None:
                lines = [line for line in map(self._format, batch) if line is not None]
                lines.append("")
                self.stream.write(self.terminator.join(lines))
            if self.stream is not None and hasattr(self.stream, "flush"):
                self.stream.flush()

    def _format(self, item: str | AccessRecord) -> str | None:
        """The item's line; None for a record that could not be formatted (reported
        through handleError, as logging reports a failed emit: not silently)."""
        if isinstance(item, str):
            return item
        try:
            if type(self.formatter) not in (TextFormatter, JsonFormatter):
                item.materialize()  # another formatter may read the record's __dict__
            return self.format(item)
        except Exception:
            self.handleError(item)
            return None


def flush_access_lines() -> None:
    """Write the access lines that wait (the app's shutdown calls this)."""
    for handler in logging.getLogger(ACCESS_LOGGER).handlers:
        handler.flush()


def access_writer(logger: logging.Logger) -> Callable[[logging.LogRecord], None] | None:
    """Where the access line goes straight to: the one AccessLineHandler of ``logger``
    when nothing else (filters, more handlers) would see its records; else None, and
    the line takes logging's usual way (an app under another server's logging)."""
    handlers = logger.handlers
    if len(handlers) == 1 and type(handlers[0]) is AccessLineHandler and not logger.filters \
            and not handlers[0].filters and handlers[0].level <= logging.INFO:
        return handlers[0].write
    return None


def logging_config(log_format: LogFormat) -> dict[str, Any]:
    """The `logging.config.dictConfig` of `provider serve`: uvicorn's own loggers, ours
    at INFO (the console mailer's messages included, so a developer can read the codes),
    and in JSON mode everything, uvicorn and third parties included, as JSON lines.
    uvicorn's access log is off: provider.middleware writes the access lines."""
    from uvicorn.config import LOGGING_CONFIG

    if log_format == "text":
        config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
        config["formatters"]["provider"] = {"()": "provider.logs.TextFormatter"}
        config["handlers"]["provider"] = {"class": "logging.StreamHandler",
                                          "formatter": "provider",
                                          "stream": "ext://sys.stderr"}
    else:
        config = {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"provider": {"()": "provider.logs.JsonFormatter"}},
            "handlers": {"provider": {"class": "logging.StreamHandler",
                                      "formatter": "provider",
                                      "stream": "ext://sys.stderr"}},
            "loggers": {
                "uvicorn": {"handlers": ["provider"], "level": "INFO", "propagate": False},
                "uvicorn.error": {"level": "INFO"},
            },
        }
    config["loggers"]["uvicorn.access"] = {"handlers": [], "level": "WARNING",
                                           "propagate": False}
    config["loggers"]["provider"] = {"handlers": ["provider"], "level": "INFO",
                                     "propagate": False}
    # Third parties' warnings and errors (SQLAlchemy's pool, asyncio) through ours, in
    # both formats.
    config["root"] = {"handlers": ["provider"], "level": "WARNING"}
    config.setdefault("filters", {})["withhold"] = {
        "()": "provider.logs.WithholdDatabaseValues"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", ()), "withhold"]
    # The access lines: the same stream and format, written straight (AccessLineHandler);
    # they never carry a traceback, and need no filter.
    config["handlers"]["access"] = {**config["handlers"]["provider"], "filters": [],
                                    "class": "provider.logs.AccessLineHandler"}
    config["loggers"][ACCESS_LOGGER] = {"handlers": ["access"], "level": "INFO",
                                        "propagate": False}
    return config
