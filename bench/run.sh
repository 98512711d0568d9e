#!/usr/bin/env bash
# Load benchmark of provider's token endpoint beside the shared yardstick, in one run.
# Usage: bash bench/run.sh   (or `make bench`); knobs below are environment variables.
# See bench/README.md for what is measured and the latest figures.
#
# Per round: yardstick (2 workers) GET /hello, POST /sign, POST /rotate; stop it. Then
# provider (`provider serve --workers 2`) GET JWKS, client_credentials, refresh_token,
# password, then the raw argon2id verify rate with 2 threads; stop it. Then provider again
# for each algorithm in ALGS (default "ES256 EdDSA"; each with its own keys directory):
# client_credentials, refresh_token; stopped after each. Then the peer, node-oidc-provider
# (2 workers; PEER=0 skips it): JWKS, client_credentials, refresh. Raw output goes to
# bench/results/<UTC timestamp>/, the table to summary.md there.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" && pwd)}"
VENV="${VENV:-$REPO/.venv}"
PY="$VENV/bin/python"

DURATION="${DURATION:-10s}"          # wrk -d per measurement
WARMUP="${WARMUP:-3s}"               # wrk -d of the unrecorded warm-up before each one
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"               # wrk threads (refresh_rotate.lua splits tokens in 2)
WORKERS="${WORKERS:-2}"               # server worker processes (both servers)
ROUNDS="${ROUNDS:-3}"                 # whole sequence repeated; figures are medians
PG_URL="${PG_URL:-postgresql://postgres@127.0.0.1:5432}"
BENCH_DB_URL="$PG_URL/${BENCH_DB:-provider_bench}"   # dropped and re-created each run
YARD_DB_URL="$PG_URL/${YARDSTICK_DB:-yardstick}"
YARD_PORT="${YARD_PORT:-8099}"
PROV_PORT="${PROV_PORT:-8098}"
RT_COUNT="${RT_COUNT:-5000}"          # provider refresh tokens per round
YARD_RT_COUNT="${YARD_RT_COUNT:-20000}"
ARGON2_SECONDS="${ARGON2_SECONDS:-10}"
SERVER_TIMEOUT="${SERVER_TIMEOUT:-900}"  # hard bound on each server's life (seconds)
# Signing algorithms measured beside RS256 (client_credentials and refresh only); "" skips.
ALGS="${ALGS-ES256 EdDSA}"
# The peer: node-oidc-provider from ../shared/bench/nop (auto: when node >= 20 is found;
# PEER=0 skips it). Installed with npm into a cache outside the repository.
PEER="${PEER:-auto}"
PEER_PORT="${PEER_PORT:-8096}"
PEER_DB_URL="$PG_URL/${PEER_DB:-nop_bench}"
PEER_DIR="${PEER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/provider-bench/nop}"
PEER_RT_COUNT="${PEER_RT_COUNT:-5000}"

if ! command -v wrk >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "bench: installing wrk (Debian package)"
  { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null 2>&1 || true
fi
for tool in wrk curl timeout; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required (apt-get install -y $tool)" >&2; exit 2; }
done
for alg in $ALGS; do
  case "$alg" in
    ES256|EdDSA|PS256) ;;
    RS256) echo "bench: ALGS: RS256 is always measured (the main provider block)" >&2; exit 2 ;;
    *) echo "bench: ALGS: unknown algorithm $alg (ES256, EdDSA, PS256)" >&2; exit 2 ;;
  esac
done
[ -x "$PY" ] || { echo "bench: no virtualenv at $VENV (run make .venv)" >&2; exit 2; }
[ -f "$SHARED/yardstick.py" ] || { echo "bench: yardstick not found in $SHARED" >&2; exit 2; }
"$PY" -c "import jwt, cryptography, asyncpg" 2>/dev/null \
  || { echo "bench: the yardstick needs pyjwt[crypto] and asyncpg in $VENV" >&2; exit 2; }

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$REPO/bench/results/$STAMP"
mkdir -p "$OUT"
echo "bench: results in $OUT"

# --- servers: started under `timeout` (own process group), stopped by that PID ---------
SERVER_PID=""
SERVER_DB=""
start_server() {  # log, command...
  local log=$1; shift
  timeout --kill-after=10 "$SERVER_TIMEOUT" "$@" >"$log" 2>&1 &
  SERVER_PID=$!
}
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local pid=$SERVER_PID
  SERVER_PID=""
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
trap stop_server EXIT
trap 'exit 130' INT TERM

