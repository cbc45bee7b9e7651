#!/usr/bin/env bash
# Load comparison: chat-gateway against nginx as a plain re-signing reverse proxy, both in front
# of the same TLS upstream stand-in, everything on 127.0.0.1. See benches/load/README.md.
#
#   bash benches/load/run.sh                      # full run (~3 minutes at the defaults)
#   DURATION=3 ROUNDS=1 DURATION_SINGLE=2 DURATION_HIGH=2 bash benches/load/run.sh  # smoke, ~40 s
#
# Settings (environment variables, defaults in brackets):
#   DURATION [10]       seconds of each measured 64-connection run
#   ROUNDS [3]          rounds; each round runs every target once, the order alternating
#   WARMUP [1]          seconds of unmeasured load on a fresh proxy before each measured run
#   CONNS [64]          connections of the main run
#   DURATION_SINGLE [5] seconds of each 1-connection run (latency added per request)
#   CONNS_HIGH [1000]   connections of the high-connection run (peak RSS)
#   DURATION_HIGH [5]   seconds of each high-connection run
#   SCENARIOS ["main single high"]  which of the three to run
#   PROFILE [0]         seconds of `perf record` of the gateway under the main load, after
#                       the scenarios (0: no profile); needs perf (Debian: linux-perf)
#   PROFILE_BIN []      gateway binary to profile (default: GATEWAY_BIN); e.g. one built with
#                       debug line tables for better attribution
#   UPSTREAM_PORT [18443] NGINX_PORT [18180] GATEWAY_PORT [18181] GATEWAY_ADMIN_PORT [18190]
#   PROXY_CPU [0] WRK_CPU [1]   CPUs for taskset: proxies and upstream, and wrk
#   GATEWAY_BIN [target/release/chat-gateway]  built with `cargo build --release` if BUILD=1
#   BUILD [0]           run `cargo build --release` first
#   GATEWAY_RUST_LOG [warn]  the gateway's RUST_LOG; "info" (its default) adds one access-log
#                       line per request, written to a file in the work directory
#   GATEWAY_WORKERS []  server.worker_threads for the gateway (unset: the key is not written,
#                       so the gateway's default applies)
#   LOAD_GROUPS [1024]  requests cycle through this many groups (live-0 ..), so none is hot and
#                       coalescing has nothing to merge; 0: every request sends LOAD_BODY
#   RATE [1000000]      every rate_limit key (per second and burst) of the gateway
#   UPSTREAM_H2 [0]     1: the upstream also offers HTTP/2 by ALPN. nginx proxies to it over
#                       HTTP/1.1 either way (proxy_pass cannot speak HTTP/2); the gateway then
#                       multiplexes its requests on HTTP/2 connections
#   REDIS [0]           1: also measure the gateway with [rate_limit] backend = "redis" (target
#                       gateway-redis, in the main and single scenarios) against a redis-server
#                       this script starts on 127.0.0.1:REDIS_PORT [18379], pinned to REDIS_CPU
#                       [WRK_CPU] (off the proxy's CPU, as a Redis on another host would be);
#                       reports the latency it adds, req/s against backend = "local", and Redis
#                       commands per second (INFO commandstats) against upstream calls per second
#   REDIS_MODE [standalone] "cluster": that Redis is a 3-master Redis Cluster on REDIS_PORT,
#                       REDIS_PORT+1 and REDIS_PORT+2 (all pinned to REDIS_CPU), the gateway's
#                       redis_mode = "cluster" with the three as seeds; the round trip alone is
#                       measured against the master that holds the measuring key's slot, and
#                       the commands are added up over the three masters
#   REDIS_TIMEOUT [50ms] the gateway's rate_limit.redis_timeout for that target
#   REDIS_RTT_N [20000] checks of the round trip to Redis alone, after each single round: the
#                       gateway's script run by redis-benchmark over 1 connection from
#                       PROXY_CPU, no gateway in the path (the floor of the latency it adds)
#                       and again by benches/redis_round_trip.rs (built here), once back to back
#                       and once paced at one check per the round's gateway-redis p50 (the
#                       gateway's own pace at one connection: on a VM an idle CPU wakes slower)
#   TRACING [0]         1: also measure the gateway with every request traced (target
#                       gateway-traced, main scenario: [tracing] sample_ratio = 1), its spans
#                       exported over OTLP/HTTP to a sink the upstream nginx serves on
#                       127.0.0.1:TRACE_PORT [18318] (answers 200, keeps nothing); reports req/s
#                       and CPU per request against the same gateway without [tracing]
#   OUT []              also write the result tables (markdown) to this file
#   KEEP [0]            keep the work directory (configs, logs, raw wrk output, perf data)
#
# Exit status: 0 when every run was clean; 3 when any run saw a non-2xx answer, a 2xx that was
# not the upstream's OK envelope, or a socket error (such a comparison is not valid); 1 or 2 when
# it could not run (missing tool, port taken, a process that would not start).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-64}
DURATION_SINGLE=${DURATION_SINGLE:-5}
CONNS_HIGH=${CONNS_HIGH:-1000}
DURATION_HIGH=${DURATION_HIGH:-5}
SCENARIOS=${SCENARIOS:-main single high}
PROFILE=${PROFILE:-0}
UPSTREAM_PORT=${UPSTREAM_PORT:-18443}
NGINX_PORT=${NGINX_PORT:-18180}
GATEWAY_PORT=${GATEWAY_PORT:-18181}
GATEWAY_ADMIN_PORT=${GATEWAY_ADMIN_PORT:-18190}
PROXY_CPU=${PROXY_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
GATEWAY_BIN=${GATEWAY_BIN:-$REPO/target/release/chat-gateway}
PROFILE_BIN=${PROFILE_BIN:-$GATEWAY_BIN}
BUILD=${BUILD:-0}
OUT=${OUT:-}
KEEP=${KEEP:-0}
GATEWAY_RUST_LOG=${GATEWAY_RUST_LOG:-warn}
GATEWAY_WORKERS=${GATEWAY_WORKERS:-}
REDIS=${REDIS:-0}
REDIS_PORT=${REDIS_PORT:-18379}
REDIS_TIMEOUT=${REDIS_TIMEOUT:-50ms}
REDIS_MODE=${REDIS_MODE:-standalone}
TRACING=${TRACING:-0}
TRACE_PORT=${TRACE_PORT:-18318}
case $REDIS_MODE in standalone|cluster) ;; *) echo "run.sh: REDIS_MODE must be standalone or cluster" >&2; exit 2 ;; esac
REDIS_PORTS=("$REDIS_PORT")
if [ "$REDIS_MODE" = cluster ]; then REDIS_PORTS=("$REDIS_PORT" $((REDIS_PORT + 1)) $((REDIS_PORT + 2))); fi
REDIS_CPU=${REDIS_CPU:-$WRK_CPU}
REDIS_RTT_N=${REDIS_RTT_N:-20000}

SDKAPPID=1400000000
IDENTIFIER=administrator
API_PATH=/v4/group_open_http_svc/update_group_counter
# Each request to the next of LOAD_GROUPS groups (no two in flight share one, so coalescing
# merges nothing: the cost of the pipeline with it on and no hot group); 0: LOAD_BODY as it is.
LOAD_GROUPS=${LOAD_GROUPS:-1024}
BODY=${LOAD_BODY:-'{"GroupId":"live-1","GroupCounter":[{"Key":"likes","Value":1}],"Mode":"Increase"}'}
OK_ENVELOPE='{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","GroupCounter":[{"Key":"likes","Value":1}]}'
# Rate limits high enough that the benchmark is never limited (it reaches ~40 000 req/s at
# most). 1 000 000 because builds before 2026-11-26 refused anything larger.
RATE=${RATE:-1000000}
UPSTREAM_H2=${UPSTREAM_H2:-0}
if [ "$UPSTREAM_H2" = 1 ]; then UPSTREAM_LISTEN_OPTS="ssl http2"; else UPSTREAM_LISTEN_OPTS="ssl"; fi

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi

say() { printf '%s\n' "$*" >&2; }
die() { say "run.sh: $*"; exit 2; }

for v in DURATION ROUNDS WARMUP CONNS DURATION_SINGLE CONNS_HIGH DURATION_HIGH PROFILE RATE \
         UPSTREAM_PORT NGINX_PORT GATEWAY_PORT GATEWAY_ADMIN_PORT PROXY_CPU WRK_CPU REDIS_PORT REDIS_CPU; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
[ "$ROUNDS" -ge 1 ] && [ "$DURATION" -ge 1 ] || die "ROUNDS and DURATION must be at least 1"
for s in $SCENARIOS; do
  case $s in main|single|high) ;; *) die "unknown scenario '$s' (main, single, high)";; esac
