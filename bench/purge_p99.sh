#!/usr/bin/env bash
# The refresh grant's latency with and without `provider purge` deleting a large number
# of dead rows (issue 7: p99 during the purge within 2x of p99 without it).
# Usage: bash bench/purge_p99.sh   (knobs below are environment variables)
#
#   1. fresh database `provider_purge_bench` (bench/seed.py setup: migrate, key, client, user)
#   2. DEAD_ROWS expired sessions, each with one refresh token, inserted with
#      INSERT ... SELECT generate_series (seconds, not hours)
#   3. `provider serve --workers 2`; wrk on the refresh grant for DURATION: baseline
#   4. `provider purge --json` started, and the same wrk run at once: during the purge
# Results (wrk output, purge JSON and time, summary) go to bench/results/purge-<UTC stamp>/.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" && pwd)}"
VENV="${VENV:-$REPO/.venv}"
PY="$VENV/bin/python"

DEAD_ROWS="${DEAD_ROWS:-1000000}"     # expired sessions (and as many refresh tokens)
DURATION="${DURATION:-20s}"
WARMUP="${WARMUP:-3s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
WORKERS="${WORKERS:-2}"
RT_COUNT="${RT_COUNT:-12000}"        # live refresh tokens per measurement
PG_URL="${PG_URL:-postgresql://postgres@127.0.0.1:5432}"
DB_URL="$PG_URL/${BENCH_DB:-provider_purge_bench}"
PORT="${PROV_PORT:-8097}"
SERVER_TIMEOUT="${SERVER_TIMEOUT:-1800}"

for tool in wrk curl timeout psql; do
  command -v "$tool" >/dev/null || { echo "purge bench: $tool is required" >&2; exit 2; }
done

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$REPO/bench/results/purge-$STAMP"
mkdir -p "$OUT"
echo "purge bench: results in $OUT"

SERVER_PID=""
PURGE_PID=""
cleanup() {
  [ -n "$PURGE_PID" ] && kill "$PURGE_PID" 2>/dev/null || true
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PROVIDER_ENV=(env -u PROVIDER_REFRESH_REUSE_GRACE -u PROVIDER_ARGON2_MEMORY_COST
              -u PROVIDER_ARGON2_TIME_COST -u PROVIDER_ARGON2_PARALLELISM
              -u PROVIDER_PURGE_BATCH_SIZE -u PROVIDER_PURGE_INTERVAL
              DATABASE_URL="$DB_URL" PROVIDER_KEYS_DIR="$OUT/keys"
              PROVIDER_ISSUER="http://127.0.0.1:$PORT")

# --- seed ---------------------------------------------------------------------------------
(cd "$OUT" && "$PY" "$HERE/seed.py" setup --db-url "$DB_URL" --keys-dir "$OUT/keys" --out "$OUT/bench.json")
cfg() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$OUT/bench.json" "$1"; }
USER_ID="$(cfg user_id)"
CLIENT_ID="$(cfg client_id)"
export BASIC_AUTH="$(cfg basic_auth)"

echo "purge bench: inserting $DEAD_ROWS expired sessions with one refresh token each"
seed_started=$SECONDS
psql "$DB_URL" -Xq -v ON_ERROR_STOP=1 <<SQL
INSERT INTO login_sessions (id, user_id, client_id, scope, amr, auth_time, created_at,
                            expires_at, session_epoch, revoked_at)
SELECT md5('dead-session-' || g)::uuid, '$USER_ID', '$CLIENT_ID', 'profile email api',
       '["pwd"]'::json, now() - interval '100 days', now() - interval '100 days',
       now() - interval '10 days' - g * interval '1 second', 0, NULL
FROM generate_series(1, $DEAD_ROWS) AS g;
INSERT INTO refresh_tokens (id, token_hash, session_id, parent_id, issued_at, expires_at,
                            rotated_at)
SELECT md5('dead-token-' || g)::uuid, decode(md5('dead-hash-' || g) || md5('more-' || g), 'hex'),
       md5('dead-session-' || g)::uuid, NULL, now() - interval '40 days',
       now() - interval '10 days', NULL
FROM generate_series(1, $DEAD_ROWS) AS g;
ANALYZE login_sessions; ANALYZE refresh_tokens;
SQL
echo "purge bench: seeded in $((SECONDS - seed_started)) s"

for name in warm1 base warm2 purge; do
  count=$RT_COUNT; [[ $name == warm* ]] && count=1000
  (cd "$OUT" && "${PROVIDER_ENV[@]}" "$PY" "$HERE/seed.py" tokens --db-url "$DB_URL" \
     --config "$OUT/bench.json" --count "$count" --out "$OUT/rt-$name.txt" >/dev/null)
done

# --- server ---------------------------------------------------------------------------------
timeout --kill-after=10 "$SERVER_TIMEOUT" bash -c 'cd "$1" && shift && exec "$@"' _ "$OUT" \
  "${PROVIDER_ENV[@]}" "$VENV/bin/provider" serve --host 127.0.0.1 --port "$PORT" \
  --workers "$WORKERS" >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
URL="http://127.0.0.1:$PORT"
for _ in $(seq 1 120); do
  curl -fsS -o /dev/null --max-time 2 "$URL/healthz" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -30 "$OUT/server.log" >&2; exit 1; }
  sleep 0.5