wait_ready() {  # url, log
  for _ in $(seq 1 120); do
    curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "bench: server died; log:" >&2; tail -30 "$2" >&2; exit 1; }
    sleep 0.5
  done
  echo "bench: $1 not ready after 60 s; log:" >&2; tail -30 "$2" >&2; exit 1
}

# One request before measuring: a failure shows the body now, not as a silent error count.
probe() {  # name, curl args...
  local name=$1; shift
  local code
  code=$(curl -sS -o "$OUT/probe-$name.json" -w '%{http_code}' --max-time 10 "$@" || echo 000)
  if [ "$code" != 200 ]; then
    echo "  !! $name answered $code: $(head -c 400 "$OUT/probe-$name.json" 2>/dev/null)" >&2
  fi
}

# The access token a probe got must carry the expected "alg" in its JWT header: a server
# that signs with another key's algorithm would make its rows lie, so the run stops.
check_alg() {  # probe name, expected alg
  "$PY" - "$OUT/probe-$1.json" "$2" <<'EOF' || { echo "bench: $1: not signed with $2; stopping" >&2; exit 1; }
import base64, json, sys
path, want = sys.argv[1:]
try:
    with open(path) as f:
        head = json.load(f)["access_token"].split(".")[0]
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
    sys.exit(f"  !! {path}: no JWT access token ({exc!r})")
if header.get("alg") != want:
    sys.exit(f"  !! {path}: access token header {header}, expected alg {want}")
EOF
}

WRK_ARGS=(-t"$THREADS" -c"$CONNECTIONS" --latency --timeout 10s)
measure() {  # round, name, url, [lua script]; lua env (FORM_BODY, BASIC_AUTH, RT_FILE) from the caller
  local round=$1 name=$2 url=$3 script=${4:-}
  local args=("${WRK_ARGS[@]}")
  [ -n "$script" ] && args+=(-s "$SHARED/$script")
  local file="$OUT/r$round-$name.txt"
  echo "# loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)" >"$file"
  echo "# cpu before: $("$PY" "$HERE/cpu.py" "$SERVER_PID" "$SERVER_DB")" >>"$file"
  timeout 300 wrk "${args[@]}" -d"$DURATION" "$url" >>"$file" 2>&1 || echo "  !! wrk exited $? ($name)" >&2
  echo "# cpu after: $("$PY" "$HERE/cpu.py" "$SERVER_PID" "$SERVER_DB")" >>"$file"
  local line
  line=$(awk '/Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
              /Non-2xx/ {e=$NF} /Socket errors/ {s=$0}
              END {printf "%10s req/s  p50 %-9s p99 %-9s non-2xx %s %s", r, p50, p99, e+0, s}' "$file")
  printf '  r%s %-20s %s\n' "$round" "$name" "$line"
  grep -h '^thread .*bad=[1-9]' "$file" >&2 || true
}
warm() {  # url, [lua script]
  local args=("${WRK_ARGS[@]}")
  [ -n "${2:-}" ] && args+=(-s "$SHARED/$2")
  timeout 120 wrk "${args[@]}" -d"$WARMUP" "$1" >/dev/null 2>&1 || true
}

# --- metadata ---------------------------------------------------------------------------
{
  echo "{"
  echo "  \"date_utc\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "  \"host\": \"$(hostname)\","
  echo "  \"cpus\": $(nproc),"
  echo "  \"cpu_model\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//;s/"//g')\","
  echo "  \"kernel\": \"$(uname -r)\","
  echo "  \"python\": \"$("$PY" -c 'import platform; print(platform.python_version())')\","
  echo "  \"postgres\": \"$("$PY" - "$PG_URL/postgres" <<'EOF'
import asyncio, sys, asyncpg
async def main():
    con = await asyncpg.connect(sys.argv[1]); print(await con.fetchval("SHOW server_version")); await con.close()
asyncio.run(main())
EOF
)\","
  echo "  \"wrk\": \"$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)\","
  echo "  \"commit\": \"$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)\","
  echo "  \"dirty\": $(git -C "$REPO" diff --quiet HEAD -- provider 2>/dev/null && echo false || echo true),"
  echo "  \"settings\": \"-t$THREADS -c$CONNECTIONS -d$DURATION, $WORKERS workers, $ROUNDS round(s)\","
  echo "  \"loadavg_before\": \"$(cut -d' ' -f1-3 /proc/loadavg)\""
  echo "}"
} >"$OUT/meta.json"
"$PY" -m pip freeze 2>/dev/null | grep -iE '^(fastapi|starlette|uvicorn|uvloop|httptools|sqlalchemy|asyncpg|joserfc|pyjwt|cryptography|pwdlib|argon2)' >"$OUT/versions.txt" || true

