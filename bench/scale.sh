#!/usr/bin/env bash
# Issue 11, "at any table size": the refresh grant and GET /users/me on a small database
# and on one grown to USERS users and REFRESH_ROWS refresh-token rows (mostly rotated or
# dead, as in a long-running deployment), measured alternately in ABBA order, with
# `provider purge` deleting dead rows alongside. Goal: large/small <= 1.2x latency (p50,
# p99) and >= 0.85x throughput.
# Usage: bash bench/scale.sh   (knobs below are environment variables; bench/README.md,
# "Scale (issue 11)", explains the set-up and has the latest figures)
#
#   1. scale_small: bench/seed.py setup (migrate, key, client, the bench user), VACUUM ANALYZE
#   2. scale_large: the same, then bench/seed.py grow (INSERT ... SELECT generate_series,
#      indexes and constraints re-created and checked, VACUUM ANALYZE); prints its timings
#   3. ROUNDS rounds of the blocks small, large, large, small. Per block: fresh refresh
#      tokens of random users (seed.py tokens --random-users), `provider serve --workers 2`,
#      ACCESS_COUNT access tokens from refresh grants (seed.py access), `provider purge`
#      started in the background, then wrk on the refresh grant and on GET /users/me
#      (each after a warm-up); the purge is stopped after the last measurement (or has
#      ended by itself), the server too. Rows deleted: pg_stat_user_tables.n_tup_del.
#   4. bench/scale_report.py: summary.md (per-round figures, large/small ratios, medians)
# Results go to bench/results/scale-<UTC stamp>/.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" && pwd)}"
VENV="${VENV:-$REPO/.venv}"
PY="$VENV/bin/python"

USERS="${USERS:-1000000}"               # users in the large database
REFRESH_ROWS="${REFRESH_ROWS:-10000000}" # refresh_tokens rows grown into the large database
ROUNDS="${ROUNDS:-3}"                    # rounds of small, large, large, small
DURATION="${DURATION:-10s}"              # wrk -d per measurement
WARMUP="${WARMUP:-3s}"                   # unrecorded wrk run before each measurement
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
WORKERS="${WORKERS:-2}"
POOL_SIZE="${POOL_SIZE:-16}"             # PROVIDER_DB_POOL_SIZE per worker (CONNECTIONS / WORKERS)
RT_COUNT="${RT_COUNT:-5000}"             # refresh tokens per refresh measurement
ACCESS_COUNT="${ACCESS_COUNT:-500}"      # distinct access tokens (sessions, users) for /users/me
PURGE="${PURGE:-1}"                      # 0: no purge alongside (to tell its share apart)
PURGE_BATCH="${PURGE_BATCH:-100}"        # PROVIDER_PURGE_BATCH_SIZE (default 1000; README)
PURGE_PAUSE="${PURGE_PAUSE:-0}"          # PROVIDER_PURGE_PAUSE, least seconds between batches
PURGE_SHARE="${PURGE_SHARE:-0.2}"        # PROVIDER_PURGE_SHARE (its default; 1: full speed)
PG_URL="${PG_URL:-postgresql://postgres@127.0.0.1:5432}"
SMALL_DB="${SMALL_DB:-scale_small}"      # both dropped and re-created
LARGE_DB="${LARGE_DB:-scale_large}"
SMALL_PORT="${SMALL_PORT:-8090}"
LARGE_PORT="${LARGE_PORT:-8091}"
KEEP_DBS="${KEEP_DBS:-0}"                # 1: leave both databases (for EXPLAIN); else dropped
SERVER_TIMEOUT="${SERVER_TIMEOUT:-600}"  # hard bound on each server's and purge's life (s)

for tool in wrk curl timeout psql; do
  command -v "$tool" >/dev/null || { echo "scale: $tool is required" >&2; exit 2; }
done
[ -x "$PY" ] || { echo "scale: no virtualenv at $VENV (run make .venv)" >&2; exit 2; }

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="$REPO/bench/results/scale-$STAMP"
mkdir -p "$OUT"
echo "scale: results in $OUT"