done

# ---------------------------------------------------------------------------------------------
# Tools. Missing Debian packages are installed when running as root.
# ---------------------------------------------------------------------------------------------
SYSTEM_NGINX_NOTE=""
install_missing() {
  local need=()
  command -v nginx >/dev/null || need+=(nginx)
  command -v wrk >/dev/null || need+=(wrk)
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  command -v taskset >/dev/null || need+=(util-linux)
  command -v ss >/dev/null || need+=(iproute2)
  if [ "$PROFILE" -gt 0 ] && ! command -v perf >/dev/null; then need+=(linux-perf); fi
  if [ "$REDIS" = 1 ]; then
    command -v redis-server >/dev/null || need+=(redis-server)
    command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null || need+=(redis-tools)
  fi
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    die "missing: ${need[*]}; install them (apt-get install ${need[*]}) or run as root"
  fi
  local had_system_nginx=0
  if [ -s /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    had_system_nginx=1
  fi
  say "==> installing missing Debian packages with apt-get: ${need[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
  # Debian's nginx package starts a system nginx on install where services may start. This
  # benchmark runs its own nginx instances only: stop the one the install just started.
  if [ $had_system_nginx -eq 0 ] && [ -s /run/nginx.pid ] &&
     kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    local sys_pid
    sys_pid=$(cat /run/nginx.pid)
    if command -v service >/dev/null && service nginx stop >&2 2>/dev/null; then
      SYSTEM_NGINX_NOTE="the nginx package install started a system nginx (pid $sys_pid); stopped it with 'service nginx stop'"
    else
      kill -TERM "$sys_pid" 2>/dev/null || true
      SYSTEM_NGINX_NOTE="the nginx package install started a system nginx (pid $sys_pid); stopped it with SIGTERM to the master in /run/nginx.pid"
    fi
    say "==> $SYSTEM_NGINX_NOTE"
  fi
}
install_missing
NGINX_BIN=$(command -v nginx)
WRK_BIN=$(command -v wrk)

if [ "$BUILD" = 1 ]; then
  say "==> cargo build --release"
  (cd "$REPO" && cargo build --release >&2)
fi
[ -x "$GATEWAY_BIN" ] || die "no gateway binary at $GATEWAY_BIN (cargo build --release, or BUILD=1)"
RTT_BIN=""
if [ "$REDIS" = 1 ]; then
  say "==> cargo bench --bench redis_round_trip --no-run (the round trip alone, paced)"
  RTT_BIN=$(cd "$REPO" && cargo bench --bench redis_round_trip --no-run 2>&1 |
              grep -o 'target/release/deps/redis_round_trip-[0-9a-f]*' | tail -n 1)
  [ -n "$RTT_BIN" ] && RTT_BIN=$REPO/$RTT_BIN
fi
if [ "$PROFILE" -gt 0 ]; then
  [ -x "$PROFILE_BIN" ] || die "no binary to profile at $PROFILE_BIN"
fi

NCPU=$(nproc)
[ "$PROXY_CPU" -lt "$NCPU" ] && [ "$WRK_CPU" -lt "$NCPU" ] ||
  die "PROXY_CPU=$PROXY_CPU / WRK_CPU=$WRK_CPU: this machine has CPUs 0-$((NCPU - 1))"
CLK_TCK=$(getconf CLK_TCK)

# 1000 connections need more than the usual 1024 descriptors (wrk, the proxy, the upstream).
want_fd=$((CONNS_HIGH * 3 + 1024))
[ "$want_fd" -lt 16384 ] && want_fd=16384
hard_fd=$(ulimit -Hn)
if [ "$hard_fd" != unlimited ] && [ "$hard_fd" -lt "$want_fd" ]; then want_fd=$hard_fd; fi
ulimit -n "$want_fd" 2>/dev/null || say "run.sh: could not raise ulimit -n to $want_fd"
FD_LIMIT=$(ulimit -n)

# ---------------------------------------------------------------------------------------------
# Ports: refuse to run if any is taken, rather than load something else.
# ---------------------------------------------------------------------------------------------
port_taken() {
  if ss -Htln "sport = :$1" 2>/dev/null | grep -q .; then return 0; fi
  # Anything answering a connect on 127.0.0.1 counts as taken too.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
  return 1
}
ports=("$UPSTREAM_PORT" "$NGINX_PORT" "$GATEWAY_PORT" "$GATEWAY_ADMIN_PORT")
if [ "$REDIS" = 1 ]; then ports+=("${REDIS_PORTS[@]}"); fi
if [ "$TRACING" = 1 ]; then ports+=("$TRACE_PORT"); fi
# A cluster node also listens on its port + 10000 (the cluster bus).
if [ "$REDIS" = 1 ] && [ "$REDIS_MODE" = cluster ]; then
  for p in "${REDIS_PORTS[@]}"; do ports+=($((p + 10000))); done
fi
[ "$(printf '%s\n' "${ports[@]}" | sort -u | wc -l)" -eq ${#ports[@]} ] || die "the ports must differ"
for p in "${ports[@]}"; do
  if port_taken "$p"; then
    die "port $p on 127.0.0.1 is taken (ss -ltnp 'sport = :$p'); refusing to run. Pick others with UPSTREAM_PORT, NGINX_PORT, GATEWAY_PORT, GATEWAY_ADMIN_PORT."
  fi
done

# ---------------------------------------------------------------------------------------------
# Work directory, processes, cleanup.
# ---------------------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/chat-gateway-load.XXXXXX)
# Every process this script started (nginx masters and workers, the gateway, perf), with the
# command name it had when registered: nothing is signalled unless it still has that name, so a
# PID reused by some other process is never touched.
declare -A STARTED=()
UPSTREAM_PID=""; UPSTREAM_WORKER=""
PROXY_PIDS=(); RSS_PID=""; LISTEN=""; NGINX_MASTER_KB=0; GW_RUN=0
ANY_INVALID=0
NOISY=0

register() {        # register PID...
  local pid
  for pid in "$@"; do
    STARTED[$pid]=$(cat "/proc/$pid/comm" 2>/dev/null || echo '?')
  done
}
stop_pid() {        # stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL
  local pid=$1 i
  local want=${STARTED[$pid]:-}
  unset "STARTED[$pid]"
  [ -n "$want" ] || return 0
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$want" ] || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$want" ]; then
    say "run.sh: pid $pid ($want) did not stop on SIGTERM; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  # perf, then the proxy, then the upstream; an nginx master before its worker (a worker
  # stopped alone would be replaced by its master).
  for i in "${!STARTED[@]}"; do
    if [ "${STARTED[$i]}" = perf ]; then stop_pid "$i"; fi
  done
  if [ ${#PROXY_PIDS[@]} -gt 0 ]; then stop_proxy; fi
  if [ -n "$UPSTREAM_PID" ]; then stop_pid "$UPSTREAM_PID"; fi
  if [ -n "$UPSTREAM_WORKER" ]; then stop_pid "$UPSTREAM_WORKER"; fi
  for i in "${!STARTED[@]}"; do stop_pid "$i"; done
  if [ "$KEEP" = 1 ]; then
    say "==> work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ticks() {           # ticks PID...: utime+stime of the processes (all threads), in clock ticks
  local total=0 pid s f
  for pid in "$@"; do
    s=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    s=${s##*) }
    read -r -a f <<<"$s"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}
uticks() {          # uticks PID...: utime only
  local total=0 pid s f
  for pid in "$@"; do
    s=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    s=${s##*) }
    read -r -a f <<<"$s"
    total=$((total + f[11]))
  done
  echo "$total"
}
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
children() {        # the child PIDs, space-separated, no trailing space
  local c
  c=$(cat "/proc/$1/task/$1/children" 2>/dev/null || true)
  echo $c
}

wait_port() {       # wait_port PORT PID: until PORT listens, while PID lives (10 s at most)
  local i
  for i in $(seq 100); do
    kill -0 "$2" 2>/dev/null || return 1
    ss -Htln "sport = :$1" 2>/dev/null | grep -q . && return 0
    sleep 0.1
  done
  return 1
}
wait_port_free() {  # a restarted proxy must find its port free again, or we stop
  local i
  for i in $(seq 50); do
    port_taken "$1" || return 0
    sleep 0.1
  done
  die "port $1 is still taken after stopping our process on it; refusing to go on"
}

# ---------------------------------------------------------------------------------------------
# Certificate, key, configs.
# ---------------------------------------------------------------------------------------------
say "==> work directory $WORK"
# Run a private copy: target/release/ may be rebuilt while this runs (cargo build, cargo bench).
GATEWAY_SRC=$GATEWAY_BIN
GATEWAY_INFO="$(stat -c '%s bytes, built %y' "$GATEWAY_SRC" | cut -d. -f1) UTC, sha256 $(sha256sum "$GATEWAY_SRC" | cut -c1-12)"
if readelf -S "$GATEWAY_SRC" 2>/dev/null | grep -q '\.debug_info'; then GATEWAY_INFO+=", with debug info"; fi
cp "$GATEWAY_SRC" "$WORK/chat-gateway"
GATEWAY_BIN=$WORK/chat-gateway
if [ "$PROFILE_BIN" = "$GATEWAY_SRC" ]; then PROFILE_BIN=$GATEWAY_BIN; fi
say "==> gateway: $GATEWAY_SRC ($GATEWAY_INFO), run from a copy"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$WORK/upstream.key" -out "$WORK/upstream.crt" -days 2 \
  -subj "/CN=chat-gateway load upstream" \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "keyUsage=critical,digitalSignature" \
  -addext "extendedKeyUsage=serverAuth" >/dev/null 2>&1 || die "openssl could not make the certificate"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/secret-key"
chmod 600 "$WORK/secret-key"
# nginx signs with a fixed UserSig: a real one, made once with this run's key, so that both
# proxies send the upstream a query of the same length.
USERSIG=$("$GATEWAY_BIN" usersig --sdkappid "$SDKAPPID" --identifier "$IDENTIFIER" \
  --expire 86400 --secret-key-file "$WORK/secret-key") || die "chat-gateway usersig failed"
[[ $USERSIG =~ ^[A-Za-z0-9*_.-]+$ ]] || die "unexpected characters in the UserSig"

render() {          # render TEMPLATE DIR LISTEN_PORT > DIR/nginx.conf
  sed -e "s|@DIR@|$2|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" -e "s|@LISTEN_PORT@|$3|g" \
      -e "s|@UPSTREAM_LISTEN_OPTS@|$UPSTREAM_LISTEN_OPTS|g" \
      -e "s|@CERT@|$WORK/upstream.crt|g" -e "s|@KEY@|$WORK/upstream.key|g" \
      -e "s|@SDKAPPID@|$SDKAPPID|g" -e "s|@IDENTIFIER@|$IDENTIFIER|g" \
      -e "s|@USERSIG@|$USERSIG|g" "$1"
}
mkdir -p "$WORK/upstream" "$WORK/nginx"
render "$HERE/upstream.nginx.conf.in" "$WORK/upstream" "$UPSTREAM_PORT" >"$WORK/upstream/nginx.conf"
if [ "$TRACING" = 1 ]; then
  # The trace sink: one more server in the upstream's http block (its last line closes it).
  sed -i '$d' "$WORK/upstream/nginx.conf"
  cat >>"$WORK/upstream/nginx.conf" <<EOF
    server {
        listen 127.0.0.1:$TRACE_PORT;
        access_log off;
        location = /v1/traces {
            client_max_body_size 16m;
            return 200 '';
        }
    }
}
EOF
fi
render "$HERE/proxy.nginx.conf.in" "$WORK/nginx" "$NGINX_PORT" >"$WORK/nginx/nginx.conf"
"$NGINX_BIN" -t -q -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" -e "$WORK/upstream/error.log" ||
  die "upstream nginx config refused"
"$NGINX_BIN" -t -q -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" ||
  die "proxy nginx config refused"

cat >"$WORK/gateway.toml" <<EOF
# Generated by benches/load/run.sh.
[server]
listen = "127.0.0.1:$GATEWAY_PORT"
admin_listen = "127.0.0.1:$GATEWAY_ADMIN_PORT"
drain_delay = "0s"
shutdown_grace = "2s"
$([ -n "$GATEWAY_WORKERS" ] && echo "worker_threads = $GATEWAY_WORKERS")

[chat]
sdkappid = $SDKAPPID
identifier = "$IDENTIFIER"
endpoint = "https://127.0.0.1:$UPSTREAM_PORT"
secret_key_file = "$WORK/secret-key"
ca_file = "$WORK/upstream.crt"

[rate_limit]
group_per_second = $RATE
group_burst = $RATE
app_per_second = $RATE
app_burst = $RATE
EOF
"$GATEWAY_BIN" check-config --config "$WORK/gateway.toml" >&2 || die "gateway config refused"
if [ "$REDIS" = 1 ]; then
  # The same gateway, its limits in Redis ([rate_limit] is the last section).
  cp "$WORK/gateway.toml" "$WORK/gateway-redis.toml"
  if [ "$REDIS_MODE" = cluster ]; then
    nodes=$(printf '"redis://127.0.0.1:%s", ' "${REDIS_PORTS[@]}")
    printf 'backend = "redis"\nredis_mode = "cluster"\nredis_nodes = [%s]\nredis_timeout = "%s"\n' \
      "${nodes%, }" "$REDIS_TIMEOUT" >>"$WORK/gateway-redis.toml"
  else
    printf 'backend = "redis"\nredis_url = "redis://127.0.0.1:%s/0"\nredis_timeout = "%s"\n' \
      "$REDIS_PORT" "$REDIS_TIMEOUT" >>"$WORK/gateway-redis.toml"
  fi
  "$GATEWAY_BIN" check-config --config "$WORK/gateway-redis.toml" >&2 || die "gateway-redis config refused"
fi
if [ "$TRACING" = 1 ]; then
  cp "$WORK/gateway.toml" "$WORK/gateway-traced.toml"
  printf '\n[tracing]\notlp_endpoint = "http://127.0.0.1:%s"\nsample_ratio = 1.0\n' \
    "$TRACE_PORT" >>"$WORK/gateway-traced.toml"
  "$GATEWAY_BIN" check-config --config "$WORK/gateway-traced.toml" >&2 || die "gateway-traced config refused"
fi

# ---------------------------------------------------------------------------------------------
# Starting and stopping.
# ---------------------------------------------------------------------------------------------
start_upstream() {
  taskset -c "$PROXY_CPU" "$NGINX_BIN" -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" \
    -e "$WORK/upstream/error.log" -g 'daemon off;' </dev/null >>"$WORK/upstream/stdout.log" 2>&1 &
  UPSTREAM_PID=$!
  STARTED[$UPSTREAM_PID]=nginx
  wait_port "$UPSTREAM_PORT" "$UPSTREAM_PID" || die "the upstream nginx did not start (see $WORK/upstream/error.log)"
  register "$UPSTREAM_PID"
  UPSTREAM_WORKER=$(children "$UPSTREAM_PID")
  [ -n "$UPSTREAM_WORKER" ] || die "the upstream nginx has no worker"
  register $UPSTREAM_WORKER
}

REDIS_PID=""
start_redis() {
  local port cluster=()
  for port in "${REDIS_PORTS[@]}"; do
    mkdir -p "$WORK/redis/$port"
    if [ "$REDIS_MODE" = cluster ]; then
      cluster=(--cluster-enabled yes --cluster-config-file "$WORK/redis/$port/nodes.conf")
    fi
    taskset -c "$REDIS_CPU" redis-server --port "$port" --bind 127.0.0.1 --save '' \
      --appendonly no --dir "$WORK/redis/$port" "${cluster[@]}" </dev/null \
      >"$WORK/redis/$port/stdout.log" 2>&1 &
    REDIS_PID=$!
    STARTED[$REDIS_PID]=redis-server
    wait_port "$port" "$REDIS_PID" || die "redis-server did not start (see $WORK/redis/$port/stdout.log)"
    register "$REDIS_PID"
  done
  if [ "$REDIS_MODE" = cluster ]; then
    redis-cli --cluster create $(printf '127.0.0.1:%s ' "${REDIS_PORTS[@]}") --cluster-yes \
      >"$WORK/redis/cluster-create.log" 2>&1 || die "redis-cli --cluster create failed (see $WORK/redis/cluster-create.log)"
    local i
    for i in $(seq 100); do
      redis-cli -p "$REDIS_PORT" cluster info | grep -q '^cluster_state:ok' && return 0
      sleep 0.1
    done
    die "the Redis Cluster did not reach cluster_state:ok"
  fi
}
redis_port_of() {  # redis_port_of KEY: the port of the master that holds KEY's slot
  [ "$REDIS_MODE" = cluster ] || { echo "$REDIS_PORT"; return; }
  local slot
  slot=$(redis-cli -p "$REDIS_PORT" cluster keyslot "$1") || return 1
  redis-cli -p "$REDIS_PORT" cluster nodes | awk -v s="$slot" '
    $3 ~ /master/ { for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1]
                      if (s >= r[1] + 0 && s <= r[2] + 0) { split($2, a, "[:@]"); print a[2]; exit } } }'
}
redis_round_trip() {  # redis_round_trip ROUND: the round trip to Redis alone, for the floor
  # The gateway's script (EVALSHA, the same numbers, one of 1 024 groups at random), from the
  # proxy's CPU over 1 connection, by redis-benchmark: no gateway in the path. Its own key
  # prefix, so that no gateway's budget is touched. Appends "ROUND p50_us p99_us" to
  # redis_rtt.tsv.
  local sha line port
  port=$(redis_port_of '{bench-round-trip}') && [ -n "$port" ] || return 0
  sha=$(redis-cli -p "$port" script load "$(cat "$REPO/src/rate_limit/gcra.lua")") || return 0
  line=$(timeout 60 taskset -c "$PROXY_CPU" redis-benchmark -p "$port" -c 1 -n "$REDIS_RTT_N" \
           -r 1024 --csv evalsha "$sha" 4 '{bench-round-trip}:app:x' '{bench-round-trip}:numbers:app:x' \
           '{bench-round-trip}:group:__rand_int__' '{bench-round-trip}:numbers:group:__rand_int__' \
           1000 999999000 1000 999999000 2>/dev/null | tail -n 1) || return 0
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  awk -F'","' -v r="$1" 'NF == 8 { printf "%s\t%.0f\t%.0f", r, $5 * 1000, $7 * 1000 }' <<<"$line" \
    >>"$WORK/redis_rtt.tsv"
  # The same check from benches/redis_round_trip.rs: back to back, then paced at this round's
  # gateway-redis p50 (one check per request of the gateway at one connection).
  local period back paced
  period=$(awk -F'\t' -v r="$1" 'NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next }
    $1 == "single" && $2 == r && $3 == "gateway-redis" { print $h["p50_us"] }' "$RUNS")
  if [ -x "$RTT_BIN" ] && [ -n "$period" ]; then
    back=$(REDIS_PORT=$port SHA=$sha N=$REDIS_RTT_N PERIOD_US=0 timeout 60 taskset -c "$PROXY_CPU" "$RTT_BIN") || back="- -"
    paced=$(REDIS_PORT=$port SHA=$sha N=$((REDIS_RTT_N / 2)) PERIOD_US=${period%.*} timeout 60 taskset -c "$PROXY_CPU" "$RTT_BIN") || paced="- -"
  else
    back="- -"; paced="- -"; period="-"
  fi
  printf '\t%s\t%s\t%s\n' "${back// /$'\t'}" "${paced// /$'\t'}" "$period" >>"$WORK/redis_rtt.tsv"
}
redis_commands() {  # "CLIENT INSIDE": commands the clients sent (INFO and CONFIG of
  # this script left out) and commands the script ran inside Redis
  # (TIME, MGET, SET), from INFO commandstats, added up over every node
  local port
  for port in "${REDIS_PORTS[@]}"; do redis-cli -p "$port" info commandstats; done | tr -d '\r' |
    awk -F'[:=,]' '
    /^cmdstat_/ { name = substr($1, 9); n = $3
                  if (name ~ /^(time|get|mget|set)$/) inside += n
                  else if (name !~ /^(info|config)/) client += n }
    END { print client + 0, inside + 0 }'
}

# The proxy under test: PROXY_PIDS (all its processes, for CPU time), RSS_PID (whose VmHWM is
# reported: the gateway's only process, nginx's worker) and LISTEN (its port).
start_proxy() {     # start_proxy gateway|gateway-redis|gateway-traced|nginx [BINARY]
  case $1 in
    gateway|gateway-redis|gateway-traced)
      wait_port_free "$GATEWAY_PORT"; wait_port_free "$GATEWAY_ADMIN_PORT"
      GW_RUN=$((GW_RUN + 1))
      RUST_LOG=$GATEWAY_RUST_LOG taskset -c "$PROXY_CPU" "${2:-$GATEWAY_BIN}" serve --config "$WORK/$1.toml" \
        </dev/null >"$WORK/gateway.$GW_RUN.log" 2>&1 &
      local pid=$!
      STARTED[$pid]=chat-gateway
      local i ready=0
      for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        if curl -fsS -o /dev/null "http://127.0.0.1:$GATEWAY_ADMIN_PORT/readyz" 2>/dev/null; then
          ready=1; break
        fi
        sleep 0.1
      done
      [ $ready = 1 ] || die "the gateway did not get ready (see $WORK/gateway.$GW_RUN.log)"
      register "$pid"
      wait_port "$GATEWAY_PORT" "$pid" || die "the gateway is not listening on $GATEWAY_PORT"
      if [ "$1" = gateway-redis ]; then
        for i in $(seq 50); do
          curl -fsS "http://127.0.0.1:$GATEWAY_ADMIN_PORT/metrics" 2>/dev/null |
            grep -q '^chat_gateway_rate_limit_backend_up 1' && break
          sleep 0.1
        done
      fi
      PROXY_PIDS=("$pid"); RSS_PID=$pid; LISTEN=$GATEWAY_PORT
      ;;
    nginx)
      wait_port_free "$NGINX_PORT"
      rm -f "$WORK/nginx/nginx.pid"
      taskset -c "$PROXY_CPU" "$NGINX_BIN" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
        -e "$WORK/nginx/error.log" -g 'daemon off;' </dev/null >>"$WORK/nginx/stdout.log" 2>&1 &
      local pid=$!
      STARTED[$pid]=nginx
      wait_port "$NGINX_PORT" "$pid" || die "the proxy nginx did not start (see $WORK/nginx/error.log)"
      register "$pid"
      local w
      w=$(children "$pid")
      [ -n "$w" ] || die "the proxy nginx has no worker"
      register $w
      local workers
      read -r -a workers <<<"$w"
      PROXY_PIDS=("$pid" "${workers[@]}"); RSS_PID=${workers[0]}; LISTEN=$NGINX_PORT
      NGINX_MASTER_KB=$(status_kb "$pid" VmRSS)
      ;;
  esac
}
stop_proxy() {
  local pid
  for pid in "${PROXY_PIDS[@]}"; do stop_pid "$pid"; done
  PROXY_PIDS=()
}

check_answer() {    # check_answer NAME URL [curl options]: one request, the OK envelope back
  local name=$1 url=$2 got
  shift 2
  got=$(curl -sS --max-time 5 "$@" -X POST -H 'Content-Type: application/json' \
    --data-binary "$BODY" -w '\nHTTP %{http_code}' "$url") || die "$name: request failed"
  if [ "$got" != "$OK_ENVELOPE"$'\n'"HTTP 200" ]; then
    die "$name: unexpected answer: $got"
  fi
  say "    $name: HTTP 200, OK envelope"
}

# ---------------------------------------------------------------------------------------------
# One measured run.
# ---------------------------------------------------------------------------------------------
RUNS="$WORK/runs.tsv"
printf 'scenario\tround\ttarget\tconns\trequests\tseconds\trps\tcpu_us_per_req\tp50_us\tp99_us\thwm_kb\trss_end_kb\tnon2xx\tnot_ok\tsock_err\tupstream_cpu_us_per_req\tupstream_conns\tcpu_busy_pct\tsoftirq_pct\tother_on_proxy_cpu_pct\twrk_cpu_pct\tother_on_wrk_cpu_pct\tthreads\tuser_cpu_us_per_req\tnoisy\tupstream_resumed_pct\n' >"$RUNS"

cpustat() {         # cpustat CPU: user nice system idle iowait irq softirq steal (ticks)
  awk -v c="cpu$1" '$1 == c { print $2, $3, $4, $5, $6, $7, $8, $9 }' /proc/stat
}
conn_lines() { wc -l <"$WORK/upstream/connections.log" 2>/dev/null || echo 0; }

wrk_run() {         # wrk_run URL CONNS SECONDS OUTFILE: wrk pinned to WRK_CPU, bounded in time
  # In the background with `wait`, so that a signal to this script stops it at once (the EXIT
  # trap then stops `timeout`, which passes the signal on to wrk). `times` (a builtin: no fork)
  # before and after gives the CPU time of the reaped children, i.e. of wrk, in OUTFILE.time.
  times >"$4.times0"
  LOAD_BODY="$BODY" LOAD_GROUPS="$LOAD_GROUPS" timeout $(($3 + 30)) taskset -c "$WRK_CPU" "$WRK_BIN" -t1 -c"$2" \
    -d"${3}s" --timeout 5s -s "$HERE/post.lua" "$1" >"$4" 2>&1 &
  local pid=$! rc=0
  STARTED[$pid]=timeout
  wait "$pid" || rc=$?
  unset "STARTED[$pid]"
  times >"$4.times1"
  if [ "$rc" -ne 0 ]; then say "run.sh: wrk failed (exit $rc, see $4):"; cat "$4" >&2; exit 2; fi
  # The second line of `times` is the children's user and system time, e.g. "0m1.250s 0m0.640s".
  awk 'FNR == 2 { gsub(/s/, "", $1); gsub(/s/, "", $2); split($1, u, "m"); split($2, y, "m")
                  t[FILENAME] = u[1] * 60 + u[2] + y[1] * 60 + y[2] }
       END { printf "%.3f\n", t[ARGV[2]] - t[ARGV[1]] }' "$4.times0" "$4.times1" >"$4.time"
}

measure() {         # measure SCENARIO ROUND TARGET CONNS SECONDS
  local scen=$1 round=$2 target=$3 conns=$4 secs=$5 url tag
  tag="$scen.$round.$target"
  if [ "$target" = direct ]; then
    url="https://127.0.0.1:$UPSTREAM_PORT$API_PATH"
    PROXY_PIDS=(); RSS_PID=""
  else
    start_proxy "$target"
    url="http://127.0.0.1:$LISTEN$API_PATH"
  fi
  local c0 u0 u1 p0 p1 pu0 pu1 hwm=0 rss=0 threads=0
  c0=$(conn_lines)
  if [ "$target" != direct ] && [ "$WARMUP" -gt 0 ]; then
    wrk_run "$url" "$conns" "$WARMUP" "$WORK/$tag.warmup.txt"
  fi
  local s0 s1 w0 w1 r0="0 0" r1="0 0"
  if [ "$target" = gateway-redis ]; then r0=$(redis_commands); fi
  s0=$(cpustat "$PROXY_CPU"); w0=$(cpustat "$WRK_CPU")
  p0=$(ticks "${PROXY_PIDS[@]}"); u0=$(ticks "$UPSTREAM_WORKER"); pu0=$(uticks "${PROXY_PIDS[@]}")
  wrk_run "$url" "$conns" "$secs" "$WORK/$tag.txt"
  p1=$(ticks "${PROXY_PIDS[@]}"); u1=$(ticks "$UPSTREAM_WORKER"); pu1=$(uticks "${PROXY_PIDS[@]}")
  s1=$(cpustat "$PROXY_CPU"); w1=$(cpustat "$WRK_CPU")
  if [ "$target" = gateway-redis ]; then r1=$(redis_commands); fi
  if [ -n "$RSS_PID" ]; then
    hwm=$(status_kb "$RSS_PID" VmHWM); rss=$(status_kb "$RSS_PID" VmRSS)
    threads=$(status_kb "$RSS_PID" Threads)
  fi
  if [ "${target#gateway}" != "$target" ]; then
    curl -fsS "http://127.0.0.1:$GATEWAY_ADMIN_PORT/metrics" >"$WORK/$tag.metrics" 2>/dev/null || true
  fi
  if [ "$target" != direct ]; then stop_proxy; fi
  local c1
  c1=$(conn_lines)
  local line
  line=$(grep '^LOADRESULT ' "$WORK/$tag.txt" || true)
  [ -n "$line" ] || { say "run.sh: no result from wrk:"; cat "$WORK/$tag.txt" >&2; exit 2; }
  # shellcheck disable=SC2086
  local requests duration_us non2xx not_ok connect_err read_err write_err timeout_err p50_us p99_us
  eval "$(printf '%s\n' ${line#LOADRESULT } | grep -E '^(requests|duration_us|non2xx|not_ok|connect_err|read_err|write_err|timeout_err|p50_us|p99_us)=')"
  local wrk_cpu
  wrk_cpu=$(cat "$WORK/$tag.txt.time")
  if [ "$target" = gateway-redis ]; then
    # Every request passed the limits (RATE), so each was one upstream call.
    local rc0 ri0 rc1 ri1
    read -r rc0 ri0 <<<"$r0"; read -r rc1 ri1 <<<"$r1"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$scen" "$round" "$requests" "$duration_us" \
      "$((rc1 - rc0))" "$((ri1 - ri0))" >>"$WORK/redis.tsv"
  fi
  local sock=$((connect_err + read_err + write_err + timeout_err))
  awk -v OFS='\t' -v scen="$scen" -v round="$round" -v target="$target" -v conns="$conns" \
      -v n="$requests" -v us="$duration_us" -v dp=$((p1 - p0)) -v dpu=$((pu1 - pu0)) -v du=$((u1 - u0)) -v tck="$CLK_TCK" \
      -v p50="$p50_us" -v p99="$p99_us" -v hwm="$hwm" -v rss="$rss" -v n2="$non2xx" -v nok="$not_ok" \
      -v sock="$sock" -v uc=$((c1 - c0)) -v wcpu="$wrk_cpu" -v thr="$threads" -v s0="$s0" -v s1="$s1" -v w0="$w0" -v w1="$w1" -v isdirect="$([ "$target" = direct ] && echo 1 || echo 0)" \
      'BEGIN {
         s = us / 1e6; rps = (s > 0) ? n / s : 0
         cpu = (n > 0) ? dp / tck * 1e6 / n : 0
         ucpu = (n > 0) ? du / tck * 1e6 / n : 0
         # The proxy CPU as /proc/stat saw it: busy (all but idle and iowait), softirq (not
         # charged to any process: loopback TCP receive work), and time of processes that are
         # neither the proxy nor the upstream (other load: the comparison is then noisy).
         split(s0, a, " "); split(s1, b, " "); tot = 0
         for (i = 1; i <= 8; i++) { d[i] = b[i] - a[i]; tot += d[i] }
         busy = (tot > 0) ? (tot - d[4] - d[5]) / tot * 100 : 0
         sirq = (tot > 0) ? d[7] / tot * 100 : 0
         other = (tot > 0) ? (d[1] + d[2] + d[3] - dp - du) / tot * 100 : 0
         if (other < 0) other = 0
         split(w0, a, " "); split(w1, b, " "); wt = 0
         for (i = 1; i <= 8; i++) { e[i] = b[i] - a[i]; wt += e[i] }
         wpct = (s > 0) ? wcpu / s * 100 : 0
         wother = (wt > 0) ? (e[1] + e[2] + e[3]) / wt * 100 - wpct : 0
         if (wother < 0) wother = 0
         ucpu_p = (n > 0) ? dpu / tck * 1e6 / n : 0
         if (isdirect) { cpu = "-"; ucpu_p = "-"; hwm = "-"; rss = "-"; thr = "-" }
         else { cpu = sprintf("%.1f", cpu); ucpu_p = sprintf("%.1f", ucpu_p) }
         print scen, round, target, conns, n, sprintf("%.2f", s), sprintf("%.0f", rps), cpu,
               p50, p99, hwm, rss, n2, nok, sock, sprintf("%.1f", ucpu), uc,
               sprintf("%.0f", busy), sprintf("%.0f", sirq), sprintf("%.0f", other),
               sprintf("%.0f", wpct), sprintf("%.0f", wother), thr, ucpu_p
       }' >>"$RUNS"
  local flag=""
  if [ "$non2xx" -gt 0 ] || [ "$not_ok" -gt 0 ] || [ "$sock" -gt 0 ]; then
    flag="  << INVALID: non2xx=$non2xx not_ok=$not_ok socket_errors=$sock"
    ANY_INVALID=1
    grep '^LOADSTATUS' "$WORK/$tag.txt" >&2 || true
  fi
  local other_p other_w
  other_p=$(tail -n1 "$RUNS" | cut -f20); other_w=$(tail -n1 "$RUNS" | cut -f22)
  local wrk_p
  wrk_p=$(tail -n1 "$RUNS" | cut -f21)
  # Noisy: other processes took more than 3% of the proxy CPU or 10% of the wrk CPU, or the wrk
  # CPU was so busy (wrk plus others over 90%) that wrk may have been the limit.
  local noisy=0
  if [ "$other_p" -gt 3 ] || [ "$other_w" -gt 10 ] || [ $((wrk_p + other_w)) -gt 90 ]; then
    flag+="  << NOISY: other processes used ${other_p}% of CPU $PROXY_CPU, ${other_w}% of CPU $WRK_CPU"
    NOISY=$((NOISY + 1))
    noisy=1
  fi
  # Share of the upstream connections opened in this run that resumed a TLS session.
  local resumed="-"
  if [ $((c1 - c0)) -gt 0 ]; then
    resumed=$(sed -n "$((c0 + 1)),${c1}p" "$WORK/upstream/connections.log" |
      awk '{ n++ } / reused=r / { r++ } END { printf "%.0f", 100 * r / n }')
  fi
  # The noisy column says whether the run was noisy; the summary leaves noisy runs out.
  sed -i '$ s/$/\t'"$noisy"'\t'"$resumed"'/' "$RUNS"
  say "$(tail -n1 "$RUNS" | awk -F'\t' '{ printf "    %-6s r%s %-7s c=%-4s %7s req/s  cpu %6s us/req  p50 %7.0f us  p99 %7.0f us  hwm %6s kB  cpu'"$PROXY_CPU"' %3s%% (softirq %s%%)  wrk %3s%%", $1, $2, $3, $4, $7, $8, $9, $10, $11, $18, $19, $21 }')$flag"
}

