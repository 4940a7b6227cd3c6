#!/usr/bin/env bash
# The project's benchmark, one command: `bash bench/run.sh` (about 15 minutes on 2 cores, its builds aside).
#
# What it runs: release builds of the node, the reference provider and `tongban-loadgen`; a Jinan
# and a Qingdao node with their providers as separate processes on core 0 (taskset), the
# load generator on core 1; the same calls straight to Jinan's provider and through nginx
# (grpc_pass) and haproxy (h2), each pinned to core 0 too; then, through Jinan, local calls (Jinan's provider) and
# cross-city calls (Qingdao's), each
#   - open loop at 1,000 and 5,000 calls/s (latency from the scheduled start: coordinated
#     omission corrected),
#   - closed loop with 64 calls in flight (the saturated rate),
#   - closed loop with 1,000 calls in flight (every grpc-status must be OK),
# with the CPU time of each process per call (utime+stime from /proc) and its peak RSS.
# Then, every process above stopped, the replicas rows (bench/replicas.sh: one node on sled,
# on etcd, and two replicas behind haproxy) and instructions per call (bench/callgrind.sh).
# It writes bench/RESULTS.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${BENCH_SECONDS:-8}
. "$root/bench/lib.sh"
bench_workdir bench

# The peers it compares with, from Debian's packages when missing.
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v h2load >/dev/null || missing+=(nghttp2-client)
# The replicas rows (bench/replicas.sh): etcd, and protoc for the etcd client's build.
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" != 0 ] && sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --quiet -p tongban -p tongban-loadgen
bin="$root/target/release"
server_cpu="taskset -c 0"
client_cpu="taskset -c 1"
if ! command -v taskset >/dev/null || [ "$(nproc)" -lt 2 ]; then server_cpu=""; client_cpu=""; fi

bench_configs

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

jinan_token=$(token jinan)
bench_register
declare -A consent
bench_consents

# Per-thread CPU ticks of a process: "name/tid ticks" lines.
thread_ticks() {
  local pid; pid=$(cat "$work/$1.pid")
  for t in /proc/"$pid"/task/*; do echo "$(tr ' ' '_' <"$t/comm")/${t##*/} $(awk '{print $14+$15}' "$t/stat")"; done
}
rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$(cat "$work/$1.pid")/status"; }
procs=(node-jinan node-qingdao provider-jinan provider-qingdao)
hz=$(getconf CLK_TCK)

# Large reports (issue 20), before any load run so that each process's peak RSS is the
# transfer's: a 200 MiB imaging attachment (random bytes) published through Jinan's node to
# Jinan's result registry (PublishStream), then fetched by a Qingdao hospital through
# Qingdao's node across the boundary (GetReport), its SHA-256 checked by the CLI and the
# file compared byte for byte.
mkdir -p "$work/medical-jinan"
start registry-jinan "$bin/tongban" provider medical --city jinan --org wjw --listen 127.0.0.1:7401 \
  --data-dir "$work/medical-jinan" --node http://127.0.0.1:7000 \
  --token "$("$bin/tongban" token issue --certs "$work/certs" --city jinan --org wjw --ttl 1h)"
study_patient=370102197805060048   # the subject of tests/fixtures/fhir/ct-head-study.json
grant_medical() { # grantee, item
  "$bin/tongban-loadgen" --node http://127.0.0.1:7000 --token "$jinan_token" --to jinan \
    --subject "$study_patient" --grant-consent "$portal_token" --grant-only --grantee "$1" \
    --catalog-code "$2" --service tongban.medical.v1.ResultRegistry --purpose medical-treatment
}
publish_consent=$(grant_medical jinan/qilu MR-02)
read_consent=$(grant_medical qingdao/qdfy MR-01)
for _ in $(seq 1 100); do
  "$bin/tongban" registry list --node http://127.0.0.1:8000 --token "$(token qingdao)" --city jinan 2>/dev/null |
    grep -q "ResultRegistry.* up " && break
  sleep 0.1
