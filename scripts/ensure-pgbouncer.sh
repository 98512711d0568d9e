#!/usr/bin/env bash
# Make sure Debian's PgBouncer is installed for the test that runs two provider servers
# through it in transaction mode (tests/e2e/test_pgbouncer.py starts its own instance;
# the package's system service is neither needed nor started).
#
# Idempotent and silent when pgbouncer is already there. When it is missing and cannot
# be installed (not root, no apt-get, install failed) it prints a loud warning and exits
# 0: that test is then skipped. Set PROVIDER_REQUIRE_PGBOUNCER=1 (CI does) to make that
# a failure instead.
set -euo pipefail

find_pgbouncer() {
    command -v pgbouncer 2>/dev/null || { [[ -x /usr/sbin/pgbouncer ]] && echo /usr/sbin/pgbouncer; }
}

find_pgbouncer >/dev/null && exit 0

give_up() {
    echo "!!! ======================================================================" >&2
    echo "!!! pgbouncer is missing: $*" >&2
    echo "!!! The PgBouncer test will be SKIPPED. Install it with:" >&2
    echo "!!!     sudo apt-get update && sudo apt-get install -y pgbouncer" >&2
    echo "!!! ======================================================================" >&2
    if [[ "${PROVIDER_REQUIRE_PGBOUNCER:-}" == 1 ]]; then
        echo "!!! PROVIDER_REQUIRE_PGBOUNCER=1: failing." >&2
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

echo "==> pgbouncer is missing; installing Debian's pgbouncer (apt-get)" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
apt_ok=0
for attempt in 1 2; do
    # RUNLEVEL=1: the package's init script is not started by its postinst (the tests
    # start instances of their own).
    if apt-get "${APT_OPTS[@]}" update -qq >"$log" 2>&1 \
        && RUNLEVEL=1 apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends \
            pgbouncer </dev/null >>"$log" 2>&1; then
        apt_ok=1
        break
    fi
    echo "==> apt-get failed (attempt $attempt); last output:" >&2
    tail -n 20 "$log" >&2
    sleep 5
done

if [[ $apt_ok != 1 ]] || ! find_pgbouncer >/dev/null; then
    give_up "apt-get install pgbouncer failed"
fi
echo "==> installed: $("$(find_pgbouncer)" --version 2>/dev/null | head -n 1)" >&2
