#!/usr/bin/env bash
# Instructions per call, counted by valgrind's callgrind (issue 25's regression guard):
# repeatable whatever else the machine does, unlike time. `bash bench/callgrind.sh [calls]`
# prints a Markdown table; bench/run.sh puts it in RESULTS.md.
#
# Both nodes run under callgrind (release build, the deploy configs: JWT, purpose, subject,
# consent, sync audit, span export at 10%), the providers natively. After a warm-up, each
# node's counters are zeroed, the load generator makes CALLS calls (8 in flight) and each
# node's counters are dumped: instructions per call is the dump's total ÷ CALLS, for a
# local call (Jinan's node; Qingdao's idle) and a cross-city call (both nodes).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
calls=${1:-2000}
. "$root/bench/lib.sh"
bench_workdir callgrind
if ! command -v valgrind >/dev/null; then
  sudo=""; [ "$(id -u)" != 0 ] && sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind >/dev/null
fi
cargo build --release --quiet -p tongban -p tongban-loadgen
bin="$root/target/release"
server_cpu=""
bench_configs
start otlp-sink "$bin/tongban-otlp-sink" 127.0.0.1:4317
start provider-jinan "$bin/tongban" provider probe --city jinan --listen 127.0.0.1:7201
start provider-qingdao "$bin/tongban" provider probe --city qingdao --listen 127.0.0.1:8201
for city in jinan qingdao; do
  start "node-$city" valgrind --tool=callgrind --callgrind-out-file="$work/cg-$city.out" \
    "$bin/tongban" node --config "$work/$city.toml"
done
# Under callgrind a node starts in seconds, not milliseconds.
for port in 9464 9465; do
  for _ in $(seq 1 600); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/metrics', timeout=2)" "$port" 2>/dev/null && break
    sleep 0.2
  done
done
bench_register
declare -A consent
bench_consents

load() { # to, calls
  "$bin/tongban-loadgen" --node http://127.0.0.1:7000 --token "$(token jinan)" \
    --to "$1" --subject "$subject" --consent "${consent[$1]}" \
    --rate 0 --in-flight 8 --connections 2 --calls "$2" --seconds 600
}
# callgrind_control names a process by its pid: the valgrind process started above.
measure() { # label, to
  load "$2" 200 >/dev/null   # warm-up: connections, caches, tokens
  local city
  for city in jinan qingdao; do callgrind_control --zero "$(cat "$work/node-$city.pid")" >/dev/null; done
  local out; out=$(load "$2" "$calls")
  for city in jinan qingdao; do callgrind_control --dump="$1" "$(cat "$work/node-$city.pid")" >/dev/null; done
  local ok; ok=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['ok'])" "$out")
  [ "$ok" = "$calls" ] || { echo "callgrind: $ok of $calls calls succeeded" >&2; exit 1; }
}
# A dump's total instructions (the "summary:" line of the file of the dump with the label:
# callgrind writes "desc: Trigger: dump <label>").
total() { # city, label
  local f; f=$(grep -l "^desc: Trigger: .*dump $2\$" "$work"/cg-"$1".out* | tail -n1)
  awk '/^(summary|totals):/ {print $2; exit}' "$f"
}
measure local jinan
measure cross qingdao
python3 - "$calls" "$(total jinan local)" "$(total qingdao local)" "$(total jinan cross)" "$(total qingdao cross)" <<'PY'
import sys
calls, jl, ql, jc, qc = (int(x) for x in sys.argv[1:])
print(f"Instructions per call (callgrind, {calls:,} calls, 8 in flight, after 200 to warm up):")
print()
print("| call | node jinan | node qingdao | both nodes |")
print("| --- | ---: | ---: | ---: |")
print(f"| local | {jl / calls:,.0f} | {ql / calls:,.0f} (idle) | {(jl + ql) / calls:,.0f} |")
print(f"| cross-city | {jc / calls:,.0f} | {qc / calls:,.0f} | {(jc + qc) / calls:,.0f} |")
PY