# ---------------------------------------------------------------------------------------------
# Run.
# ---------------------------------------------------------------------------------------------
body_len=$(printf '%s' "$BODY" | wc -c)
say "==> body: $body_len bytes: $BODY"
say "==> load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
start_upstream
say "==> sanity: one request through each"
check_answer "upstream (direct, TLS)" "https://127.0.0.1:$UPSTREAM_PORT$API_PATH" --cacert "$WORK/upstream.crt"
start_proxy nginx
check_answer "nginx -> upstream" "http://127.0.0.1:$NGINX_PORT$API_PATH?caller=query"
stop_proxy
start_proxy gateway
check_answer "chat-gateway -> upstream" "http://127.0.0.1:$GATEWAY_PORT$API_PATH?caller=query"
stop_proxy
if [ "$REDIS" = 1 ]; then
  start_redis
  start_proxy gateway-redis
  check_answer "chat-gateway (backend = redis) -> upstream" "http://127.0.0.1:$GATEWAY_PORT$API_PATH?caller=query"
  stop_proxy
fi

est=0
for scen in $SCENARIOS; do
  case $scen in
    main)   est=$((est + ROUNDS * (2 + REDIS + TRACING) * (WARMUP + DURATION + 2))) ;;
    single) est=$((est + ROUNDS * ((3 + REDIS) * DURATION_SINGLE + (2 + REDIS) * (WARMUP + 2)))) ;;
    high)   est=$((est + ROUNDS * 2 * (WARMUP + DURATION_HIGH + 3))) ;;
  esac