# --- the peer: node-oidc-provider, installed once into $PEER_DIR ----------------------------
if [ "$PEER" = auto ]; then
  if command -v node >/dev/null && command -v npm >/dev/null \
      && [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] \
      && [ -f "$SHARED/nop/server.js" ]; then PEER=1; else PEER=0; fi
fi
if [ "$PEER" = 1 ]; then
  mkdir -p "$PEER_DIR"
  cp "$SHARED"/nop/*.js "$SHARED"/nop/package.json "$PEER_DIR"/
  if [ ! -d "$PEER_DIR/node_modules/oidc-provider" ]; then
    echo "bench: npm install of node-oidc-provider into $PEER_DIR"
    (cd "$PEER_DIR" && timeout 600 npm install --no-audit --no-fund --silent >/dev/null) \
      || { echo "bench: npm install failed: the peer is skipped" >&2; PEER=0; }
  fi
fi
if [ "$PEER" = 1 ]; then
  "$PY" "$HERE/seed.py" peer-db --db-url "$PEER_DB_URL"
  PEER_BASIC="$(printf '%s' 'bench:bench-secret-0123456789abcdef' | base64 -w0)"
  PEER_ENV=(env NODE_ENV=production WORKERS="$WORKERS" NOP_PG_URL="$PEER_DB_URL"
            NOP_PORT="$PEER_PORT" JWKS_FILE="$OUT/nop-jwks.json")
else
  echo "bench: node-oidc-provider is skipped (PEER=0, or no node >= 20 / npm)"
fi

# --- seed -------------------------------------------------------------------------------
echo "bench: seeding $BENCH_DB_URL (production argon2id parameters)"
(cd "$OUT" && "$PY" "$HERE/seed.py" setup --db-url "$BENCH_DB_URL" --keys-dir "$OUT/keys" --out "$OUT/bench.json")
"$PY" "$HERE/seed.py" yardstick-db --db-url "$YARD_DB_URL"
cfg() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$OUT/bench.json" "$1"; }
BASIC="$(cfg basic_auth)"
PASSWORD_FORM="$(cfg password_form)"
CC_FORM="$(cfg client_credentials_form)"

PROVIDER_ENV=(env -u PROVIDER_REFRESH_REUSE_GRACE -u PROVIDER_ARGON2_MEMORY_COST
              -u PROVIDER_ARGON2_TIME_COST -u PROVIDER_ARGON2_PARALLELISM
              -u PROVIDER_PASSWORD_HASH_CONCURRENCY -u PROVIDER_SIGNING_ALG
              -u PROVIDER_KEY_STORE -u PROVIDER_KEY_ROTATION_DAYS
              DATABASE_URL="$BENCH_DB_URL" PROVIDER_KEYS_DIR="$OUT/keys"
              PROVIDER_ISSUER="http://127.0.0.1:$PROV_PORT"
              # One account signs in from 32 connections at once: each attempt holds an
              # account slot while argon2 runs (the throttle reserves before the work).
              PROVIDER_LOGIN_THROTTLE_ACCOUNT="1000000 per minute"
              PROVIDER_LOGIN_THROTTLE_ADDRESS="1000000 per minute")
PROV="http://127.0.0.1:$PROV_PORT"
# One keys directory per other algorithm, its one key active (the server signs with the
# active key's algorithm; PROVIDER_SIGNING_ALG is set too so that it agrees).
for alg in $ALGS; do
  (cd "$OUT" && "$PY" "$HERE/seed.py" keys --db-url "$BENCH_DB_URL" --keys-dir "$OUT/keys-${alg,,}" \
     --alg "$alg")
done

# provider with another signing algorithm: client_credentials and the refresh grant,
# measured like the RS256 ones (fresh tokens, warm-ups, probes); the server is stopped after.
measure_alg() {  # round, alg
  local round=$1 alg=$2
  local tag="${2,,}"
  (cd "$OUT" && "${PROVIDER_ENV[@]}" "$PY" "$HERE/seed.py" tokens --db-url "$BENCH_DB_URL" \
     --config "$OUT/bench.json" --count "$RT_COUNT" --out "$OUT/rt-$round-$tag.txt" >/dev/null)
  (cd "$OUT" && "${PROVIDER_ENV[@]}" "$PY" "$HERE/seed.py" tokens --db-url "$BENCH_DB_URL" \
     --config "$OUT/bench.json" --count 1001 --out "$OUT/rt-warm-$round-$tag.txt" >/dev/null)
  # The first warm-up token is the refresh probe's (the warm-up keeps the other 1,000).
  local probe_rt
  probe_rt="$(head -1 "$OUT/rt-warm-$round-$tag.txt")"
  sed -i 1d "$OUT/rt-warm-$round-$tag.txt"
  SERVER_DB="$BENCH_DB_URL"
  start_server "$OUT/r$round-provider-$tag.log" bash -c 'cd "$1" && shift && exec "$@"' _ "$OUT" \
    "${PROVIDER_ENV[@]}" PROVIDER_KEYS_DIR="$OUT/keys-$tag" PROVIDER_SIGNING_ALG="$alg" \
    "$VENV/bin/provider" serve --host 127.0.0.1 --port "$PROV_PORT" --workers "$WORKERS"
  wait_ready "$PROV/.well-known/jwks.json" "$OUT/r$round-provider-$tag.log"
  probe "client-credentials-$tag" -X POST -H "Authorization: Basic $BASIC" -d "$CC_FORM" \
    "$PROV/oauth/token"
  check_alg "client-credentials-$tag" "$alg"
  probe "refresh-$tag" -X POST -H "Authorization: Basic $BASIC" \
    -d "grant_type=refresh_token&refresh_token=$probe_rt" "$PROV/oauth/token"
  check_alg "refresh-$tag" "$alg"
  export FORM_BODY="$CC_FORM" BASIC_AUTH="$BASIC"
  warm "$PROV/oauth/token" post_form.lua
  measure "$round" "client-credentials-$tag" "$PROV/oauth/token" post_form.lua
  RT_FILE="$OUT/rt-warm-$round-$tag.txt" warm "$PROV/oauth/token" refresh_rotate.lua
  RT_FILE="$OUT/rt-$round-$tag.txt" measure "$round" "refresh-$tag" "$PROV/oauth/token" \
    refresh_rotate.lua
  stop_server
}

for round in $(seq 1 "$ROUNDS"); do
  echo "bench: round $round/$ROUNDS"
  # ---- yardstick ----
  (cd "$OUT" && YARDSTICK_DSN="$YARD_DB_URL" "$PY" "$SHARED/yardstick.py" seed "$YARD_RT_COUNT" "$OUT/yard-rt-$round.txt" >/dev/null)
  (cd "$OUT" && YARDSTICK_DSN="$YARD_DB_URL" "$PY" "$SHARED/yardstick.py" seed 2000 "$OUT/yard-rt-warm-$round.txt" >/dev/null)
  YARD="http://127.0.0.1:$YARD_PORT"
  SERVER_DB="$YARD_DB_URL"
  start_server "$OUT/r$round-yardstick.log" env YARDSTICK_DSN="$YARD_DB_URL" \
    "$VENV/bin/uvicorn" yardstick:app --app-dir "$SHARED" --host 127.0.0.1 --port "$YARD_PORT" \
    --workers "$WORKERS" --no-access-log
  wait_ready "$YARD/hello" "$OUT/r$round-yardstick.log"
  probe yard-sign -X POST -u x:y -d "$CC_FORM" "$YARD/sign"
  warm "$YARD/hello"
  measure "$round" yard-hello "$YARD/hello"
  export FORM_BODY="$CC_FORM" BASIC_AUTH="$BASIC"
  warm "$YARD/sign" post_form.lua
  measure "$round" yard-sign "$YARD/sign" post_form.lua
  RT_FILE="$OUT/yard-rt-warm-$round.txt" warm "$YARD/rotate" refresh_rotate.lua
  RT_FILE="$OUT/yard-rt-$round.txt" measure "$round" yard-rotate "$YARD/rotate" refresh_rotate.lua
  stop_server

  # ---- provider ----
  (cd "$OUT" && "${PROVIDER_ENV[@]}" "$PY" "$HERE/seed.py" tokens --db-url "$BENCH_DB_URL" \
     --config "$OUT/bench.json" --count "$RT_COUNT" --out "$OUT/rt-$round.txt" >/dev/null)
  (cd "$OUT" && "${PROVIDER_ENV[@]}" "$PY" "$HERE/seed.py" tokens --db-url "$BENCH_DB_URL" \
     --config "$OUT/bench.json" --count 1000 --out "$OUT/rt-warm-$round.txt" >/dev/null)
  SERVER_DB="$BENCH_DB_URL"
  # cwd = results dir, so a developer's ./.env cannot change the measured configuration.
  start_server "$OUT/r$round-provider.log" bash -c 'cd "$1" && shift && exec "$@"' _ "$OUT" \
    "${PROVIDER_ENV[@]}" "$VENV/bin/provider" serve --host 127.0.0.1 --port "$PROV_PORT" \
    --workers "$WORKERS"
  wait_ready "$PROV/.well-known/jwks.json" "$OUT/r$round-provider.log"
  probe client-credentials -X POST -H "Authorization: Basic $BASIC" -d "$CC_FORM" "$PROV/oauth/token"
  check_alg client-credentials RS256
  probe password -X POST -H "Authorization: Basic $BASIC" -d "$PASSWORD_FORM" "$PROV/oauth/token"
  warm "$PROV/.well-known/jwks.json"
  measure "$round" jwks "$PROV/.well-known/jwks.json"
  export FORM_BODY="$CC_FORM" BASIC_AUTH="$BASIC"
  warm "$PROV/oauth/token" post_form.lua
  measure "$round" client-credentials "$PROV/oauth/token" post_form.lua
  RT_FILE="$OUT/rt-warm-$round.txt" warm "$PROV/oauth/token" refresh_rotate.lua
  RT_FILE="$OUT/rt-$round.txt" measure "$round" refresh "$PROV/oauth/token" refresh_rotate.lua
  export FORM_BODY="$PASSWORD_FORM"
  measure "$round" password "$PROV/oauth/token" post_form.lua
  # ---- raw argon2id right after the password grant (the provider idles meanwhile) ----
  (cd "$OUT" && "${PROVIDER_ENV[@]}" "$PY" "$HERE/argon2_rate.py" --threads 2 \
     --seconds "$ARGON2_SECONDS" --json "$OUT/r$round-argon2.json" | sed 's/^/  /')
  stop_server

  # ---- provider with the other signing algorithms (ALGS) ----
  for alg in $ALGS; do
    measure_alg "$round" "$alg"
  done

  # ---- the peer: node-oidc-provider doing the same work ----
  if [ "$PEER" = 1 ]; then
    (cd "$PEER_DIR" && "${PEER_ENV[@]}" timeout 300 node seed_refresh_tokens.js "$PEER_RT_COUNT" \
       "$OUT/nop-rt-$round.txt" >/dev/null)
    (cd "$PEER_DIR" && "${PEER_ENV[@]}" timeout 300 node seed_refresh_tokens.js 1000 \
       "$OUT/nop-rt-warm-$round.txt" >/dev/null)
    NOP="http://127.0.0.1:$PEER_PORT"
    SERVER_DB="$PEER_DB_URL"
    start_server "$OUT/r$round-nop.log" bash -c 'cd "$1" && shift && exec "$@"' _ "$PEER_DIR" \
      "${PEER_ENV[@]}" node server.js
    wait_ready "$NOP/jwks" "$OUT/r$round-nop.log"
    probe nop-client-credentials -X POST -H "Authorization: Basic $PEER_BASIC" \
      -d "grant_type=client_credentials&scope=api:read" "$NOP/token"
    warm "$NOP/jwks"
    measure "$round" nop-jwks "$NOP/jwks"
    export FORM_BODY="grant_type=client_credentials&scope=api:read" BASIC_AUTH="$PEER_BASIC"
    warm "$NOP/token" post_form.lua
    measure "$round" nop-client-credentials "$NOP/token" post_form.lua
    RT_FILE="$OUT/nop-rt-warm-$round.txt" warm "$NOP/token" refresh_rotate.lua
    RT_FILE="$OUT/nop-rt-$round.txt" measure "$round" nop-refresh "$NOP/token" refresh_rotate.lua
    stop_server
  fi
done

echo "loadavg_after $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/versions.txt"
echo
"$PY" "$HERE/report.py" "$OUT"
echo "bench: raw output and summary in $OUT"
