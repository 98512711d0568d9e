#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests.
# Playwright's own browser download does not work on our machines, so the tests
# drive the distribution's Chromium instead.
#
# Idempotent and silent when Chromium is already there. When it is missing and
# cannot be installed (not root, no apt-get, install failed) it prints a loud
# warning and exits 0: the browser tests are then skipped. Set
# PROVIDER_REQUIRE_CHROMIUM=1 (CI does) to make that a failure instead.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

[[ -x "$CHROMIUM" ]] && exit 0

give_up() {
    echo "!!! ======================================================================" >&2
    echo "!!! $CHROMIUM is missing: $*" >&2
    echo "!!! Browser tests will be SKIPPED. Install it with:" >&2
    echo "!!!     sudo apt-get update && sudo apt-get install -y chromium" >&2
    echo "!!! ======================================================================" >&2
    if [[ "${PROVIDER_REQUIRE_CHROMIUM:-}" == 1 ]]; then
        echo "!!! PROVIDER_REQUIRE_CHROMIUM=1: failing." >&2
        exit 1
    fi
    exit 0
}

if [[ "$(id -u)" != 0 ]]; then
    give_up "not running as root, so it cannot be installed automatically"
fi
if ! command -v apt-get >/dev/null 2>&1; then
    give_up "apt-get is not available"
fi

export DEBIAN_FRONTEND=noninteractive
# Wait for a concurrent apt/dpkg run instead of failing at once.
APT_OPTS=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)

echo "==> $CHROMIUM is missing; installing Debian's chromium (apt-get)" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
apt_ok=0
for attempt in 1 2; do
    if apt-get "${APT_OPTS[@]}" update -qq >"$log" 2>&1 \
        && apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends \
            chromium fonts-liberation </dev/null >>"$log" 2>&1; then
        apt_ok=1
        break
    fi
    echo "==> apt-get failed (attempt $attempt); last output:" >&2
    tail -n 20 "$log" >&2
    sleep 5
done

if [[ $apt_ok != 1 || ! -x "$CHROMIUM" ]]; then
    give_up "apt-get install chromium failed"
fi
echo "==> installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")" >&2