done
[ "$PROFILE" -gt 0 ] && est=$((est + 3 * (PROFILE + WARMUP + 3)))
say "==> expected duration: about ${est}s"
T0=$(date +%s)
order() {
  local r=""
  if [ "$REDIS" = 1 ] && [ "${2:-}" != high ]; then r=" gateway-redis"; fi
  if [ "$TRACING" = 1 ] && [ "${2:-}" = main ]; then r="$r gateway-traced"; fi
  if [ $(($1 % 2)) = 1 ]; then echo "gateway nginx$r"; else echo "nginx gateway$r"; fi
}
for scen in $SCENARIOS; do
  case $scen in
    main)   say "==> main: $CONNS connections, ${DURATION}s per run (+${WARMUP}s warm-up), $ROUNDS rounds" ;;
    single) say "==> single: 1 connection, ${DURATION_SINGLE}s per run, $ROUNDS rounds" ;;
    high)   say "==> high: $CONNS_HIGH connections, ${DURATION_HIGH}s per run (+${WARMUP}s warm-up), $ROUNDS rounds" ;;
  esac
  for round in $(seq "$ROUNDS"); do
    case $scen in
      main)   for t in $(order "$round" main); do measure main "$round" "$t" "$CONNS" "$DURATION"; done ;;
      single) measure single "$round" direct 1 "$DURATION_SINGLE"
              for t in $(order "$round" single); do measure single "$round" "$t" 1 "$DURATION_SINGLE"; done
              if [ "$REDIS" = 1 ]; then redis_round_trip "$round"; fi ;;
      high)   for t in $(order "$round" high); do measure high "$round" "$t" "$CONNS_HIGH" "$DURATION_HIGH"; done ;;
    esac
  done
