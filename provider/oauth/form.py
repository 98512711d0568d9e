"""Reading OAuth requests: form bodies only, no repeated parameters (RFC 6749 §3.2)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from provider.oauth.errors import InvalidRequest, the_parameter

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 16 * 1024


async def read_form(request: Request) -> dict[str, str]:
    if request.scope.get("query_string"):
        # Credentials and tokens never travel in a URL (RFC 6749 §2.3.1, RFC 6750 §5.3).
        raise InvalidRequest("Parameters must be sent in the request body, not the query.")
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != FORM_TYPE:
        raise InvalidRequest(f"The request body must be {FORM_TYPE}.")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise InvalidRequest("The request body is too large.")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("The request body is not a valid form.") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise InvalidRequest(f"{the_parameter(name)} is repeated.")
        if "\x00" in value:
            raise InvalidRequest(f"{the_parameter(name)} is malformed.")
        form[name] = value
    # RFC 6749 §3.1: parameters sent without a value are treated as omitted.
    return {k: v for k, v in form.items() if v != ""}
