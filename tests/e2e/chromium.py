"""Debian's Chromium driven by Playwright (Playwright's own browser download does not
work on our machines): where it is, how it is started, and the skip or failure when it
is missing (CI must run the browser tests: scripts/ensure-chromium.sh installs it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 30_000


def require_chromium() -> None:
    """Call at module level, before importing playwright."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing; CI must run the browser tests "
                    "(scripts/ensure-chromium.sh installs it)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium, or "
                "scripts/ensure-chromium.sh); the browser tests need it",
                allow_module_level=True)
