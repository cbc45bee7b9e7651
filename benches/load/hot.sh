#!/usr/bin/env bash
# Hot-group scenario: Increase +1 to ONE group from thousands of connections, against the
# Chat emulator answering after LATENCY, through chat-gateway with coalescing on, with it off,
# and through nginx as a plain re-signing proxy (which forwards every call). See README.md.
#
#   bash benches/load/hot.sh                     # 10 s per target
#   NICE=-5 bash benches/load/hot.sh             # as root, on a machine doing other work
#   DURATION=3 CONNS=2000 bash benches/load/hot.sh   # smoke
#
# Settings (environment variables, defaults in brackets):
#   DURATION [10]  seconds of each measured run
#   WARMUP [1]     seconds at the start of each run left out of p50 / p99 (h2load only): all
#                  callers arrive at once then, a step no live stream makes; the whole run's
#                  p99 and the count of callers over the bound are printed beside them
#   CLIENT [h2load] h2load (HTTP/2: H2_CONNS connections x STREAMS streams, h2c to the proxy) or
#                  wrk (HTTP/1.1: CONNS connections); Debian: nghttp2-client, wrk
#   H2_CONNS [70] STREAMS [100] CONNS [7000]
#   LATENCY [50ms] the emulator's answer time        TARGETS ["on off nginx"]
#   MAX_CALLERS [5000] coalesce.max_callers         PROXY_CPU [0] WRK_CPU [1] (taskset)
#   EMU_CPU [0,1]  the emulator's CPUs: both, so that a busy wrk does not add to its latency
#   GATEWAY_BIN [target/release/chat-gateway]       KEEP [0] keep the work directory
#   NICE [0]       niceness of every process started here (e.g. -5, as root: less noise from
#                  other work on the machine; the same for every target)
#   EMU_PORT [18280] GATEWAY_PORT [18281] GATEWAY_ADMIN_PORT [18282] NGINX_PORT [18283]
#
# Little's law: callers in flight = rate x latency; 50 000 increments a second at ~80 ms each
# need ~4 000 callers at once, hence the connection count and the raised file limit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-7000}
CLIENT=${CLIENT:-h2load}
H2_CONNS=${H2_CONNS:-70}
STREAMS=${STREAMS:-100}
LATENCY=${LATENCY:-50ms}
TARGETS=${TARGETS:-on off nginx}
MAX_CALLERS=${MAX_CALLERS:-5000}
PROXY_CPU=${PROXY_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
EMU_CPU=${EMU_CPU:-0,1}
NICE=${NICE:-0}
GATEWAY_BIN=${GATEWAY_BIN:-$REPO/target/release/chat-gateway}
KEEP=${KEEP:-0}
EMU_PORT=${EMU_PORT:-18280}
GATEWAY_PORT=${GATEWAY_PORT:-18281}
GATEWAY_ADMIN_PORT=${GATEWAY_ADMIN_PORT:-18282}
NGINX_PORT=${NGINX_PORT:-18283}
SDKAPPID=1400000000
IDENTIFIER=administrator
API=/v4/group_open_http_svc/update_group_counter

say() { printf '%s\n' "$*" >&2; }
die() { say "hot.sh: $*"; exit 2; }
case $CLIENT in h2load) CONC=$((H2_CONNS * STREAMS));; wrk) CONC=$CONNS;; *) die "CLIENT is h2load or wrk";; esac
for v in DURATION WARMUP CONNS H2_CONNS STREAMS MAX_CALLERS PROXY_CPU WRK_CPU EMU_PORT GATEWAY_PORT GATEWAY_ADMIN_PORT NGINX_PORT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"
done
for t in $CLIENT nginx taskset curl ss; do command -v $t >/dev/null || die "missing $t"; done
[ -x "$GATEWAY_BIN" ] || die "no gateway binary at $GATEWAY_BIN (cargo build --release)"
for p in $EMU_PORT $GATEWAY_PORT $GATEWAY_ADMIN_PORT $NGINX_PORT; do
  ! ss -Htln "sport = :$p" | grep -q . || die "port $p is taken"
done
want_fd=$((CONNS * 3 + 1024)); hard=$(ulimit -Hn)
[ "$hard" != unlimited ] && [ "$hard" -lt "$want_fd" ] && want_fd=$hard
ulimit -n "$want_fd"
CLK_TCK=$(getconf CLK_TCK)