done
head -c $((200 << 20)) /dev/urandom >"$work/study.dcm"
rss_now() { awk '/VmRSS/ {print $2}' "/proc/$(cat "$work/$1.pid")/status"; }
transfer_rss_before="node-jinan $(rss_now node-jinan); node-qingdao $(rss_now node-qingdao); registry-jinan $(rss_now registry-jinan)"
publish_out=$($client_cpu "$bin/tongban" medical import tests/fixtures/fhir/ct-head-study.json \
  --institution 12370000495570024A --attachment "$work/study.dcm" --node http://127.0.0.1:7000 \
  --token "$("$bin/tongban" token issue --certs "$work/certs" --city jinan --org qilu --ttl 1h)" \
  --city jinan --consent "$publish_consent" 2>&1 || true)
registry_id=$(grep -o 'jinan-rpt-[0-9a-f]*' <<<"$publish_out" | head -n1 || true)
fetch_out=$($client_cpu "$bin/tongban" medical fetch --node http://127.0.0.1:8000 \
  --token "$("$bin/tongban" token issue --certs "$work/certs" --city qingdao --org qdfy --ttl 1h)" \
  --patient "$study_patient" --consent "$read_consent" --city jinan --registry-id "${registry_id:-none}" \
  --out "$work/fetched.dcm" 2>&1 || true)
if [ -n "$registry_id" ] && cmp -s "$work/study.dcm" "$work/fetched.dcm"; then
  transfer_row="| 200 MiB | $(grep -o '[0-9.]* MB/s' <<<"$publish_out" | head -n1) | $(grep -o '[0-9.]* MB/s' <<<"$fetch_out" | head -n1) | identical (SHA-256 checked by the CLI, then cmp) | $(rss_kib node-jinan) | $(rss_kib node-qingdao) | $(rss_kib registry-jinan) |"
else
  transfer_row="| 200 MiB | failed: $(tr '\n|' '  ' <<<"$publish_out" | head -c 200) | $(tr '\n|' '  ' <<<"$fetch_out" | head -c 200) | - | - | - | - |"
fi
rm -f "$work/study.dcm" "$work/fetched.dcm"

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
        --to "$to" --subject "$subject" --consent "${consent[$to]}" \
        --rate "$rate" --in-flight "$inflight" --seconds "$seconds" --connections 4 || true)
  local ok cpu=""
  ok=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['ok'])" "$out")
  thread_ticks node-jinan >"$work/threads.after"
  [ "$proxy" = node-jinan ] && threads+=("$(python3 - "$label" "$work/threads.before" "$work/threads.after" "$seconds" "$hz" "$out" "$work/extra.tsv" <<'PY'
import json, sys
label, before, after, secs, hz, out = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), json.loads(sys.argv[6])
b = dict(l.split() for l in open(before))
a = dict(l.split() for l in open(after))
per_thread = {k: int(a[k]) - int(b.get(k, 0)) for k in a}
by_name = {}
for k, v in per_thread.items():
    name = k.rsplit("/", 1)[0]
    by_name[name] = by_name.get(name, 0) + v
d = sorted(((v, k) for k, v in by_name.items()), reverse=True)[:4]
top = ", ".join(f"{k} {v / hz / secs * 100:.0f}%" for v, k in d)
busiest = max(per_thread.items(), key=lambda kv: kv[1])
one = f"{busiest[0].rsplit('/', 1)[0]} {busiest[1] / hz / secs * 100:.0f}%"
with open(sys.argv[7], "a") as x:
    x.write(f"busiest\t{label}\t{busiest[0].rsplit('/', 1)[0]}\t{busiest[1] / hz / secs * 100}\n")