done
ELAPSED=$(($(date +%s) - T0))

# ---------------------------------------------------------------------------------------------
# Profile (optional): perf record of the gateway under the main load.
# ---------------------------------------------------------------------------------------------
PROFILE_NOTE=""
syscall_run() {     # syscall_run gateway|nginx: syscalls and context switches per request
  local t=$1 url ids
  start_proxy "$t"
  url="http://127.0.0.1:$LISTEN$API_PATH"
  wrk_run "$url" "$CONNS" "$WARMUP" "$WORK/syscalls.$t.warmup.txt"
  ids=$(IFS=,; echo "${PROXY_PIDS[*]}")
  perf stat -x, -e 'syscalls:sys_enter_*' -e context-switches,cpu-migrations -p "$ids" \
    -o "$WORK/syscalls.$t.csv" -- sleep $((PROFILE + 1)) >/dev/null 2>&1 &
  local spid=$!
  STARTED[$spid]=perf
  sleep 0.5
  register "$spid"
  wrk_run "$url" "$CONNS" "$PROFILE" "$WORK/syscalls.$t.txt"
  wait "$spid" || true
  unset "STARTED[$spid]"
  stop_proxy
}
if [ "$PROFILE" -gt 0 ]; then
  say "==> profile: perf record of the gateway ($PROFILE_BIN) under $CONNS connections for ${PROFILE}s"
  start_proxy gateway "$PROFILE_BIN"
  gw=${PROXY_PIDS[0]}
  wrk_run "http://127.0.0.1:$GATEWAY_PORT$API_PATH" "$CONNS" "$WARMUP" "$WORK/profile.warmup.txt"
  # cpu-clock: hardware counters are often not available in VMs. DWARF unwinding needs no frame
  # pointers (the release build has none); its stack copies are large, so keep the rate moderate.
  perf record -e cpu-clock -F 1999 --call-graph dwarf,8192 -p "$gw" -o "$WORK/perf.data" \
    -- sleep $((PROFILE + 1)) >"$WORK/perf.record.log" 2>&1 &
  perf_pid=$!
  STARTED[$perf_pid]=perf
  sleep 0.5
  register "$perf_pid"
  wrk_run "http://127.0.0.1:$GATEWAY_PORT$API_PATH" "$CONNS" "$PROFILE" "$WORK/profile.txt"
  wait "$perf_pid" || true
  unset "STARTED[$perf_pid]"
  stop_proxy
  say "    $(grep '^LOADRESULT' "$WORK/profile.txt" || true)"
  say "    $(grep -o 'Captured.*' "$WORK/perf.record.log" || true)"
  perf report -i "$WORK/perf.data" --no-children -F overhead,sym --stdio -g none \
    --percent-limit 0.3 2>/dev/null | sed 's/  *$//' >"$WORK/perf.self.txt" || true
  perf report -i "$WORK/perf.data" --children -F children,self,sym --stdio -g none \
    --percent-limit 1 2>/dev/null | sed 's/  *$//' >"$WORK/perf.children.txt" || true
  if command -v python3 >/dev/null; then
    perf script -i "$WORK/perf.data" -F comm,tid,period,ip,sym,dso 2>/dev/null |
      python3 "$HERE/perf_categories.py" >"$WORK/perf.categories.md" || true
  fi
  say "==> syscalls per request under $CONNS connections (perf stat, ${PROFILE}s each)"
  for t in gateway nginx; do syscall_run "$t"; done
  PROFILE_NOTE="perf data and reports in $WORK (perf.data, perf.self.txt, perf.children.txt, perf.categories.md, syscalls.*.csv); KEEP=1 keeps them"
  say "==> $PROFILE_NOTE"
