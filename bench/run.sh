#!/usr/bin/env bash
# The project's benchmark, one command: `bash bench/run.sh` (about 3 minutes).
#
# What it runs (issue 9 is open): release builds of the node, the reference provider and `tongban-loadgen`; a Jinan
# and a Qingdao node with their providers as separate processes on core 0 (taskset), the
# load generator on core 1; the same calls straight to Jinan's provider and through nginx
# (grpc_pass) and haproxy (h2), each pinned to core 0 too; then, through Jinan, local calls (Jinan's provider) and
# cross-city calls (Qingdao's), each
#   - open loop at 1,000 and 5,000 calls/s (latency from the scheduled start: coordinated
#     omission corrected),
#   - closed loop with 64 calls in flight (the saturated rate),
#   - closed loop with 1,000 calls in flight (every grpc-status must be OK),
# with the CPU time of each process per call (utime+stime from /proc) and its peak RSS.
# It writes bench/RESULTS.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${BENCH_SECONDS:-8}
work=$(mktemp -d /tmp/tongban-bench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# The peers it compares with, from Debian's packages when missing.
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" != 0 ] && sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --quiet -p tongban -p tongban-loadgen
bin="$root/target/release"
server_cpu="taskset -c 0"
client_cpu="taskset -c 1"
if ! command -v taskset >/dev/null || [ "$(nproc)" -lt 2 ]; then server_cpu=""; client_cpu=""; fi

"$bin/tongban" certs init --out "$work/certs" --city jinan --city qingdao >/dev/null
cp -r deploy/catalog "$work/"   # the configs name it relative to themselves
for city in jinan qingdao; do
  cp "deploy/$city.toml" "deploy/policy-$city.toml" "$work/"
  # The benchmark's caller makes far more calls than a department: lift its rate limit and
  # the per-connection stream cap, nothing else.
  sed -i -e 's/^caller_rate_per_s = .*/caller_rate_per_s = 10000000/' \
         -e 's/^caller_burst = .*/caller_burst = 10000000/' \
         -e 's/^max_concurrent_streams_per_connection = .*/max_concurrent_streams_per_connection = 4096/' \
         "$work/$city.toml"
done

start() { # name, command...
  local name=$1; shift
  $server_cpu "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  echo $! >"$work/$name.pid"
}
# A reachable OTLP collector: the deploy configs export spans to 127.0.0.1:4317.
start otlp-sink "$bin/tongban-otlp-sink" 127.0.0.1:4317
start provider-jinan "$bin/tongban" provider probe --city jinan --listen 127.0.0.1:7201
start provider-qingdao "$bin/tongban" provider probe --city qingdao --listen 127.0.0.1:8201
start node-jinan "$bin/tongban" node --config "$work/jinan.toml"
start node-qingdao "$bin/tongban" node --config "$work/qingdao.toml"

# nginx (grpc_pass) and haproxy (h2), each a plain h2c proxy in front of Jinan's provider,
# one worker/thread each like the node's share of its core.
mkdir -p "$work/nginx/logs" "$work/nginx/tmp"
cat >"$work/nginx.conf" <<NGINX
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/nginx/tmp;
  proxy_temp_path $work/nginx/tmp;
  fastcgi_temp_path $work/nginx/tmp;
  uwsgi_temp_path $work/nginx/tmp;
  scgi_temp_path $work/nginx/tmp;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  http2_max_concurrent_streams 1024;
  upstream provider { server 127.0.0.1:7201; keepalive 1024; keepalive_requests 100000000; keepalive_timeout 300s; }
  server { listen 127.0.0.1:7301 http2; location / { grpc_pass grpc://provider; } }
}
NGINX
cat >"$work/haproxy.cfg" <<HAPROXY
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend grpc
  bind 127.0.0.1:7302 proto h2
  default_backend provider
backend provider
  server p1 127.0.0.1:7201 proto h2
HAPROXY
start nginx nginx -c "$work/nginx.conf"
start haproxy haproxy -f "$work/haproxy.cfg" -db

token() { "$bin/tongban" token issue --certs "$work/certs" --city "$1" --org hrss --ttl 1h; }
jinan_token=$(token jinan)
for city in jinan qingdao; do
  port=$([ $city = jinan ] && echo 7000 || echo 8000)
  prov=$([ $city = jinan ] && echo 7201 || echo 8201)
  for _ in $(seq 1 100); do
    "$bin/tongban" registry register --node "http://127.0.0.1:$port" --token "$(token $city)" \
      --org hrss --service tongban.crosscity.v1.CrossCityService \
      --endpoint "http://127.0.0.1:$prov" --catalog-code JQ-03 >/dev/null 2>&1 && break
    sleep 0.1
  done
done
for _ in $(seq 1 100); do
  "$bin/tongban" registry list --node http://127.0.0.1:7000 --token "$jinan_token" --city qingdao 2>/dev/null | grep -q " up " && break
  sleep 0.1
done

cpu_ticks() { awk '{print $14+$15}' "/proc/$(cat "$work/$1.pid")/stat"; }
# Per-thread CPU ticks of a process, by thread name: "name ticks" lines.
thread_ticks() {
  local pid; pid=$(cat "$work/$1.pid")
  for t in /proc/"$pid"/task/*; do echo "$(tr ' ' '_' <"$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done |
    awk '{s[$1]+=$2} END {for (n in s) print n, s[n]}'
}
rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$(cat "$work/$1.pid")/status"; }
procs=(node-jinan node-qingdao provider-jinan provider-qingdao)
hz=$(getconf CLK_TCK)

rows=()
threads=()
run() { # label, to, rate, in_flight, [url, proxy process (or none)]
  local label=$1 to=$2 rate=$3 inflight=$4 url=${5:-http://127.0.0.1:7000} proxy=${6:-node-jinan}
  local procs=("$proxy" node-qingdao provider-jinan provider-qingdao)
  declare -A before
  for p in "${procs[@]}"; do [ "$p" = none ] || before[$p]=$(cpu_ticks "$p"); done
  thread_ticks node-jinan >"$work/threads.before"
  local out
  out=$($client_cpu "$bin/tongban-loadgen" --node "$url" --token "$jinan_token" \
        --to "$to" --rate "$rate" --in-flight "$inflight" --seconds "$seconds" --connections 4 || true)
  local ok cpu=""
  ok=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['ok'])" "$out")
  thread_ticks node-jinan >"$work/threads.after"
  [ "$proxy" = node-jinan ] && threads+=("$(python3 - "$label" "$work/threads.before" "$work/threads.after" "$seconds" "$hz" "$out" <<'PY'
import json, sys
label, before, after, secs, hz, out = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), json.loads(sys.argv[6])
b = dict(l.split() for l in open(before))
a = dict(l.split() for l in open(after))
d = sorted(((int(a[k]) - int(b.get(k, 0)), k) for k in a), reverse=True)[:4]
top = ", ".join(f"{k} {v / hz / secs * 100:.0f}%" for v, k in d)
print(f"| {label} | {top} | {out['failed'] or '-'} |")
PY
)")
  for p in "${procs[@]}"; do
    if [ "$p" = none ]; then cpu+="- | "; continue; fi
    local d=$(( $(cpu_ticks "$p") - ${before[$p]} ))
    cpu+="$(python3 -c "print(f'{$d*1e6/$hz/max($ok,1):.0f}')") | "
  done
  rows+=("$(python3 - "$label" "$out" "$cpu" <<'PY'
import json, sys
label, out, cpu = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
l = out["latency_us"]
failed = sum(out["failed"].values())
print(f"| {label} | {out['rps']:,.0f} | {out['ok']:,} | {failed} | {l['p50']:,} / {l['p99']:,} / {l['p999']:,} | {cpu}")
PY
)")
  # For the ratios: calls/s, the proxy's CPU per call, p99 (µs).
  printf '%s\t%s\t%s\t%s\n' "$label" \
    "$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['rps'])" "$out")" \
    "$(echo "$cpu" | cut -d'|' -f1 | tr -d ' ')" \
    "$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['latency_us']['p99'])" "$out")" \
    >>"$work/figures.tsv"
}
# Warm up both routes (connections, token cache, store) without recording.
for to in jinan qingdao; do
  $client_cpu "$bin/tongban-loadgen" --node http://127.0.0.1:7000 --token "$jinan_token" \
    --to "$to" --rate 500 --seconds 2 >/dev/null || true
done
# The same calls without Tongban: straight to Jinan's provider, and through nginx and haproxy.
for peer in "direct:http://127.0.0.1:7201:none" "nginx grpc_pass:http://127.0.0.1:7301:nginx" "haproxy h2:http://127.0.0.1:7302:haproxy"; do
  name=${peer%%:*}; rest=${peer#*:}; proxy=${rest##*:}; url=${rest%:*}
  run "$name, 1,000/s open loop" jinan 1000 2000 "$url" "$proxy"
  run "$name, saturated (64 in flight)" jinan 0 64 "$url" "$proxy"
done
for scenario in "local:jinan" "cross-city:qingdao"; do
  name=${scenario%%:*}; to=${scenario##*:}
  run "$name, 1,000/s open loop" "$to" 1000 2000
  run "$name, 5,000/s open loop" "$to" 5000 4000
  run "$name, saturated (64 in flight)" "$to" 0 64
  run "$name, 1,000 in flight" "$to" 0 1000
done

# h2load saturation: pre-encoded gRPC frames (a 5-byte prefix and the request), as many as
# it can send. h2load sees HTTP statuses only, never grpc-status: its rows say how fast, the
# loadgen rows above whether the answers were right.
python3 - "$work/frame.bin" <<'PY'
import sys
code = b"JQ-03"
msg = b"\x0a" + bytes([len(code)]) + code + b"\x1a\x60" + b"\x5a" * 96
open(sys.argv[1], "wb").write(b"\x00" + len(msg).to_bytes(4, "big") + msg)
PY
h2rows=()
h2() { # label, url, target city
  local out
  out=$($client_cpu h2load -D "$seconds" -c 4 -m 64 -d "$work/frame.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        -H "authorization: Bearer $jinan_token" -H "x-tongban-target-city: $3" \
        -H 'x-tongban-purpose: case-handling' \
        "$2/tongban.crosscity.v1.CrossCityService/Submit" 2>&1 || true)
  local rps ok
  rps=$(echo "$out" | awk '/^finished in/ {print $4}')
  ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
  h2rows+=("| $1 | ${rps:-?} | ${ok:-?} |")
}
h2 "direct" http://127.0.0.1:7201 jinan
h2 "nginx grpc_pass" http://127.0.0.1:7301 jinan
h2 "haproxy h2" http://127.0.0.1:7302 jinan
h2 "Tongban, local" http://127.0.0.1:7000 jinan
h2 "Tongban, cross-city" http://127.0.0.1:7000 qingdao

peak_rss="$(for p in "${procs[@]}" nginx haproxy; do printf '%s %s; ' "$p" "$(rss_kib "$p")"; done)"

# Span export (issue 12): Jinan's node restarted with export off, with every trace sampled
# to the reachable sink, and with every trace sampled to a collector that refuses
# connections. An unreachable collector must cost the calls nothing measurable.
restart_jinan() { # config
  local pid; pid=$(cat "$work/node-jinan.pid")
  kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  start node-jinan "$bin/tongban" node --config "$1"
  for _ in $(seq 1 100); do
    "$bin/tongban" registry list --node http://127.0.0.1:7000 --token "$jinan_token" --city qingdao 2>/dev/null | grep -q " up " && break
    sleep 0.1
  done
  $client_cpu "$bin/tongban-loadgen" --node http://127.0.0.1:7000 --token "$jinan_token" \
    --to jinan --rate 500 --seconds 2 >/dev/null || true
}
sed '/^\[telemetry\]/,$d' "$work/jinan.toml" >"$work/jinan-off.toml"
sed 's/^sample_ratio = .*/sample_ratio = 1.0/' "$work/jinan.toml" >"$work/jinan-sink.toml"
sed -e 's/^sample_ratio = .*/sample_ratio = 1.0/' -e 's#^endpoint = .*#endpoint = "http://127.0.0.1:9"#' \
  "$work/jinan.toml" >"$work/jinan-unreachable.toml"
spans_before=$(tail -n1 "$work/otlp-sink.log" | awk '{print $2}')
for variant in "off:export off" "sink:all traces to a collector" "unreachable:all traces, collector refusing"; do
  file=${variant%%:*}; name=${variant#*:}
  restart_jinan "$work/jinan-$file.toml"
  run "local, $name, 1,000/s open loop" jinan 1000 2000
  run "local, $name, saturated (64 in flight)" jinan 0 64
done
spans_after=$(tail -n1 "$work/otlp-sink.log" | awk '{print $2}')

{
  echo "# Benchmark results"
  echo
  echo "Written by \`bash bench/run.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), ${seconds} s per row."
  echo "Servers (two nodes, two reference providers) on core 0, \`tongban-loadgen\` on core 1;"
  echo "calls are \`CrossCityService/Submit\` through Jinan with a JWT, purpose, sync audit on both nodes."
  echo "Latency from the scheduled start of each call (µs). CPU: µs of CPU per successful call of each process."
  echo
  echo "| run | calls/s | ok | failed | p50 / p99 / p99.9 µs | proxy (node jinan, nginx or haproxy) | node qingdao | provider jinan | provider qingdao |"
  echo "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"
  for r in "${rows[@]}"; do echo "${r% | }"; done
  echo
  echo "Node Jinan's busiest threads (share of one core over the row) and the failures by code:"
  echo
  echo "| run | threads | failures |"
  echo "| --- | --- | --- |"
  for r in "${threads[@]}"; do echo "$r"; done
  echo
  echo "h2load saturation (4 connections, 64 streams each, pre-encoded frames; HTTP 2xx counted, not grpc-status):"
  echo
  echo "| target | req/s | HTTP 2xx |"
  echo "| --- | ---: | ---: |"
  for r in "${h2rows[@]}"; do echo "$r"; done
  echo
  echo "Peak RSS (KiB), before the span-export rows: $peak_rss"
  echo
  echo "Span export rows (\"local, export off / all traces … \"): Jinan's node restarted with the"
  echo "config varied; the sink (\`tongban-otlp-sink\`, an OTLP receiver) took $(( ${spans_after:-0} - ${spans_before:-0} )) spans during them."
  echo
  echo "Ratios (from the load generator's rows above; targets of issue 9 in brackets):"
  echo
  python3 - "$work/figures.tsv" <<'PY'
import sys
f = {}
for line in open(sys.argv[1]):
    label, rps, cpu, p99 = line.rstrip("\n").split("\t")
    f[label] = (float(rps), float(cpu) if cpu not in ("", "-") else None, float(p99))
sat = lambda n: f.get(f"{n}, saturated (64 in flight)")
slow = lambda n: f.get(f"{n}, 1,000/s open loop")
rows = []
one, cross = sat("local"), sat("cross-city")
nginx, haproxy, direct = sat("nginx grpc_pass"), sat("haproxy h2"), sat("direct")
if one and nginx and haproxy:
    rows.append(("one node, saturated calls/s ÷ nginx's (≥ 1.0)", one[0] / nginx[0]))
    rows.append(("one node, saturated calls/s ÷ haproxy's (stretch ≥ 1.0)", one[0] / haproxy[0]))
    rows.append(("one node, proxy CPU per call ÷ haproxy's (≤ 2.0)", one[1] / haproxy[1]))
if one and cross:
    rows.append(("cross-city ÷ one node, saturated calls/s (≥ 0.5)", cross[0] / one[0]))
if one and direct:
    rows.append(("one node ÷ direct, saturated calls/s", one[0] / direct[0]))
off, sink, refused = sat("local, export off"), sat("local, all traces to a collector"), sat("local, all traces, collector refusing")
if off and sink and refused:
    rows.append(("span export, collector refusing ÷ collector up, node CPU per call (≈ 1.0)", refused[1] / sink[1]))
    rows.append(("span export, collector refusing ÷ collector up, saturated calls/s (≈ 1.0)", refused[0] / sink[0]))
    rows.append(("span export of every trace ÷ export off, node CPU per call", sink[1] / off[1]))
d, n, l = slow("direct"), slow("nginx grpc_pass"), slow("local")
if d and n and l:
    rows.append(("added p99 at 1,000/s, one node − nginx's (≤ one fsync), µs", (l[2] - d[2]) - (n[2] - d[2])))
print("| ratio | value |")
print("| --- | ---: |")
for name, v in rows:
    print(f"| {name} | {v:.2f} |")
PY
  echo
  echo "Not yet measured here (issue 9): the consent path; 10 runs in a row; two server cores."
} > bench/RESULTS.md
cat bench/RESULTS.md