# --- our processes: started under `timeout`, stopped by PID ----------------------------------
SERVER_PID=""
PURGE_PID=""
PURGE_WAITER=""
stop_pid() {  # pid: TERM, wait up to 15 s, then KILL its process group
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  if [ -n "$PURGE_PID" ]; then stop_pid "$PURGE_PID"; PURGE_PID=""; fi
  if [ -n "$PURGE_WAITER" ]; then wait "$PURGE_WAITER" 2>/dev/null || true; fi
  if [ -n "$SERVER_PID" ]; then stop_pid "$SERVER_PID"; SERVER_PID=""; fi
  if [ "$KEEP_DBS" != 1 ]; then
    for db in "$SMALL_DB" "$LARGE_DB"; do
      psql "$PG_URL/postgres" -Xq -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" 2>/dev/null || true
    done
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

db_url() { if [ "$1" = small ]; then echo "$PG_URL/$SMALL_DB"; else echo "$PG_URL/$LARGE_DB"; fi; }
db_port() { if [ "$1" = small ]; then echo "$SMALL_PORT"; else echo "$LARGE_PORT"; fi; }
provider_env() {  # small|large: the environment of every provider command on that database
  local port
  port=$(db_port "$1")
  PENV=(env -u PROVIDER_REFRESH_REUSE_GRACE -u PROVIDER_ARGON2_MEMORY_COST
        -u PROVIDER_ARGON2_TIME_COST -u PROVIDER_ARGON2_PARALLELISM
        -u PROVIDER_PASSWORD_HASH_CONCURRENCY -u PROVIDER_PURGE_INTERVAL
        DATABASE_URL="$(db_url "$1")" PROVIDER_KEYS_DIR="$OUT/keys-$1"
        PROVIDER_ISSUER="http://127.0.0.1:$port" PROVIDER_DB_POOL_SIZE="$POOL_SIZE"
        PROVIDER_PURGE_BATCH_SIZE="$PURGE_BATCH" PROVIDER_PURGE_PAUSE="$PURGE_PAUSE"
        PROVIDER_PURGE_SHARE="$PURGE_SHARE")
}

# --- metadata --------------------------------------------------------------------------------
{
  echo "date_utc: $STAMP"
  echo "commit: $(git -C "$REPO" rev-parse --short HEAD) (provider/ $(git -C "$REPO" diff --quiet HEAD -- provider && echo clean || echo dirty))"
  echo "host: $(hostname), $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "postgres: $(psql "$PG_URL/postgres" -XAtc 'SHOW server_version'), shared_buffers $(psql "$PG_URL/postgres" -XAtc 'SHOW shared_buffers'), autovacuum $(psql "$PG_URL/postgres" -XAtc 'SHOW autovacuum')"
  echo "settings: USERS=$USERS REFRESH_ROWS=$REFRESH_ROWS ROUNDS=$ROUNDS wrk -t$THREADS -c$CONNECTIONS -d$DURATION (warm-up $WARMUP), $WORKERS workers, pool $POOL_SIZE, RT_COUNT=$RT_COUNT ACCESS_COUNT=$ACCESS_COUNT PURGE=$PURGE PURGE_BATCH=$PURGE_BATCH PURGE_PAUSE=$PURGE_PAUSE PURGE_SHARE=$PURGE_SHARE"
  echo "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/meta.txt"

# --- the two databases -------------------------------------------------------------------------
for which in small large; do
  (cd "$OUT" && "$PY" "$HERE/seed.py" setup --db-url "$(db_url $which)" --keys-dir "$OUT/keys-$which" \
     --out "$OUT/$which.json")
done
psql "$(db_url small)" -Xq -v ON_ERROR_STOP=1 -c 'VACUUM ANALYZE users' \
  -c 'VACUUM ANALYZE login_sessions' -c 'VACUUM ANALYZE refresh_tokens'
echo "scale: growing $LARGE_DB to $USERS users and $REFRESH_ROWS refresh tokens"
grow_started=$SECONDS
"$PY" "$HERE/seed.py" grow --db-url "$(db_url large)" --config "$OUT/large.json" \
  --users "$USERS" --refresh-rows "$REFRESH_ROWS" | tee "$OUT/grow.txt"
echo "scale: grown in $((SECONDS - grow_started)) s" | tee -a "$OUT/grow.txt"

# --- measuring -------------------------------------------------------------------------------
WRK_ARGS=(-t"$THREADS" -c"$CONNECTIONS" --latency --timeout 10s)
measure() {  # file, url, lua script (env from the caller)
  local file=$1 url=$2 script=$3
  echo "# loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)" >"$file"
  echo "# cpu before: $("$PY" "$HERE/cpu.py" "$SERVER_PID" "$SERVER_DB")" >>"$file"
  timeout 300 wrk "${WRK_ARGS[@]}" -s "$script" -d"$DURATION" "$url" >>"$file" 2>&1 \
    || echo "  !! wrk exited $? ($file)" >&2
  echo "# cpu after: $("$PY" "$HERE/cpu.py" "$SERVER_PID" "$SERVER_DB")" >>"$file"
  awk -v name="$(basename "$file" .txt)" '/Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
       /Non-2xx/ {e=$NF} /Socket errors/ {s=$0}
       END {printf "  %-22s %10s req/s  p50 %-9s p99 %-9s non-2xx %d %s\n", name, r, p50, p99, e+0, s}' "$file"
  grep -h '^thread .*bad=[1-9]' "$file" >&2 || true
}
warm() {  # url, lua script
  timeout 120 wrk "${WRK_ARGS[@]}" -s "$2" -d"$WARMUP" "$1" >/dev/null 2>&1 || true
}
deleted() {  # database url: "sessions tokens" deleted so far (all time)
  psql "$1" -XAt -F' ' -c "SELECT
      (SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = 'login_sessions'),
      (SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = 'refresh_tokens')"
}

block() {  # round, small|large, occurrence in the round (1 or 2)
  local round=$1 which=$2 nth=$3
  local tag="r$round-$which$nth"
  local url port base
  url=$(db_url "$which"); port=$(db_port "$which"); base="http://127.0.0.1:$port"
  provider_env "$which"
  echo "scale: round $round, $which ($nth)"
  for part in warm:1000 rt:"$RT_COUNT" access:"$ACCESS_COUNT"; do
    (cd "$OUT" && "${PENV[@]}" "$PY" "$HERE/seed.py" tokens --random-users --db-url "$url" \
       --config "$OUT/$which.json" --count "${part#*:}" --out "$OUT/$tag-${part%%:*}.tokens" >/dev/null)
  done
  # The tokens just issued are a large part of the small database: its statistics would
  # otherwise say "empty" (autovacuum is off here; in a deployment it analyses as rows come).
  psql "$url" -Xq -v ON_ERROR_STOP=1 -c 'ANALYZE users' -c 'ANALYZE login_sessions' \
    -c 'ANALYZE refresh_tokens'
  SERVER_DB="$url"
  # cwd = results dir, so a developer's ./.env cannot change the measured configuration.
  timeout --kill-after=10 "$SERVER_TIMEOUT" bash -c 'cd "$1" && shift && exec "$@"' _ "$OUT" \
    "${PENV[@]}" "$VENV/bin/provider" serve --host 127.0.0.1 --port "$port" \
    --workers "$WORKERS" >"$OUT/$tag-server.log" 2>&1 &
  SERVER_PID=$!
  local ready=0
  for _ in $(seq 1 120); do
    curl -fsS -o /dev/null --max-time 2 "$base/healthz" 2>/dev/null && { ready=1; break; }
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.5
  done
  [ "$ready" = 1 ] || { echo "scale: server not ready; log:" >&2; tail -30 "$OUT/$tag-server.log" >&2; exit 1; }
  (cd "$OUT" && "$PY" "$HERE/seed.py" access --url "$base" --config "$OUT/$which.json" \
     --rt-file "$OUT/$tag-access.tokens" --out "$OUT/$tag-bearer.tokens" >/dev/null)
  local code
  code=$(curl -sS -o "$OUT/$tag-probe-me.json" -w '%{http_code}' --max-time 10 \
         -H "Authorization: Bearer $(head -1 "$OUT/$tag-bearer.tokens")" "$base/users/me" || echo 000)
  [ "$code" = 200 ] || echo "  !! GET /users/me answered $code: $(head -c 300 "$OUT/$tag-probe-me.json")" >&2

  local before after purge_started purge_state="off" purge_s=""
  before=$(deleted "$url")
  if [ "$PURGE" = 1 ]; then
    purge_started=$(date +%s.%N)
    # The purge's own process (under `timeout`) is stopped by its PID; the subshell around
    # it notes when it ended by itself.
    rm -f "$OUT/$tag-purge.ended"
    (cd "$OUT"
     timeout --kill-after=10 "$SERVER_TIMEOUT" "${PENV[@]}" "$VENV/bin/provider" \
       purge --json >"$OUT/$tag-purge.json" 2>"$OUT/$tag-purge.err" &
     echo $! >"$OUT/$tag-purge.pid"
     rc=0; wait $! || rc=$?
     echo "$(date +%s.%N) $rc" >"$OUT/$tag-purge.ended") &
    PURGE_WAITER=$!
    for _ in $(seq 1 50); do [ -s "$OUT/$tag-purge.pid" ] && break; sleep 0.1; done
    PURGE_PID=$(cat "$OUT/$tag-purge.pid")
  fi
  export BASIC_AUTH
  BASIC_AUTH="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["basic_auth"])' "$OUT/$which.json")"
  RT_FILE="$OUT/$tag-warm.tokens" warm "$base/oauth/token" "$SHARED/refresh_rotate.lua"
  RT_FILE="$OUT/$tag-rt.tokens" measure "$OUT/$tag-refresh.txt" "$base/oauth/token" "$SHARED/refresh_rotate.lua"
  TOKEN_FILE="$OUT/$tag-bearer.tokens" warm "$base/users/me" "$HERE/get_bearer.lua"
  TOKEN_FILE="$OUT/$tag-bearer.tokens" measure "$OUT/$tag-me.txt" "$base/users/me" "$HERE/get_bearer.lua"
  if [ -n "$PURGE_PID" ]; then
    if [ ! -s "$OUT/$tag-purge.ended" ]; then
      purge_state="running at the end"
      purge_s=$(echo "$(date +%s.%N) - $purge_started" | bc)
      stop_pid "$PURGE_PID"
      wait "$PURGE_WAITER" 2>/dev/null || true
    else
      local ended rc
      read -r ended rc <"$OUT/$tag-purge.ended"
      wait "$PURGE_WAITER" 2>/dev/null || true
      purge_state="ended by itself (exit $rc)"
      purge_s=$(echo "$ended - $purge_started" | bc)
      [ "$rc" = 0 ] || { echo "  !! the purge failed:" >&2; head -20 "$OUT/$tag-purge.err" >&2; }
    fi
    PURGE_PID=""; PURGE_WAITER=""
  fi
  stop_pid "$SERVER_PID"; SERVER_PID=""
  sleep 1  # the purge's backend reports its counts when it ends
  after=$(deleted "$url")
  local errors
  errors=$(grep -c -E 'Traceback|ERROR|"level": ?"error"' "$OUT/$tag-server.log" || true)
  "$PY" - "$OUT/blocks.jsonl" "$tag" "$round" "$which" "$nth" "$before" "$after" \
    "$purge_state" "$purge_s" "$errors" <<'EOF'
import json, sys
path, tag, rnd, which, nth, before, after, state, seconds, errors = sys.argv[1:]
b, a = [int(x or 0) for x in before.split()], [int(x or 0) for x in after.split()]
row = {"tag": tag, "round": int(rnd), "db": which, "nth": int(nth), "purge": state,
       "purge_seconds": float(seconds) if seconds else None,
       "deleted_sessions": a[0] - b[0], "deleted_tokens": a[1] - b[1],
       "server_log_errors": int(errors)}
with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")
print(f"  purge: {state}; deleted {row['deleted_sessions']} sessions, "
      f"{row['deleted_tokens']} refresh tokens; server log errors: {errors}")
EOF
}

for round in $(seq 1 "$ROUNDS"); do
  block "$round" small 1
  block "$round" large 1
  block "$round" large 2
  block "$round" small 2
done

echo "loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/meta.txt"
psql "$(db_url large)" -XAt -F' ' -c "SELECT relname, n_live_tup, n_dead_tup, n_tup_del
  FROM pg_stat_user_tables WHERE relname IN ('users', 'login_sessions', 'refresh_tokens')
  ORDER BY relname" >"$OUT/large-tables-after.txt"
echo
"$PY" "$HERE/scale_report.py" "$OUT"
echo "scale: raw output and summary in $OUT"