fi

# ---------------------------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------------------------
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() {             # col SCENARIO TARGET COLUMN-NAME: the values of one column, from the clean
  # (not noisy) runs of that scenario and target; from all of them when none was clean.
  awk -F'\t' -v s="$1" -v t="$2" -v c="$3" 'NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next }
    $1 == s && $3 == t { all[++n] = $h[c]; if ($h["noisy"] == 0) clean[++m] = $h[c] }
    END { if (m > 0) for (i = 1; i <= m; i++) print clean[i]; else for (i = 1; i <= n; i++) print all[i] }' "$RUNS"
}
used() {            # used SCENARIO TARGET: "clean/all" runs behind a median
  awk -F'\t' -v s="$1" -v t="$2" 'NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next }
    $1 == s && $3 == t { n++; if ($h["noisy"] == 0) m++ }
    END { if (m > 0) printf "%d of %d", m, n; else printf "all %d (all noisy)", n }' "$RUNS"
}
med() {             # med SCENARIO TARGET COLUMN-NAME: the median, "-" for a column without numbers
  local v
  v=$(col "$@")
  if [ -z "$v" ] || grep -q -- '^-$' <<<"$v"; then echo -; else median <<<"$v"; fi
}
sum() {             # sum SCENARIO TARGET COLUMN-NAME: over all runs, noisy or not (errors)
  awk -F'\t' -v s="$1" -v t="$2" -v c="$3" 'NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next }
    $1 == s && $3 == t { n += $h[c] } END { print n + 0 }' "$RUNS"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }
fmt() { awk -v v="$1" -v f="$2" -v d="${3:-1}" 'BEGIN { if (v == "-") print "-"; else printf f, v / d }'; }

report() {
  local cpu_model
  cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  echo "## chat-gateway vs nginx (re-signing reverse proxy), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- machine: $(nproc) CPUs, $cpu_model; kernel $(uname -r)"
  echo "- proxies and upstream pinned to CPU $PROXY_CPU, wrk (1 thread) to CPU $WRK_CPU; ulimit -n $FD_LIMIT"
  echo "- gateway: $GATEWAY_SRC ($($GATEWAY_BIN --version 2>/dev/null || echo '?'); $GATEWAY_INFO), $([ -n "$GATEWAY_WORKERS" ] && echo "worker_threads = $GATEWAY_WORKERS, ")RUST_LOG=$GATEWAY_RUST_LOG$([ "$GATEWAY_RUST_LOG" = warn ] && echo ' (no per-request access log)' || echo ' (access log to a file)'), rate limits $RATE/s, burst $RATE"
  echo "- upstream: nginx return 200 over TLS, $([ "$UPSTREAM_H2" = 1 ] && echo 'HTTP/1.1 and HTTP/2 offered by ALPN (nginx proxies over HTTP/1.1; the gateway uses HTTP/2)' || echo 'HTTP/1.1 only')"
  echo "- nginx: $("$NGINX_BIN" -v 2>&1 | sed 's/.*: //'), 1 worker; wrk: $("$WRK_BIN" -v 2>&1 | head -n1 | awk '{ print $1, $2 }')"
  echo "- body: $body_len bytes to $API_PATH; upstream: nginx \`return 200\` over TLS (self-signed P-256 cert), keep-alive"
  echo "- each measured run starts a fresh proxy process, gives it ${WARMUP}s of unmeasured warm-up load, then measures; peak RSS is VmHWM of that fresh process (nginx: the worker; the master adds ~$((NGINX_MASTER_KB / 1024)) MB)"
  echo "- CPU/req: utime+stime of the proxy's processes (/proc/PID/stat, CLK_TCK=$CLK_TCK) over the measured run / requests completed"
  echo "- measured load took ${ELAPSED}s; rounds: $ROUNDS; values are medians over the rounds that were not noisy (see 'runs used' and the NOISY note below)"
  [ -n "$SYSTEM_NGINX_NOTE" ] && echo "- note: $SYSTEM_NGINX_NOTE"
  echo
  if [[ " $SCENARIOS " == *" main "* ]]; then
    echo "### $CONNS connections, ${DURATION}s per run"
    echo
    echo "| proxy | req/s | CPU µs/req (user) | p50 ms | p99 ms | peak RSS MB | non-2xx / not-OK / socket errors (sum) | upstream CPU µs/req | CPU $PROXY_CPU busy % (softirq %) | wrk CPU % | runs used |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    local t
    for t in gateway nginx; do
      echo "| $t | $(fmt "$(med main $t rps)" %.0f) | $(fmt "$(med main $t cpu_us_per_req)" %.1f) ($(fmt "$(med main $t user_cpu_us_per_req)" %.1f)) | $(fmt "$(med main $t p50_us)" %.2f 1000) | $(fmt "$(med main $t p99_us)" %.2f 1000) | $(fmt "$(med main $t hwm_kb)" %.1f 1024) | $(sum main $t non2xx) / $(sum main $t not_ok) / $(sum main $t sock_err) | $(fmt "$(med main $t upstream_cpu_us_per_req)" %.1f) | $(fmt "$(med main $t cpu_busy_pct)" %.0f) ($(fmt "$(med main $t softirq_pct)" %.0f)) | $(fmt "$(med main $t wrk_cpu_pct)" %.0f) | $(used main $t) |"
    done
    echo "| **gateway/nginx** | $(ratio "$(fmt "$(med main gateway rps)" %.0f)" "$(fmt "$(med main nginx rps)" %.0f)") | $(ratio "$(med main gateway cpu_us_per_req)" "$(med main nginx cpu_us_per_req)") | $(ratio "$(med main gateway p50_us)" "$(med main nginx p50_us)") | $(ratio "$(med main gateway p99_us)" "$(med main nginx p99_us)") | $(ratio "$(med main gateway hwm_kb)" "$(med main nginx hwm_kb)") | | | | | |"
    echo
  fi
  if [[ " $SCENARIOS " == *" single "* ]]; then
    local d50 d99
    d50=$(med single direct p50_us); d99=$(med single direct p99_us)
    echo "### 1 connection, ${DURATION_SINGLE}s per run: round trip and latency added per request"
    echo
    echo "| path | req/s | p50 µs | p99 µs | added p50 µs (vs direct) | added p99 µs | CPU µs/req | errors | runs used |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    for t in direct nginx gateway; do
      local m50 m99
      m50=$(med single $t p50_us); m99=$(med single $t p99_us)
      echo "| $([ $t = direct ] && echo 'direct to upstream (wrk speaks TLS)' || echo "$t -> upstream") | $(fmt "$(med single $t rps)" %.0f) | $(fmt "$m50" %.0f) | $(fmt "$m99" %.0f) | $(awk -v a="$m50" -v b="$d50" 'BEGIN { printf "%.0f", a - b }') | $(awk -v a="$m99" -v b="$d99" 'BEGIN { printf "%.0f", a - b }') | $(fmt "$(med single $t cpu_us_per_req)" %.1f) | $(($(sum single $t non2xx) + $(sum single $t not_ok) + $(sum single $t sock_err))) | $(used single $t) |"
    done
    echo "| **gateway/nginx** | $(ratio "$(fmt "$(med single gateway rps)" %.0f)" "$(fmt "$(med single nginx rps)" %.0f)") | $(ratio "$(med single gateway p50_us)" "$(med single nginx p50_us)") | $(ratio "$(med single gateway p99_us)" "$(med single nginx p99_us)") | | | $(ratio "$(med single gateway cpu_us_per_req)" "$(med single nginx cpu_us_per_req)") | | |"
    echo
  fi
  if [[ " $SCENARIOS " == *" high "* ]]; then
    echo "### $CONNS_HIGH connections, ${DURATION_HIGH}s per run: memory"
    echo
    echo "| proxy | peak RSS MB | RSS at end MB | req/s | CPU µs/req | p50 ms | p99 ms | upstream TLS conns opened (resumed %) | errors | runs used |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    for t in gateway nginx; do
      echo "| $t | $(fmt "$(med high $t hwm_kb)" %.1f 1024) | $(fmt "$(med high $t rss_end_kb)" %.1f 1024) | $(fmt "$(med high $t rps)" %.0f) | $(fmt "$(med high $t cpu_us_per_req)" %.1f) | $(fmt "$(med high $t p50_us)" %.2f 1000) | $(fmt "$(med high $t p99_us)" %.2f 1000) | $(fmt "$(med high $t upstream_conns)" %.0f) ($(med high $t upstream_resumed_pct)) | $(($(sum high $t non2xx) + $(sum high $t not_ok) + $(sum high $t sock_err))) | $(used high $t) |"
    done
    echo "| **gateway/nginx** | $(ratio "$(med high gateway hwm_kb)" "$(med high nginx hwm_kb)") | $(ratio "$(med high gateway rss_end_kb)" "$(med high nginx rss_end_kb)") | $(ratio "$(fmt "$(med high gateway rps)" %.0f)" "$(fmt "$(med high nginx rps)" %.0f)") | $(ratio "$(med high gateway cpu_us_per_req)" "$(med high nginx cpu_us_per_req)") | $(ratio "$(med high gateway p50_us)" "$(med high nginx p50_us)") | $(ratio "$(med high gateway p99_us)" "$(med high nginx p99_us)") | | | |"
    echo
  fi
  if [ "$REDIS" = 1 ]; then
    echo "### rate_limit backend = \"redis\" (local redis-server, redis_mode = \"$REDIS_MODE\") against \"local\""
    echo
    echo "| measure | local | redis | redis - local |"
    echo "| --- | ---: | ---: | ---: |"
    local a b
    if [[ " $SCENARIOS " == *" single "* ]]; then
      for c in p50_us p99_us; do
        a=$(med single gateway $c); b=$(med single gateway-redis $c)
        echo "| 1 connection, ${c%_us} µs | $(fmt "$a" %.0f) | $(fmt "$b" %.0f) | $(awk -v a="$a" -v b="$b" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%+.0f", b - a }') |"
      done
      if [ -s "$WORK/redis_rtt.tsv" ]; then
        for c in 2 3; do
          a=$(cut -f"$c" "$WORK/redis_rtt.tsv" | median)
          echo "| the round trip to Redis alone, $([ "$c" = 2 ] && echo p50 || echo p99) µs (redis-benchmark, no gateway) | | | $(fmt "$a" %.0f) |"
        done
        a=$(cut -f4 "$WORK/redis_rtt.tsv" | grep -v -- - | median)
        echo "| the round trip alone, back to back, p50 µs (benches/redis_round_trip.rs) | | | $(fmt "$a" %.0f) |"
        a=$(cut -f6 "$WORK/redis_rtt.tsv" | grep -v -- - | median)
        b=$(cut -f8 "$WORK/redis_rtt.tsv" | grep -v -- - | median)
        echo "| the round trip alone at the gateway's pace (one check per $(fmt "$b" %.0f) µs, its p50 with Redis), p50 µs | | | $(fmt "$a" %.0f) |"
        echo "| each round (p50 µs): redis-benchmark / back to back / paced / gateway added | | | $(awk -F'\t' 'FNR == NR { if (FNR == 1) { for (i = 1; i <= NF; i++) h[$i] = i; next }
            if ($1 == "single") p[$2 "/" $3] = $h["p50_us"]; next }
          { printf "%s%s / %s / %s / %+.0f", (FNR > 1 ? "; " : ""), $2, $4, $6, p[$1 "/gateway-redis"] - p[$1 "/gateway"] }' "$RUNS" "$WORK/redis_rtt.tsv") |"
      fi
    fi
    if [[ " $SCENARIOS " == *" main "* ]]; then
      a=$(med main gateway rps); b=$(med main gateway-redis rps)
      echo "| $CONNS connections, req/s | $(fmt "$a" %.0f) | $(fmt "$b" %.0f) | $(ratio "$b" "$a") x |"
      a=$(med main gateway cpu_us_per_req); b=$(med main gateway-redis cpu_us_per_req)
      echo "| $CONNS connections, gateway CPU µs/req | $(fmt "$a" %.1f) | $(fmt "$b" %.1f) | $(awk -v a="$a" -v b="$b" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%+.1f", b - a }') |"
    fi
    echo
    echo "Redis commands over each measured run (INFO commandstats; every request passed the limits, so each was one upstream call). Sent: what the gateway sent (EVALSHA, probes); inside: what the script ran in Redis (TIME, MGET, SET), no round trips:"
    echo
    echo "| scenario | round | upstream calls | calls/s | commands sent | sent/s | sent per call | commands inside per call |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk -F'\t' '{ s = $4 / 1e6; printf "| %s | %s | %d | %.0f | %d | %.0f | %.3f | %.2f |\n", $1, $2, $3, $3 / s, $5, $5 / s, ($3 > 0) ? $5 / $3 : 0, ($3 > 0) ? $6 / $3 : 0 }' "$WORK/redis.tsv" 2>/dev/null
    echo
  fi
  if [ "$TRACING" = 1 ] && [[ " $SCENARIOS " == *" main "* ]]; then
    echo "### every request traced ([tracing] sample_ratio = 1, spans exported to the sink) against no [tracing]"
    echo
    echo "| measure | no tracing | traced | traced / none |"
    echo "| --- | ---: | ---: | ---: |"
    local ta tb
    ta=$(med main gateway rps); tb=$(med main gateway-traced rps)
    echo "| $CONNS connections, req/s | $(fmt "$ta" %.0f) | $(fmt "$tb" %.0f) | $(ratio "$tb" "$ta") x |"
    ta=$(med main gateway cpu_us_per_req); tb=$(med main gateway-traced cpu_us_per_req)
    echo "| $CONNS connections, gateway CPU µs/req | $(fmt "$ta" %.1f) | $(fmt "$tb" %.1f) | $(ratio "$tb" "$ta") x |"
    echo
  fi
  echo "### every run"
  echo
  echo "| scenario | round | target | conns | requests | s | req/s | CPU µs/req | p50 µs | p99 µs | VmHWM kB | VmRSS end kB | non-2xx | not-OK | socket err | upstream CPU µs/req | upstream conns opened | CPU $PROXY_CPU busy % | softirq % | other procs on CPU $PROXY_CPU % | wrk CPU % | other procs on CPU $WRK_CPU % | threads | user CPU µs/req | noisy | upstream TLS resumed % |"
  echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  tail -n +2 "$RUNS" | awk -F'\t' -v OFS=' | ' '{ $1 = $1; print "| " $0 " |" }'
  echo
  echo "Upstream TLS connections, as the upstream saw them (protocol, cipher, session reused, query shape):"
  echo
  echo '```'
  awk '{ $1 = ""; sub(/random=[0-9]+/, "random=N"); print }' "$WORK/upstream/connections.log" 2>/dev/null |
    sort | uniq -c | sort -rn | head -n 10
  echo '```'
  if ls "$WORK"/*.gateway.metrics >/dev/null 2>&1; then
    echo
    echo "The gateway's own count of outcomes (chat_gateway_requests_total, summed over its measured runs, warm-up included):"
    echo
    echo '```'
    cat "$WORK"/*.gateway.metrics | awk '/^chat_gateway_requests_total\{/ { split($1, a, "outcome=\""); split(a[2], b, "\""); n[b[1]] += $2 } END { for (k in n) printf "outcome=%s %d\n", k, n[k] }' | sort
    echo '```'
  fi
  local warn
  warn=$(cat "$WORK"/gateway.*.log 2>/dev/null | grep -cE '(^| )(WARN|ERROR) |"level":"(WARN|ERROR)"' || true)
  echo
  echo "Gateway WARN/ERROR log lines over all its runs (RUST_LOG=$GATEWAY_RUST_LOG): $warn$([ "$warn" -gt 0 ] && echo " (first ones below)")"
  if [ "$warn" -gt 0 ]; then
    echo '```'
    cat "$WORK"/gateway.*.log | grep -E '(^| )(WARN|ERROR) |"level":"(WARN|ERROR)"' | head -n 10
    echo '```'
  fi
  if [ "$PROFILE" -gt 0 ]; then
    echo
    echo "### profile of the gateway under $CONNS connections (perf record -e cpu-clock, DWARF call graphs, ${PROFILE}s)"
    echo
    echo "load during the profile: $(grep -o 'requests=[0-9]* duration_us=[0-9]*' "$WORK/profile.txt" | awk -F'[= ]' '{ printf "%.0f req/s", $2 / ($4 / 1e6) }') (perf's sampling slows the gateway)"
    echo
    [ -s "$WORK/perf.categories.md" ] && cat "$WORK/perf.categories.md"
    echo
    echo "### syscalls and context switches per request, $CONNS connections (perf stat, ${PROFILE}s)"
    echo
    echo "| event | gateway /req | nginx /req |"
    echo "| --- | ---: | ---: |"
    local gn nn
    gn=$(grep -o 'requests=[0-9]*' "$WORK/syscalls.gateway.txt" | cut -d= -f2)
    nn=$(grep -o 'requests=[0-9]*' "$WORK/syscalls.nginx.txt" | cut -d= -f2)
    awk -F, -v gn="$gn" -v nn="$nn" '
      FNR == 1 { f++ }
      /^[0-9]/ { e = $3; sub(/^syscalls:sys_enter_/, "", e); v[f, e] = $1; seen[e] = 1
                 if (e != "context-switches" && e != "cpu-migrations") tot[f] += $1 }
      END {
        for (e in seen) {
          g = v[1, e] / gn; n = v[2, e] / nn
          if (g >= 0.01 || n >= 0.01) printf "| %s | %.2f | %.2f |\n", e, g, n
        }
        printf "| **all syscalls** | **%.2f** | **%.2f** |\n", tot[1] / gn, tot[2] / nn
      }' "$WORK/syscalls.gateway.csv" "$WORK/syscalls.nginx.csv" | sort -t'|' -k3 -gr
    echo
    echo "(requests in those runs: gateway $gn, nginx $nn)"
  fi
  if [ "$NOISY" -gt 0 ]; then
    echo
    echo "**$NOISY run(s) were noisy: other processes took more than 3% of CPU $PROXY_CPU, or CPU $WRK_CPU was over 90% busy (columns 'other procs').**"
  fi
  if [ "$ANY_INVALID" = 1 ]; then
    echo
    echo "**Some runs saw errors (non-2xx, not-OK answers or socket errors): that comparison is not valid.**"
  fi
}

if [ -n "$OUT" ]; then
  report | tee "$OUT"
else
  report
fi
[ "$ANY_INVALID" = 0 ] || exit 3
