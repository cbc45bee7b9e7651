#!/usr/bin/env bash
# The latency cost of config reloads under load: the release gateway in front of the Chat
# emulator (plain HTTP on 127.0.0.1), CONNS (64) wrk connections, once steady and once while
# its config file is swapped the Kubernetes way (new version directory, `..data` renamed)
# every RELOAD_EVERY seconds; the two alternate ROUNDS times. Prints p50/p99 of both and the
# reloads applied. See benches/load/README.md.
#
#   cargo build --release && bash benches/load/reload.sh
#
# Settings (environment variables, defaults in brackets): DURATION [10] ROUNDS [3] CONNS [64]
# RELOAD_EVERY [1] GATEWAY_BIN [target/release/chat-gateway] EMULATOR_PORT [18280]
# GATEWAY_PORT [18281] GATEWAY_ADMIN_PORT [18290] PROXY_CPU [0] WRK_CPU [1]
# Exit status: 0 clean; 3 when any answer was not the upstream's OK (the run is not valid).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
RELOAD_EVERY=${RELOAD_EVERY:-1}
GATEWAY_BIN=${GATEWAY_BIN:-$REPO/target/release/chat-gateway}
EMULATOR_PORT=${EMULATOR_PORT:-18280}
GATEWAY_PORT=${GATEWAY_PORT:-18281}
GATEWAY_ADMIN_PORT=${GATEWAY_ADMIN_PORT:-18290}
PROXY_CPU=${PROXY_CPU:-0}
WRK_CPU=${WRK_CPU:-1}

for tool in wrk curl taskset; do
  command -v "$tool" >/dev/null || { echo "reload.sh: needs $tool" >&2; exit 2; }
done
[ -x "$GATEWAY_BIN" ] || { echo "reload.sh: no $GATEWAY_BIN (cargo build --release)" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

key=5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e
printf '%s\n' "$key" >"$work/key"
mkdir "$work/config"

config() {  # config BURST: the gateway's config with every group burst at BURST
  cat <<EOF
[server]
listen = "127.0.0.1:$GATEWAY_PORT"
admin_listen = "127.0.0.1:$GATEWAY_ADMIN_PORT"
drain_delay = "0s"
[chat]
sdkappid = 1400000000
endpoint = "http://127.0.0.1:$EMULATOR_PORT"
secret_key_file = "$work/key"
[rate_limit]
group_per_second = 1000000
group_burst = $1
app_per_second = 1000000
app_burst = 1000000
EOF
}

swap() {  # swap BURST: a new version directory, then ..data renamed onto it (atomic)
  local dir="..$(date +%Y_%m_%d_%H_%M_%S.%N)"
  mkdir "$work/config/$dir"
  config "$1" >"$work/config/$dir/gateway.toml"
  ln -sfn "$dir" "$work/config/..data_tmp"
  mv -T "$work/config/..data_tmp" "$work/config/..data"
}
swap 1000000
ln -s ..data/gateway.toml "$work/config/gateway.toml"

taskset -c "$PROXY_CPU" "$GATEWAY_BIN" emulator --listen "127.0.0.1:$EMULATOR_PORT" \
  --sdkappid 1400000000 --secret-key-file "$work/key" 2>"$work/emulator.log" &
pids+=($!)
RUST_LOG=warn taskset -c "$PROXY_CPU" "$GATEWAY_BIN" serve --config "$work/config/gateway.toml" \
  2>"$work/gateway.log" &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$GATEWAY_ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

applied() {
  curl -fsS "http://127.0.0.1:$GATEWAY_ADMIN_PORT/metrics" |
    awk '/^chat_gateway_config_reloads_total\{result="applied"\}/ {print $2}'
}

measure() {  # measure NAME: one wrk run; prints "p50_us p99_us"
  local out="$work/wrk-$1.txt"
  LOAD_GROUPS=1024 taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" \
    -s "$HERE/post.lua" "http://127.0.0.1:$GATEWAY_PORT/v4/group_open_http_svc/update_group_counter" >"$out"
  local line
  line=$(grep '^LOADRESULT' "$out")
  sed -E 's/.* p50_us=([0-9.]+).* p99_us=([0-9.]+).*/\1 \2/' <<<"$line"
}

echo "| round | steady p50 µs | steady p99 µs | reloading p50 µs | reloading p99 µs | reloads applied |"
echo "| --- | --- | --- | --- | --- | --- |"
for round in $(seq "$ROUNDS"); do
  read -r s50 s99 < <(measure "steady-$round")
  before=$(applied)
  (
    # Each version differs from every other, so each one the 2 s poll sees is a reload.
    end=$((SECONDS + DURATION))
    burst=999999
    while [ "$SECONDS" -lt "$end" ]; do
      sleep "$RELOAD_EVERY"
      swap "$burst"
      burst=$((burst - 1))
    done
  ) &
  swapper=$!
  read -r r50 r99 < <(measure "reloading-$round")
  wait "$swapper"
  sleep 3  # the last swap is picked up within 2 s
  after=$(applied)
  echo "| $round | $s50 | $s99 | $r50 | $r99 | $(awk "BEGIN {print $after - $before}") |"
done
invalid=0
for out in "$work"/wrk-*.txt; do
  for bad in non2xx not_ok connect_err read_err write_err timeout_err status_err; do
    grep '^LOADRESULT' "$out" | grep -q " $bad=0\b" || invalid=1
  done
done
if [ "$invalid" -ne 0 ]; then
  echo "reload.sh: some answers were not the upstream's OK (see $work, kept)" >&2
  trap - EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  exit 3
fi