print(f"| {label} | {top} | {one} | {out['failed'] or '-'} |")
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
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" \
    "$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['rps'])" "$out")" \
    "$(echo "$cpu" | cut -d'|' -f1 | tr -d ' ')" \
    "$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['latency_us']['p99'])" "$out")" \
    "$(python3 -c "import json,sys; o=json.loads(sys.argv[1]); print(sum(o['failed'].values()), o['calls'])" "$out")" \
    "$(echo "$cpu" | cut -d'|' -f2 | tr -d ' ')" \
    >>"$work/figures.tsv"
}
# Warm up both routes (connections, token cache, store) without recording.
for to in jinan qingdao; do
  $client_cpu "$bin/tongban-loadgen" --node http://127.0.0.1:7000 --token "$jinan_token" \
    --to "$to" --subject "$subject" --consent "${consent[$to]}" --rate 500 --seconds 2 >/dev/null || true
done
# The same calls without Tongban: straight to Jinan's provider, and through nginx and haproxy.
for peer in "direct:http://127.0.0.1:7201:none" "nginx grpc_pass:http://127.0.0.1:7301:nginx" "haproxy h2:http://127.0.0.1:7302:haproxy"; do
  name=${peer%%:*}; rest=${peer#*:}; proxy=${rest##*:}; url=${rest%:*}
  run "$name, 1,000/s open loop" jinan 1000 2000 "$url" "$proxy"
  run "$name, saturated (64 in flight)" jinan 0 64 "$url" "$proxy"
done
# One group commit (write + fsync) of Jinan's audit: the mean of its commit-duration
# histogram over the local 1,000/s row, from the node's /metrics.
commit_sum_count() {
  python3 - <<'PY'
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5).read().decode()
v = {}
for line in text.splitlines():
    for k in ("tongban_audit_commit_duration_seconds_sum", "tongban_audit_commit_duration_seconds_count"):
        if line.startswith(k + " "):
            v[k] = float(line.split()[1])
print(v.get("tongban_audit_commit_duration_seconds_sum", 0), v.get("tongban_audit_commit_duration_seconds_count", 0))
PY
}
for scenario in "local:jinan" "cross-city:qingdao"; do
  name=${scenario%%:*}; to=${scenario##*:}
  [ "$name" = local ] && commits_before=$(commit_sum_count)
  run "$name, 1,000/s open loop" "$to" 1000 2000
  if [ "$name" = local ]; then
    read -r s0 c0 <<<"$commits_before"; read -r s1 c1 <<<"$(commit_sum_count)"
    echo -e "fsync_us\t$(python3 -c "print(($s1-$s0)/max($c1-$c0,1)*1e6)")" >>"$work/extra.tsv"
  fi
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
        -H 'x-tongban-purpose: case-handling' -H "x-tongban-subject: $subject" \
        -H "x-tongban-consent: ${consent[$3]}" -H 'x-tongban-catalog-code: JQ-03' \
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
  bench_wait_federated
  $client_cpu "$bin/tongban-loadgen" --node http://127.0.0.1:7000 --token "$jinan_token" \
    --to jinan --subject "$subject" --consent "${consent[jinan]}" --rate 500 --seconds 2 >/dev/null || true
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

# Two server cores: Jinan's node started on cores 0 and 1 (so its runtime has two worker
# threads) and the load generator on both too (this machine has no third core). The
# busiest single thread's share of a core says whether one thread is the ceiling.
if [ -n "$server_cpu" ]; then
  server_cpu="taskset -c 0,1" restart_jinan "$work/jinan.toml"
  client_cpu="" run "local, two server cores, saturated (64 in flight)" jinan 0 64
  client_cpu="" run "local, two server cores, saturated (256 in flight)" jinan 0 256
fi

# Ten runs in a row of 100,000 calls each (one million audited calls, everything on) on a
# freshly started node with its store growing: calls/s of each, and resident memory after.
restart_jinan "$work/jinan.toml"
soak=()
for i in $(seq 1 10); do
  out=$($client_cpu "$bin/tongban-loadgen" --node http://127.0.0.1:7000 --token "$jinan_token" \
        --to jinan --subject "$subject" --consent "${consent[jinan]}" \
        --rate 0 --in-flight 64 --connections 4 --calls "${BENCH_SOAK_CALLS:-100000}" --seconds 600 \
        2>"$work/soak-$i.err" || true)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$work/node-jinan.pid")/status")
  if ! python3 -c "import json,sys; json.loads(sys.argv[1])" "$out" 2>/dev/null; then
    soak+=("| $i | the load generator failed: $(head -c 200 "$work/soak-$i.err" | tr '\n|' '  ') | | | |")
    continue
  fi
  soak+=("$(python3 -c "import json,sys; o=json.loads(sys.argv[1]); print(f\"| {sys.argv[2]} | {o['rps']:,.0f} | {o['ok']:,} | {sum(o['failed'].values())} | {int(sys.argv[3])/1024:.1f} |\")" "$out" "$i" "$rss")")
  echo -e "soak\t$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['rps'])" "$out")\t$rss" >>"$work/extra.tsv"
