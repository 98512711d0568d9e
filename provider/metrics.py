"""Prometheus counters (per process; scrape each worker or aggregate upstream)."""

from prometheus_client import Counter

TOKENS_ISSUED = Counter(
    "provider_tokens_issued_total", "Token responses issued, by grant type", ["grant_type"]
)
OAUTH_ERRORS = Counter(
    "provider_oauth_errors_total", "OAuth error responses, by error code", ["error"]
)
MAIL_FAILURES = Counter("provider_mail_failures_total", "Emails that could not be sent")
