#!/usr/bin/env bash
# Replicas, measured: Jinan's node alone on sled, alone on etcd (the shared state in a
# local single-member etcd), and as two replicas on etcd behind haproxy (TCP, round robin);
# local calls to the reference probe provider at saturation (closed loop, 64 in flight) and
# at 1,000 calls/s. Prints calls/s, p50/p99 and the node processes' CPU per call (user +
# system ticks of every replica). The servers (nodes, provider, etcd, haproxy) share core 0
# and the load generator has core 1, as in bench/run.sh: two replicas on one core measure the
# cost of the shape, not a second machine's capacity.
#
# usage: bash bench/replicas.sh [seconds per run, default 5]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-5}
command -v etcd >/dev/null && command -v haproxy >/dev/null || {
  echo "needs etcd (etcd-server) and haproxy: bash tests/setup-tools.sh; apt-get install haproxy" >&2
  exit 1
}
cargo build --release --quiet -p tongban --features etcd -p tongban-loadgen
bin="$root/target/release"
work=$(mktemp -d /tmp/tongban-replicas.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
server_cpu="taskset -c 0"
client_cpu="taskset -c 1"
if ! command -v taskset >/dev/null || [ "$(nproc)" -lt 2 ]; then server_cpu=""; client_cpu=""; fi
hz=$(getconf CLK_TCK)

start() { # name, command...
  local name=$1; shift
  $server_cpu "$@" >>"$work/$name.log" 2>&1 &
  pids+=($!)
  echo $! >"$work/$name.pid"
}
stop() { kill "$(cat "$work/$1.pid")" 2>/dev/null || true; while kill -0 "$(cat "$work/$1.pid")" 2>/dev/null; do sleep 0.05; done; }
ticks() { local t=0; for n in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$(cat "$work/$n.pid")/stat"))); done; echo $t; }

"$bin/tongban" certs init --out "$work/certs" --city jinan >/dev/null
start etcd etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster bench=http://127.0.0.1:23800 --log-level error
start provider "$bin/tongban" provider probe --city jinan --listen 127.0.0.1:7201
cat >"$work/policy.toml" <<'POLICY'
[[rules]]
name = "jinan departments call jinan's cross-city services"
effect = "allow"
callers = ["jinan/*"]
target_cities = ["jinan"]
services = ["tongban.crosscity.v1.CrossCityService"]
purposes = ["case-handling"]
POLICY

config() { # name, caller port, backend (sled|etcd), replica id
  local name=$1 port=$2 backend=$3 replica=$4
  {
    [ -n "$replica" ] && echo "replica = \"$replica\""
    cat <<TOML
city = "jinan"
[listen]
caller = "127.0.0.1:$port"
caller_plaintext = true
peer = "127.0.0.1:$((port + 100))"
admin = "127.0.0.1:0"
[storage]
data_dir = "$work/$name-data"
backend = "$backend"
TOML
    [ "$backend" = etcd ] && printf '[storage.etcd]\nendpoints = ["http://127.0.0.1:23790"]\n'
    cat <<TOML
[tls]
cert = "$work/certs/jinan/node.pem"
key = "$work/certs/jinan/node.key"
trust_bundle = "$work/certs/trust-bundle.toml"
[auth]
jwks_file = "$work/certs/jinan/jwks.json"
issuer = "https://idp.jinan.tongban"
audience = "tongban:jinan"
[policy]
file = "$work/policy.toml"
[limits]
caller_rate_per_s = 10000000
caller_burst = 10000000
max_concurrent_streams_per_connection = 4096
[audit]
durability = "batch"
batch_window_ms = 2
anchor = "serve"
TOML
  } >"$work/$name.toml"
}
token=$("$bin/tongban" token issue --certs "$work/certs" --city jinan --org hrss --ttl 1h)
register() { # caller port
  for _ in $(seq 1 100); do
    "$bin/tongban" registry register --node "http://127.0.0.1:$1" --token "$token" \
      --org hrss --service tongban.crosscity.v1.CrossCityService \
      --endpoint http://127.0.0.1:7201 --catalog-code JQ-03 >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "registration at $1 failed:" >&2; for l in "$work"/*.log; do echo "== $l" >&2; tail -n 5 "$l" >&2; done; exit 1
}
wait_serving() { # url
  for _ in $(seq 1 100); do
    $client_cpu "$bin/tongban-loadgen" --node "$1" --token "$token" --to jinan --rate 0 --in-flight 1 --calls 1 --seconds 2 >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "$1 never served" >&2; exit 1
}
rows=()
measure() { # label, url, node processes...
  local label=$1 url=$2; shift 2
  for rate in 0 1000; do
    local before after out
    before=$(ticks "$@")
    out=$($client_cpu "$bin/tongban-loadgen" --node "$url" --token "$token" --to jinan \
      --rate "$rate" --in-flight 64 --connections 4 --seconds "$seconds")
    after=$(ticks "$@")
    rows+=("$(python3 - "$label" "$rate" "$out" "$((after - before))" "$hz" <<'PY'
import json, sys
label, rate, out, ticks, hz = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
load = "saturation" if rate == "0" else f"{rate}/s"
us = ticks / hz * 1e6 / max(out["ok"], 1)
assert not out["failed"], out["failed"]
print(f"| {label} | {load} | {out['rps']:,.0f} | {out['latency_us']['p50']} | {out['latency_us']['p99']} | {us:.0f} |")
PY
)")
  done
}

config one-sled 7000 sled ""
start one-sled "$bin/tongban" node --config "$work/one-sled.toml"
register 7000; wait_serving http://127.0.0.1:7000
measure "one node, sled" http://127.0.0.1:7000 one-sled
stop one-sled

config one-etcd 7010 etcd ""
start one-etcd "$bin/tongban" node --config "$work/one-etcd.toml"
register 7010; wait_serving http://127.0.0.1:7010
measure "one node, etcd" http://127.0.0.1:7010 one-etcd
stop one-etcd

config rep-a 7020 etcd a
config rep-b 7030 etcd b
start rep-a "$bin/tongban" node --config "$work/rep-a.toml"
start rep-b "$bin/tongban" node --config "$work/rep-b.toml"
wait_serving http://127.0.0.1:7020; wait_serving http://127.0.0.1:7030
cat >"$work/haproxy.cfg" <<HAPROXY
global
  nbthread 1
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend jinan
  bind 127.0.0.1:7040
  default_backend replicas
backend replicas
  balance roundrobin
  server a 127.0.0.1:7020
  server b 127.0.0.1:7030
HAPROXY
start haproxy haproxy -f "$work/haproxy.cfg" -db
wait_serving http://127.0.0.1:7040
measure "two replicas, etcd, haproxy (tcp)" http://127.0.0.1:7040 rep-a rep-b

echo "| shape | load | calls/s | p50 µs | p99 µs | node CPU µs/call |"
echo "|---|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