done
soak_hwm=$(rss_kib node-jinan)

# Where Jinan's node spends its CPU (perf, cpu-clock samples of the whole process, grouped
# by what the symbol belongs to), saturated, local and cross-city.
profile() { # label, target city, [rate (0: closed loop, 64 in flight)]
  command -v perf >/dev/null || return 0
  local pid; pid=$(cat "$work/node-jinan.pid")
  $client_cpu "$bin/tongban-loadgen" --node http://127.0.0.1:7000 --token "$jinan_token" \
    --to "$2" --subject "$subject" --consent "${consent[$2]}" \
    --rate "${3:-0}" --in-flight "$([ "${3:-0}" = 0 ] && echo 64 || echo 2000)" --connections 4 --seconds 7 >/dev/null 2>&1 &
  local lg=$!
  sleep 1
  perf record -q -e cpu-clock -F 999 -p "$pid" -o "$work/perf.data" -- sleep 5 >/dev/null 2>&1 || true
  wait "$lg" || true
  perf report -i "$work/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null |
    python3 bench/profile_groups.py "$1" >>"$work/profile.md" || true
}
profile "local, saturated" jinan
profile "cross-city, saturated" qingdao
# And at 1,000 calls/s, the rate of a city's working day (issue 25's CPU-per-call targets).
profile "local, 1,000/s open loop" jinan 1000
profile "cross-city, 1,000/s open loop" qingdao 1000