done

WRK=(wrk -t"$THREADS" -c"$CONNECTIONS" --latency --timeout 10s -s "$SHARED/refresh_rotate.lua")
p99() { awk '/^ +99%/ {print $2}' "$1"; }
summary() { awk '/Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /Non-2xx/ {e=$NF}
                 END {printf "%s req/s, p50 %s, p99 %s, non-2xx %d", r, p50, p99, e+0}' "$1"; }

RT_FILE="$OUT/rt-warm1.txt" timeout 120 "${WRK[@]}" -d"$WARMUP" "$URL/oauth/token" >/dev/null 2>&1 || true
RT_FILE="$OUT/rt-base.txt" timeout 300 "${WRK[@]}" -d"$DURATION" "$URL/oauth/token" >"$OUT/wrk-base.txt" 2>&1
echo "purge bench: without purge: $(summary "$OUT/wrk-base.txt")"

RT_FILE="$OUT/rt-warm2.txt" timeout 120 "${WRK[@]}" -d"$WARMUP" "$URL/oauth/token" >/dev/null 2>&1 || true
purge_started=$(date +%s.%N)
(cd "$OUT" && "${PROVIDER_ENV[@]}" "$VENV/bin/provider" purge --json >"$OUT/purge.json" 2>"$OUT/purge.err"; \
  echo "$(date +%s.%N)" >"$OUT/purge.ended") &
PURGE_PID=$!
RT_FILE="$OUT/rt-purge.txt" timeout 300 "${WRK[@]}" -d"$DURATION" "$URL/oauth/token" >"$OUT/wrk-purge.txt" 2>&1
wrk_ended=$(date +%s.%N)
echo "purge bench: during purge: $(summary "$OUT/wrk-purge.txt")"
wait "$PURGE_PID" || { cat "$OUT/purge.err" >&2; exit 1; }
PURGE_PID=""
purge_s=$(echo "$(cat "$OUT/purge.ended") - $purge_started" | bc)
overlap=$( (( $(echo "$(cat "$OUT/purge.ended") >= $wrk_ended" | bc) )) && echo "the whole run" || echo "part of the run")
echo "purge bench: purge took ${purge_s} s (it ran during $overlap): $(cat "$OUT/purge.json")"

{
  echo "date_utc: $STAMP  commit: $(git -C "$REPO" rev-parse --short HEAD)  dead rows: $DEAD_ROWS"
  echo "without purge: $(summary "$OUT/wrk-base.txt")"
  echo "during purge:  $(summary "$OUT/wrk-purge.txt")"
  echo "purge: ${purge_s} s, during $overlap; $(cat "$OUT/purge.json")"
  "$PY" - "$(p99 "$OUT/wrk-base.txt")" "$(p99 "$OUT/wrk-purge.txt")" <<'EOF'
import re, sys
def ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
base, during = ms(sys.argv[1]), ms(sys.argv[2])
print(f"p99 ratio (during / without): {during / base:.2f}x (limit 2x: {'met' if during <= 2 * base else 'NOT met'})")
EOF
} | tee "$OUT/summary.txt"
