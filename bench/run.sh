#!/usr/bin/env bash
# The lifecycle benchmark on PostgreSQL (fsync on): taskexec over HTTP with internal
# noop workers, against pgbench running the same SQL on the same database (the ceiling).
# Prints figures; never fails on a number. Usage: bench/run.sh [TASKS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-5000}
CONC=${2:-16}
WORKERS=${BENCH_WORKERS:-8}
BIN=$PWD/build/taskexec
LOAD=$PWD/build/bench/load
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)
DIR=$(mktemp -d /tmp/taskexec-bench-XXXXXX)
chmod 755 "$DIR"
AS=()
if [ "$(id -u)" -eq 0 ]; then chown postgres "$DIR"; AS=(runuser -u postgres --); fi
PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
APIPORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SERVER=
cleanup() {
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT

"${AS[@]}" "$PGBIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
"${AS[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/pg.log" -w \
    -o "-p $PORT -k $DIR -c listen_addresses='' -c max_connections=200 -c shared_buffers=256MB" start >/dev/null
PSQL=("$PGBIN/psql" -h "$DIR" -p "$PORT" -U postgres -Atq)
"${PSQL[@]}" -c "CREATE DATABASE bench" postgres
URL="postgresql:///bench?host=$DIR&port=$PORT&user=postgres"

( cd "$DIR" && DATABASE_URL=$URL PORT=$APIPORT EXECUTOR=noop NUM_INTERNAL_WORKERS=$WORKERS \
  LOG_LEVEL=warning HTTP_THREADS=${BENCH_HTTP_THREADS:-16} "$BIN" serve > "$DIR/server.log" 2>&1 ) &
SERVER=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$APIPORT/ready" >/dev/null && break; sleep 0.1; done
API="http://127.0.0.1:$APIPORT"

"$LOAD" throughput "$API" 500 "$CONC" >/dev/null        # warm-up
OURS=$("$LOAD" throughput "$API" "$TASKS" "$CONC")
"$LOAD" latency "$API" 200 >/dev/null
LAT=$("${PSQL[@]}" bench -c "SELECT round((percentile_cont(0.5) WITHIN GROUP (ORDER BY x))::numeric, 2) || ' ' || round((percentile_cont(0.99) WITHIN GROUP (ORDER BY x))::numeric, 2) FROM (SELECT extract(epoch FROM started_at - created_at) * 1000 AS x FROM tasks WHERE problem_id = 'latency') s")
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=

"${PSQL[@]}" bench -c "INSERT INTO workers (id, backend_type, status, last_heartbeat, registered_at) SELECT 'pgb-' || i, 'pgbench', 'idle', now(), now() FROM generate_series(1, 8) i"
cp bench/lifecycle.pgbench "$DIR/" && chmod 644 "$DIR/lifecycle.pgbench"
PGB=$("${AS[@]}" "$PGBIN/pgbench" -n -M prepared -c "$CONC" -j 2 -T 10 -f "$DIR/lifecycle.pgbench" -h "$DIR" -p "$PORT" -U postgres bench 2>"$DIR/pgbench.err" | awk '/^tps/ {print $3; exit}') || true
[ -n "$PGB" ] || { echo "pgbench failed:"; cat "$DIR/pgbench.err"; PGB=0; }
PGB=$(printf "%.0f" "$PGB")

OURS_RATE=$(echo "$OURS" | awk '{for (i=1;i<=NF;i++) if ($i=="lifecycle_per_s") print $(i+1)}')
SUBMIT_RATE=$(echo "$OURS" | awk '{for (i=1;i<=NF;i++) if ($i=="submit_per_s") print $(i+1)}')
RATIO=$(awk -v a="$OURS_RATE" -v b="$PGB" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
read -r P50 P99 <<<"$LAT"
echo
echo "taskexec lifecycle benchmark on PostgreSQL ($(nproc) cores, fsync on, $CONC HTTP clients, $WORKERS noop workers, $TASKS tasks)"
printf '%-44s %12s\n' "figure" "value"
printf '%-44s %12s\n' "HTTP submits/s" "$SUBMIT_RATE"
printf '%-44s %12s\n' "lifecycles/s (HTTP create -> claim -> complete)" "$OURS_RATE"
printf '%-44s %12s\n' "pgbench, same SQL, lifecycles/s (ceiling)" "$PGB"
printf '%-44s %12s\n' "ratio to the ceiling" "$RATIO"
printf '%-44s %12s\n' "submit-to-start p50 (ms, idle worker)" "$P50"
printf '%-44s %12s\n' "submit-to-start p99 (ms, idle worker)" "$P99"
