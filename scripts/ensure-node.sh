#!/usr/bin/env bash
# Make sure Node.js and npm are there for the interop test with node's openid-client
# (tests/e2e/test_code_flow_clients.py installs openid-client itself, with npm, into a
# cache directory outside the repository).
#
# Idempotent and silent when both are there. When they are missing and cannot be
# installed (not root, no apt-get, install failed) it prints a loud warning and exits 0:
# that test is then skipped. PROVIDER_REQUIRE_NODE=1 (CI sets it) makes that a failure.
set -euo pipefail

command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 && exit 0

give_up() {
    echo "!!! ======================================================================" >&2
    echo "!!! node/npm are missing: $*" >&2
    echo "!!! The openid-client interop test will be SKIPPED. Install them with:" >&2
    echo "!!!     sudo apt-get update && sudo apt-get install -y nodejs npm" >&2
    echo "!!! ======================================================================" >&2
    if [[ "${PROVIDER_REQUIRE_NODE:-}" == 1 ]]; then
        echo "!!! PROVIDER_REQUIRE_NODE=1: failing." >&2
        exit 1
    fi
    exit 0
}

[[ "$(id -u)" == 0 ]] || give_up "not running as root, so they cannot be installed automatically"
command -v apt-get >/dev/null 2>&1 || give_up "apt-get is not available"

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)
echo "==> node/npm missing; installing Debian's nodejs and npm (apt-get)" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { apt-get "${APT_OPTS[@]}" update -qq >"$log" 2>&1 \
        && apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends nodejs npm \
            </dev/null >>"$log" 2>&1; }; then
    tail -n 20 "$log" >&2
    give_up "apt-get install nodejs npm failed"
fi
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || give_up "still missing"
echo "==> installed: node $(node --version), npm $(npm --version)" >&2