# The audit log offline, after all of the above: verify and reindex Jinan's log (node
# stopped), their speed and peak memory, and the index's size against the log's.
jpid=$(cat "$work/node-jinan.pid"); kill "$jpid"; while kill -0 "$jpid" 2>/dev/null; do sleep 0.1; done
python3 - "$bin/tongban" "$work/data/jinan" >>"$work/extra.tsv" <<'PY'
import os, re, subprocess, sys, time
tongban, data = sys.argv[1], sys.argv[2]
for cmd in ("verify", "reindex"):
    t0 = time.monotonic()
    p = subprocess.Popen([tongban, "audit", cmd, "--data-dir", data], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.monotonic() - t0
    m = re.search(r"(\d+) records", out)
    n = int(m.group(1)) if m else 0
    print(f"{cmd}\t{n}\t{secs}\t{ru.ru_maxrss}\t{os.waitstatus_to_exitcode(status)}")
audit = os.path.join(data, "audit")
log = sum(os.path.getsize(os.path.join(audit, f)) for f in os.listdir(audit) if f.startswith("seg-"))
print(f"sizes\t{log}\t{os.path.getsize(os.path.join(audit, 'index.bin'))}")
PY

# The audit log's own capacity: group-commit appends with the index following them.
audit_benches=$(cargo bench --quiet -p tongban-gateway --bench audit_append --bench audit_index --bench audit_merkle 2>"$work/cargo-bench.err" | grep -E '^\||^audit|records/s' || true)
[ -n "$audit_benches" ] || audit_benches="(cargo bench failed: $(tail -n 3 "$work/cargo-bench.err" | tr '\n' ' '))"

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
  echo "| run | threads (by name) | busiest single thread | failures |"
  echo "| --- | --- | --- | --- |"
  for r in "${threads[@]}"; do echo "$r"; done
  echo
  echo "h2load saturation (4 connections, 64 streams each, pre-encoded frames; HTTP 2xx counted, not grpc-status):"
  echo
  echo "| target | req/s | HTTP 2xx |"
  echo "| --- | ---: | ---: |"
  for r in "${h2rows[@]}"; do echo "$r"; done
  echo
  echo "Large reports: a 200 MiB attachment published through Jinan's node (\`tongban medical import --attachment\`, PublishStream) and"
  echo "fetched from Qingdao through Qingdao's node across the boundary (\`tongban medical fetch\`, GetReport), before any load run;"
  echo "peak RSS (VmHWM, KiB) of each process afterwards (resident before the transfer: $transfer_rss_before):"
  echo
  echo "| attachment | publish | fetch across the boundary | content | node jinan peak | node qingdao peak | registry jinan peak |"
  echo "| --- | ---: | ---: | --- | ---: | ---: | ---: |"
  echo "$transfer_row"
  echo
  echo "Peak RSS (KiB), before the span-export rows: $peak_rss"
  echo
  echo "Span export rows (\"local, export off / all traces … \"): Jinan's node restarted with the"
  echo "config varied; the sink (\`tongban-otlp-sink\`, an OTLP receiver) took $(( ${spans_after:-0} - ${spans_before:-0} )) spans during them."
  echo
  echo "Ten runs in a row of ${BENCH_SOAK_CALLS:-100000} calls each (local, everything on, 64 in flight) on a"
  echo "restarted node, its audit log and store growing; resident memory after each run:"
  echo
  echo "| run | calls/s | ok | failed | RSS after (MiB) |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for r in "${soak[@]}"; do echo "$r"; done
  echo
  echo "Peak RSS of the node over the ten runs: $(( ${soak_hwm:-0} / 1024 )) MiB."
  echo
  echo "The audit log offline (Jinan's, the node stopped, after every row above):"
  echo
  python3 - "$work/extra.tsv" <<'PY'
import sys
print("| command | records | seconds | records/s | peak RSS (MiB) | exit |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[0] in ("verify", "reindex"):
        n, secs, rss, code = int(f[1]), float(f[2]), int(f[3]), f[4]
        print(f"| tongban audit {f[0]} | {n:,} | {secs:.2f} | {n / secs:,.0f} | {rss / 1024:.1f} | {code} |")
    if f[0] == "sizes":
        log, idx = int(f[1]), int(f[2])
        sizes = (log, idx)
print()
print(f"Log {sizes[0] / 2**20:.1f} MiB, index {sizes[1] / 2**20:.1f} MiB ({sizes[1] / sizes[0]:.2f}x the log).")
PY
  echo
  echo "The audit log's capacity on this machine (\`cargo bench -p tongban-gateway --bench audit_append --bench audit_index\`):"
  echo "sync mode acknowledges a record once it is fsynced, in group commits; the index thread"
  echo "follows each group, and its lag (records committed but not yet indexed) is sampled."
  echo
  echo "$audit_benches"
  echo
  echo "## Where the node's CPU goes"
  echo
  echo "perf (cpu-clock samples of Jinan's node process while the load generator keeps 64 calls"
  echo "in flight, or sends 1,000 calls/s open loop), grouped by what each symbol belongs to:"
  cat "$work/profile.md" 2>/dev/null || echo "(perf not available)"
  echo
  echo "Jinan's link to Qingdao over the whole run (Qingdao's node is never restarted):"
  echo "\"peer lost\" logged $(grep -c 'peer lost' "$work/node-jinan.log" || true) times by Jinan's node;"
  echo "$(grep -c ' WARN \| ERROR ' "$work/node-jinan.log" || true) warning or error lines in its log, $(grep -c ' WARN \| ERROR ' "$work/node-qingdao.log" || true) in Qingdao's"
  echo "(Qingdao's include Jinan's restarts between rows)."
  echo
  echo "Span export (issue 12), from the rows above:"
  echo
  python3 - "$work/figures.tsv" <<'PY'
import sys
f = {}
for line in open(sys.argv[1]):
    label, rps, cpu, p99, failed, _ = line.rstrip("\n").split("\t")
    f[label] = (float(rps), float(cpu) if cpu not in ("", "-") else None)
sat = lambda n: f.get(f"{n}, saturated (64 in flight)")
off, sink, refused = sat("local, export off"), sat("local, all traces to a collector"), sat("local, all traces, collector refusing")
print("| ratio | value |")
print("| --- | ---: |")
if off and sink and refused:
    print(f"| collector refusing ÷ collector up, node CPU per call (≈ 1.0) | {refused[1] / sink[1]:.2f} |")
    print(f"| collector refusing ÷ collector up, saturated calls/s (≈ 1.0) | {refused[0] / sink[0]:.2f} |")
    print(f"| every trace exported ÷ export off, node CPU per call | {sink[1] / off[1]:.2f} |")
PY
  echo
  echo "## Targets of issue 25"
  echo
  echo "Node CPU per call at 1,000 calls/s is what a city idle most of the day pays; cross-city"
  echo "counts both nodes. Where one is missed, bench/README.md gives the profile and the shapes"
  echo "tried (bench/AB-RESULTS.md)."
  echo
  python3 - "$work/figures.tsv" "$work/extra.tsv" <<'PY'
import sys
f = {}
for line in open(sys.argv[1]):
    label, rps, cpu, p99, failed, cpu_q = line.rstrip("\n").split("\t")
    num = lambda x: float(x) if x not in ("", "-") else None
    f[label] = (float(rps), num(cpu), float(p99), num(cpu_q))
extra = [l.rstrip("\n").split("\t") for l in open(sys.argv[2])]
fsync = [float(e[1]) for e in extra if e[0] == "fsync_us"]
sat = lambda n: f.get(f"{n}, saturated (64 in flight)")
slow = lambda n: f.get(f"{n}, 1,000/s open loop")
rows = []
def target(name, value, goal, met):
    rows.append((name, value, goal, "met" if met else "**missed**"))
n, l, c, d = slow("nginx grpc_pass"), slow("local"), slow("cross-city"), slow("direct")
if n and l and n[1]:
    r = l[1] / n[1]
    target("node CPU per local call at 1,000/s ÷ nginx's", f"{r:.2f} ({l[1]:.0f} µs ÷ {n[1]:.0f} µs)", "≤ 1.5", r <= 1.5)
if n and c and n[1] and c[3] is not None:
    both = c[1] + c[3]
    r = both / n[1]
    target("both nodes' CPU per cross-city call at 1,000/s ÷ nginx's", f"{r:.2f} ({c[1]:.0f} + {c[3]:.0f} µs ÷ {n[1]:.0f} µs)", "≤ 3", r <= 3)
one, cross, nginx = sat("local"), sat("cross-city"), sat("nginx grpc_pass")
if one and nginx:
    r = one[0] / nginx[0]
    target("one node at saturation ÷ nginx, calls/s", f"{r:.2f} ({one[0]:,.0f} ÷ {nginx[0]:,.0f})", "≥ 1.0", r >= 1.0)
if one and cross:
    r = cross[0] / one[0]
    target("cross-city ÷ one node, saturated calls/s", f"{r:.2f}", "≥ 0.5", r >= 0.5)
if d and n and l and fsync:
    added = l[2] - n[2]
    target("added p99 at 1,000/s: one node's − nginx's", f"{added:,.0f} µs (one group commit: {fsync[0]:,.0f} µs)", "≤ one group commit", added <= fsync[0])
print("| target | measured | goal | |")
print("| --- | --- | --- | --- |")
for r in rows:
    print("| " + " | ".join(r) + " |")
PY
  echo
  echo "## Targets of issue 9"
  echo
  python3 - "$work/figures.tsv" "$work/extra.tsv" "$audit_benches" <<'PY'
import re, sys
f = {}
for line in open(sys.argv[1]):
    label, rps, cpu, p99, failed, _ = line.rstrip("\n").split("\t")
    failed, calls = (float(x) for x in failed.split())
    f[label] = (float(rps), float(cpu) if cpu not in ("", "-") else None, float(p99), failed, calls)
extra = [l.rstrip("\n").split("\t") for l in open(sys.argv[2])]
benches = sys.argv[3]
sat = lambda n: f.get(f"{n}, saturated (64 in flight)")
slow = lambda n: f.get(f"{n}, 1,000/s open loop")
rows = []
def target(name, value, goal, met):
    rows.append((name, value, goal, "met" if met else "**missed**"))
one, cross = sat("local"), sat("cross-city")
nginx, haproxy, direct = sat("nginx grpc_pass"), sat("haproxy h2"), sat("direct")
if one and nginx and haproxy:
    r = one[0] / nginx[0]
    target("one node, everything on: saturated calls/s ÷ nginx's", f"{r:.2f}", "≥ 1.0", r >= 1.0)
    r = one[0] / haproxy[0]
    target("the same ÷ haproxy's (stretch)", f"{r:.2f}", "≥ 1.0", r >= 1.0)
    r = one[1] / haproxy[1]
    target("one node: proxy CPU per call ÷ haproxy's", f"{r:.2f} ({one[1]:.0f} µs ÷ {haproxy[1]:.0f} µs)", "≤ 2.0", r <= 2.0)
fsync = [float(e[1]) for e in extra if e[0] == "fsync_us"]
d, n, l = slow("direct"), slow("nginx grpc_pass"), slow("local")
if d and n and l and fsync:
    added = (l[2] - d[2]) - (n[2] - d[2])
    target("added p99 at 1,000/s: one node's − nginx's", f"{added:,.0f} µs (one group commit: {fsync[0]:,.0f} µs)", "≤ one group commit", added <= fsync[0])
if one and cross:
    r = cross[0] / one[0]
    target("cross-city ÷ one node, saturated calls/s", f"{r:.2f}", "≥ 0.5", r >= 0.5)
for name in ("local", "cross-city"):
    row = f.get(f"{name}, 1,000 in flight")
    if row:
        target(f"{name}, 1,000 calls in flight: failed calls (grpc-status)", f"{row[3]:.0f} of {row[4]:,.0f}", "0", row[3] == 0)
if one and direct:
    rows.append(("one node ÷ direct, saturated calls/s (for reference)", f"{one[0] / direct[0]:.2f}", "", ""))
for e in extra:
    if e[0] == "busiest" and "two server cores" in e[1]:
        target(f"busiest thread, {e[1]}", f"{e[2]} {float(e[3]):.0f}% of a core", "≤ 60%", float(e[3]) <= 60)
soak = [(float(e[1]), int(e[2])) for e in extra if e[0] == "soak"]
if soak:
    rss = soak[-1][1] / 1024
    target("RSS after 1,000,000 audited calls", f"{rss:.1f} MiB (after run 1: {soak[0][1] / 1024:.1f})", "≤ 64 MiB, flat", rss <= 64 and soak[-1][1] <= soak[0][1] * 1.1)
    rates = [r for r, _ in soak]
    spread = (max(rates) - min(rates)) / (sum(rates) / len(rates))
    first, last = sum(rates[:3]) / 3, sum(rates[-3:]) / 3
    target("throughput over 10 runs as the store grows", f"last 3 ÷ first 3 = {last / first:.2f}, spread {spread:.0%}", "no fall (within noise)", last / first >= 0.9)
for e in extra:
    if e[0] in ("verify", "reindex"):
        rate = int(e[1]) / float(e[2])
        goal = 1_000_000 if e[0] == "verify" else 200_000
        extra_txt = f", peak RSS {int(e[3]) / 1024:.0f} MiB" if e[0] == "reindex" else ""
        target(f"tongban audit {e[0]}", f"{rate:,.0f} records/s{extra_txt}", f"≥ {goal:,}/s", rate >= goal and e[4] == "0")
    if e[0] == "sizes":
        r = int(e[2]) / int(e[1])
        target("index size ÷ log size", f"{r:.2f}", "≤ 1.0", r <= 1.0)
m = re.findall(r"^\| sync \| (\d+) \| \d+ \| (\d+) \|.*\| (\d+) \|$", benches, re.M)
if m:
    best = max(m, key=lambda t: int(t[1]))
    target("durable audit records/s (sync, group commit, index following)", f"{int(best[1]):,} at {best[0]} in flight, index lag ≤ {int(best[2]):,} records", "≥ 50,000, bounded lag", int(best[1]) >= 50_000)
print("| target | measured | goal | |")
print("| --- | --- | --- | --- |")
for r in rows:
    print("| " + " | ".join(r) + " |")
PY
  echo
  echo "The two-server-core rows' busiest single thread is in the thread table above (goal: no"
  echo "thread above 60% of a core). Where a target is missed, the profile above says where the"
  echo "CPU goes, and bench/README.md explains the misses."
} > bench/RESULTS.md

# Replicas (issue 22), once every process above has stopped: bench/replicas.sh uses some of
# the same ports.
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
replica_seconds=$(( seconds < 5 ? seconds : 5 ))
if bash "$root/bench/replicas.sh" "$replica_seconds" >"$work/replicas.md" 2>"$work/replicas.err"; then
  {
    echo
    echo "## Replicas"
    echo
    echo "\`bash bench/replicas.sh $replica_seconds\`: Jinan's node alone on sled, alone on etcd (a local"
    echo "single-member etcd), and as two replicas on etcd behind haproxy (TCP, round robin); local"
    echo "calls to the probe provider, 64 in flight on 4 connections; the servers on core 0, the"
    echo "load generator on core 1."
    echo
    cat "$work/replicas.md"
    echo
    python3 - "$work/replicas.md" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    f = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(f) == 6 and f[1] in ("saturation", "1000/s"):
        rows[(f[0], f[1])] = (float(f[2].replace(",", "")), float(f[5]))
sled, etcd = rows.get(("one node, sled", "saturation")), rows.get(("one node, etcd", "saturation"))
two = rows.get(("two replicas, etcd, haproxy (tcp)", "saturation"))
if sled and etcd and two:
    print(f"A node on etcd costs {etcd[1]:.0f} µs of CPU per call at saturation against {sled[1]:.0f} on sled:")
    print("no call touches etcd, the node reads its snapshot. Two replicas sharing the one server")
    print(f"core give {two[0] / sled[0]:.2f}× one node's calls/s at {two[1]:.0f} µs per call: two runtimes, two")
    print("audit writers and haproxy's copy share the core. This measures the cost of the shape;")
    print("the point of replicas is a second machine, which this VM does not have.")
PY
  } >> bench/RESULTS.md
else
  printf '\n## Replicas\n\n(bench/replicas.sh failed: %s)\n' "$(tail -n 3 "$work/replicas.err" | tr '\n' ' ')" >> bench/RESULTS.md
fi
# Instructions per call (issue 25's regression guard), the nodes under callgrind: repeatable
# whatever else the machine does.
if bash "$root/bench/callgrind.sh" >"$work/callgrind.md" 2>"$work/callgrind.err"; then
  { echo; echo "## Instructions per call"; echo; echo "\`bash bench/callgrind.sh\`: both nodes under valgrind's callgrind, the deploy configs."; echo; cat "$work/callgrind.md"; } >> bench/RESULTS.md
else
  printf '\n## Instructions per call\n\n(bench/callgrind.sh failed: %s)\n' "$(tail -n 3 "$work/callgrind.err" | tr '\n' ' ')" >> bench/RESULTS.md
fi
cat bench/RESULTS.md