WORK=$(mktemp -d /tmp/chat-gateway-hot.XXXXXX)
PIDS=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do stop "$pid"; done
  [ "$KEEP" = 1 ] && say "==> kept $WORK" || rm -rf "$WORK"
  exit "$rc"
}
stop() {            # stop PID: SIGTERM, then SIGKILL after 5 s; only processes started here
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port() { local i; for i in $(seq 100); do ss -Htln "sport = :$1" | grep -q . && return 0; sleep 0.1; done; return 1; }
ticks() { local s f; s=$(cat "/proc/$1/stat") || { echo 0; return; }; s=${s##*) }; read -r -a f <<<"$s"; echo $((f[11] + f[12])); }

cp "$GATEWAY_BIN" "$WORK/chat-gateway"; BIN=$WORK/chat-gateway
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/key"; chmod 600 "$WORK/key"
USERSIG=$("$BIN" usersig --sdkappid $SDKAPPID --identifier $IDENTIFIER --expire 86400 --secret-key-file "$WORK/key")

say "==> emulator on CPUs $EMU_CPU, latency $LATENCY"
nice -n "$NICE" taskset -c "$EMU_CPU" "$BIN" emulator --listen 127.0.0.1:$EMU_PORT --sdkappid $SDKAPPID \
  --secret-key-file "$WORK/key" --latency "$LATENCY" >"$WORK/emulator.log" 2>&1 &
PIDS+=($!)
wait_port $EMU_PORT || die "emulator did not start"

gateway_config() {  # gateway_config true|false
  cat <<EOC
[server]
listen = "127.0.0.1:$GATEWAY_PORT"
admin_listen = "127.0.0.1:$GATEWAY_ADMIN_PORT"
drain_delay = "0s"
shutdown_grace = "3s"
max_in_flight = $((CONC + 1000))
[chat]
sdkappid = $SDKAPPID
identifier = "$IDENTIFIER"
endpoint = "http://127.0.0.1:$EMU_PORT"
secret_key_file = "$WORK/key"
[coalesce]
enabled = $1
max_callers = $MAX_CALLERS
EOC
}
cat >"$WORK/nginx.conf" <<EOC
worker_processes 1;
worker_rlimit_nofile $want_fd;
pid $WORK/nginx.pid;
error_log $WORK/nginx.error.log warn;
events { worker_connections $((want_fd - 100)); multi_accept on; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx.body;
  proxy_temp_path $WORK/nginx.proxy;
  keepalive_requests 100000000;
  upstream chat { server 127.0.0.1:$EMU_PORT; keepalive 1024; keepalive_requests 100000000; }
  map \$msec \$random32 { "~(?<s>[0-9]{6})\.(?<ms>[0-9]{3})\$" "\$s\$ms"; default "0"; }
  server {
    listen 127.0.0.1:$NGINX_PORT $([ "$CLIENT" = h2load ] && echo http2) backlog=8192;
    http2_max_concurrent_streams 256;
    location ~ ^/v4/[^/]+/[^/]+\$ {
      rewrite ^ \$uri?sdkappid=$SDKAPPID&identifier=$IDENTIFIER&usersig=$USERSIG&random=\$random32&contenttype=json? break;
      proxy_pass http://chat;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 5s;
    }
  }
}
EOC

value_of() {        # value_of PORT GROUP: the group's likes, read through the proxy on PORT
  local h2=()
  # nginx listens for h2c with prior knowledge only when the client is h2load.
  [ "$1" = "$NGINX_PORT" ] && [ "$CLIENT" = h2load ] && h2=(--http2-prior-knowledge)
  curl -sS "${h2[@]}" --max-time 5 -X POST -H 'Content-Type: application/json' \
    --data-binary "{\"GroupId\":\"$2\",\"GroupCounterKeys\":[\"likes\"]}" \
    "http://127.0.0.1:$1/v4/group_open_http_svc/get_group_counter" |
    sed -n 's/.*"Value":\([0-9-]*\).*/\1/p'
}

# Reads of the hot group while the likes come in, as a dashboard would poll it: every 100 ms
# (at most DURATION x 10 of them), alternately naming the key the likes set (answered from the
# waiting batch) and naming none (waits its turn for a token); their latency and ErrorCodes.
reader() {          # reader PORT GROUP OUT
  local i body took code end=$((SECONDS + DURATION - 1))
  for i in $(seq $((DURATION * 10))); do
    [ "$SECONDS" -lt "$end" ] || break
    if [ $((i % 2)) = 0 ]; then body="{\"GroupId\":\"$2\",\"GroupCounterKeys\":[\"likes\"]}"; else body="{\"GroupId\":\"$2\"}"; fi
    took=$(curl -sS --max-time 3 -o "$3.body" -w '%{time_total}' -X POST -H 'Content-Type: application/json' \
      --data-binary "$body" "http://127.0.0.1:$1/v4/group_open_http_svc/get_group_counter" 2>/dev/null) || took=3.0
    code=$(sed -n 's/.*"ErrorCode":\([0-9]*\).*/\1/p' "$3.body" 2>/dev/null)
    printf '%s %s\n' "$took" "${code:-none}" >>"$3"
    sleep 0.1
  done
}
printf '| target | reads | p50 ms | p99 ms | max ms | answered other than ErrorCode 0 |\n|---|---|---|---|---|---|\n' >"$WORK/reads.md"

printf '| target | client req/s | OK answers/s | applied increments/s | upstream calls/s | upstream round trip ms (as the gateway saw it) | p50 ms | p99 ms | p99 ms, whole run | callers over the bound, whole run | CPU us/applied increment | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n' >"$WORK/table.md"
for target in $TARGETS; do
  group="live-$target-$$"
  case $target in
    on|off)
      gateway_config "$([ $target = on ] && echo true || echo false)" >"$WORK/gw-$target.toml"
      RUST_LOG=warn nice -n "$NICE" taskset -c "$PROXY_CPU" "$BIN" serve --config "$WORK/gw-$target.toml" >"$WORK/gw-$target.log" 2>&1 &
      pid=$!; PIDS+=($pid); port=$GATEWAY_PORT
      wait_port $GATEWAY_PORT || die "gateway did not start (see $WORK/gw-$target.log)"
      ;;
    nginx)
      nice -n "$NICE" taskset -c "$PROXY_CPU" nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx.error.log" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
      pid=$!; PIDS+=($pid); port=$NGINX_PORT
      wait_port $NGINX_PORT || die "nginx did not start"
      sleep 0.2; pid=$(cat "/proc/$pid/task/$pid/children" | awk '{print $1}'); PIDS+=($pid)
      ;;
    *) die "unknown target $target";;
  esac
  before=$(ticks "$pid")
  rpid=
  if [ "$target" != nginx ]; then
    sleep 0.5; reader "$port" "$group" "$WORK/reads-$target.txt" & rpid=$!
  fi
  body="{\"GroupId\":\"$group\",\"GroupCounter\":[{\"Key\":\"likes\",\"Value\":1}],\"Mode\":\"Increase\"}"
  if [ "$CLIENT" = wrk ]; then
    say "==> $target: wrk -c $CONNS -d ${DURATION}s into one group ($group)"
    LOAD_BODY="$body" nice -n "$NICE" taskset -c "$WRK_CPU" wrk -t1 -c "$CONNS" -d "${DURATION}s" --timeout 5s -s "$HERE/post.lua" \
      "http://127.0.0.1:$port$API" >"$WORK/client-$target.txt" 2>&1 || die "wrk failed (see $WORK/client-$target.txt)"
  else
    say "==> $target: h2load -c $H2_CONNS -m $STREAMS -D $DURATION into one group ($group)"
    printf '%s' "$body" >"$WORK/body.json"
    nice -n "$NICE" taskset -c "$WRK_CPU" h2load -t1 -c "$H2_CONNS" -m "$STREAMS" -D "$DURATION" -d "$WORK/body.json" \
      -H 'content-type: application/json' --log-file "$WORK/h2load-$target.log" \
      "http://127.0.0.1:$port$API" >"$WORK/client-$target.txt" 2>&1 || die "h2load failed (see $WORK/client-$target.txt)"
  fi
  after=$(ticks "$pid")
  [ -n "$rpid" ] && wait "$rpid"
  sleep 1.5   # the last calls return
  if [ -n "$rpid" ]; then
    sort -n "$WORK/reads-$target.txt" | awk -v name="$target" '{t[NR] = $1 * 1000; if ($2 != "0") bad++}
      END { if (NR) printf "| %s | %d | %.1f | %.1f | %.1f | %d |\n", name, NR, t[int(NR * 0.5) + 1], t[int(NR * 0.99) + 1], t[NR], bad }' >>"$WORK/reads.md"
  fi
  rss_kb=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$pid/status")
  applied=$(value_of "$port" "$group"); applied=${applied:-0}
  if [ "$CLIENT" = wrk ]; then
    line=$(grep '^LOADRESULT' "$WORK/client-$target.txt")
  else
    # The log: start time, status, microseconds per request. Percentiles from it; a 2xx that
    # is a gateway refusal (10006) is counted as OK here: "applied" is what the emulator holds.
    # Steady state: the requests that started WARMUP seconds or more after the first one.
    t0=$(awk 'NR == 1 || $1 < t {t = $1} END {printf "%.0f", t}' "$WORK/h2load-$target.log")
    awk -v from="$((t0 + WARMUP * 1000000))" '$1 >= from' "$WORK/h2load-$target.log" >"$WORK/steady-$target.log"
    # Reads to the end (no early exit: with pipefail, sort would die of SIGPIPE).
    pct() {  # pct P FILE
      awk '{print $3}' "$2" | sort -n | awk -v p="$1" 'NR == FNR {n++; v[n] = $1} END {print (n ? v[int(n * p / 100) + 1] : 0)}'
    }
    n=$(wc -l <"$WORK/h2load-$target.log")
    # The bound the hot-group target sets: 2 x the emulator's latency + 1 / group_per_second (20).
    bound_us=$(awk -v l="$LATENCY" 'BEGIN { v = l + 0; if (l ~ /ms$/) v *= 1000; else if (l ~ /us$/) v *= 1; else v *= 1000000; printf "%d", 2 * v + 50000 }')
    over=$(awk -v b="$bound_us" '$3 > b' "$WORK/h2load-$target.log" | wc -l)
    secs=$(sed -n 's/^finished in \([0-9.]*\)s.*/\1/p' "$WORK/client-$target.txt")
    bad=$(awk '$2 < 200 || $2 > 299' "$WORK/h2load-$target.log" | wc -l)
    line="LOADRESULT requests=$n duration_us=$(awk -v s="$secs" 'BEGIN {printf "%d", s * 1e6}') non2xx=$bad not_ok=0 p50_us=$(pct 50 "$WORK/steady-$target.log") p99_us=$(pct 99 "$WORK/steady-$target.log") p99all_us=$(pct 99 "$WORK/h2load-$target.log") over=$over"
  fi
  get() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$line"; }
  reqs=$(get requests); dur_us=$(get duration_us); notok=$(get not_ok); non2xx=$(get non2xx)
  if [ "$target" = nginx ]; then
    calls=$reqs; up_ms=-
  else
    curl -sS "http://127.0.0.1:$GATEWAY_ADMIN_PORT/metrics" >"$WORK/metrics-$target.txt"
    calls=$(awk '/^chat_gateway_upstream_responses_total\{api="group_open_http_svc\/update_group_counter"/ {s += $2} END {print s + 0}' "$WORK/metrics-$target.txt")
    # The round trip as the gateway saw it: the emulator's latency plus the gateway's own delay
    # in noticing the answer.
    up_ms=$(awk '/^chat_gateway_upstream_duration_seconds_(sum|count)\{api="group_open_http_svc\/update_group_counter"/ {
      if ($1 ~ /_sum/) s = $2; else c = $2 } END { if (c > 0) printf "%.1f", s / c * 1000; else print "-" }' "$WORK/metrics-$target.txt")
  fi
  awk -v r="$reqs" -v d="$dur_us" -v bad="$((notok + non2xx))" -v a="$applied" -v c="$calls" \
      -v p50="$(get p50_us)" -v p99="$(get p99_us)" -v p99all="$(get p99all_us)" -v over="$(get over)" \
      -v t="$((after - before))" -v hz="$CLK_TCK" -v rss="$rss_kb" -v name="$target" -v up="$up_ms" 'BEGIN {
    s = d / 1e6
    all = (p99all == "" ? "-" : sprintf("%.1f", p99all / 1000)); if (over == "") over = "-"
    printf "| %s | %.0f | %.0f | %.0f | %.1f | %s | %.1f | %.1f | %s | %s | %.2f | %.1f |\n", name, r / s, (r - bad) / s,
      a / s, c / s, up, p50 / 1000, p99 / 1000, all, over, (a > 0 ? t / hz * 1e6 / a : 0), rss / 1024 }' >>"$WORK/table.md"
  say "    $(tail -1 "$WORK/table.md")"
  for p in "${PIDS[@]:1}"; do stop "$p"; done
  PIDS=("${PIDS[0]}")
done
say ""
cat "$WORK/table.md"
say ""
say "Reads of the hot group during the storm (get_group_counter every 100 ms):"
cat "$WORK/reads.md"
