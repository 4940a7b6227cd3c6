#!/usr/bin/env bash
# A/B trials of the data path's shapes (issue 25), all in one run so that the machine's
# drift does not pass for a difference: `bash bench/ab.sh` (about 15 minutes with its builds).
#
# Each variant is a Jinan and a Qingdao node (both restarted with it) in front of the probe
# providers, everything on (JWT, purpose, subject, consent, sync audit, the deploy
# configs' span export at 10%). For each variant, in turn and then again (AB_ROUNDS rounds,
# interleaved), four rows: local and cross-city, open loop at 1,000 calls/s and closed loop
# with 64 in flight. Servers on core 0, the load generator on core 1, as in bench/run.sh.
#
# The variants:
#   base            the release build as it is (glibc's malloc; `[runtime]` auto, which on
#                   the one server core is a current-thread runtime)
#   mimalloc        built with `--features mimalloc`: mimalloc as the global allocator
#   jemalloc        built with `--features jemalloc`: jemalloc as the global allocator
#   multi_thread    `[runtime] flavor = "multi_thread"`: a work-stealing pool (one worker
#                   on the one core)
#   export off      no `[telemetry]`: no span export
#   export all      `sample_ratio = 1.0`: every trace exported
#   export, none sampled `sample_ratio = 0.0`: the exporter and its subscriber layer in
#                   place, no trace recorded (what the layer costs an unsampled call)
#   batch audit     `[audit] durability = "batch"`: records fsynced every 10 ms, not before
#                   the answer (not a shape to keep: it gives up "nothing acknowledged
#                   without its durable record"; it measures what the fsync per call costs)
#   leader audit    `[audit] handoff = "leader"`: the first waiting call writes and fsyncs
#                   the group commit itself instead of waking the writer thread
#   mac assertion   `[tls] caller_assertion = "mac"`: caller assertions MACed under a key
#                   exported from the TLS connection instead of signed with the node key
#   no lifo slot    `[runtime] flavor = "multi_thread"`, `lifo_slot = false`, in a build with
#                   `--cfg tokio_unstable` (compare with multi_thread)
#   pool 2 cores    the work-stealing pool with both cores for each node (the load
#                   generator's core too)
#   per_core 2 cores `[runtime] flavor = "per_core"`: a current-thread runtime per core, the
#                   connections spread over them, both cores for each node (compare with
#                   pool 2 cores)
#   raw hpack       the nodes built against h2 with its HPACK encoder patched to send every
#                   string as a raw literal instead of Huffman-coding it (h2 has no switch
#                   for it: hyperium/h2#780); the receiving node then takes each value as a
#                   slice of the frame instead of decoding it into a new buffer. A build of
#                   its own: the patch given on cargo's command line, Cargo.lock put back
#   baseline        (only with AB_BASELINE=<commit>) that commit's build, in a worktree
#
# It writes bench/AB-RESULTS.md: the median of the rounds for each variant and row, and
# each figure against the base variant's. Knobs: AB_SECONDS (per row, default 5),
# AB_ROUNDS (default 2), AB_BASELINE, AB_ONLY (space-separated variant names to run, the
# base always included), AB_OUT (another file to write), BENCH_KEEP=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${AB_SECONDS:-5}
rounds=${AB_ROUNDS:-2}
. "$root/bench/lib.sh"
bench_workdir ab

variants=(base mimalloc jemalloc multi_thread "export off" "export all" "export, none sampled" "batch audit" "leader audit" "mac assertion"
  "no lifo slot" "pool 2 cores" "per_core 2 cores" "raw hpack")
if [ -n "${AB_ONLY:-}" ]; then
  keep=(base)
  for v in "${variants[@]}"; do [[ " $AB_ONLY " == *" $v "* ]] && [ "$v" != base ] && keep+=("$v"); done
  variants=("${keep[@]}")
fi
# The binaries: the release build, the same with mimalloc and with jemalloc (when those
# variants run), and optionally a baseline commit.
mkdir -p "$work/bin"
for alloc in mimalloc jemalloc; do
  [[ " ${variants[*]} " == *" $alloc "* ]] || continue
  cargo build --release --quiet -p tongban --features "$alloc"
  cp target/release/tongban "$work/bin/tongban-$alloc"
done
if [[ " ${variants[*]} " == *" no lifo slot "* ]]; then
  # tokio's switch for the LIFO slot is unstable: a build of its own, in its own target dir.
  RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=target/tokio-unstable \
    cargo build --release --quiet -p tongban
  cp target/tokio-unstable/release/tongban "$work/bin/tongban-unstable"
fi
if [[ " ${variants[*]} " == *" raw hpack "* ]]; then
  # h2 as locked, copied out of cargo's registry, its `encode_str` made to write raw
  # literals (bench/h2-raw-literals.py), built in a target dir of its own.
  h2_dir=$(cargo metadata --format-version 1 | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(next(p["manifest_path"] for p in m["packages"] if p["name"] == "h2").rsplit("/", 1)[0])')
  rm -rf target/ab-h2-raw && cp -r "$h2_dir" target/ab-h2-raw
  python3 bench/h2-raw-literals.py target/ab-h2-raw/src/hpack/encoder.rs
  cp Cargo.lock "$work/Cargo.lock"   # the patch rewrites h2's entry; put back below
  if ! CARGO_TARGET_DIR=target/ab-raw-hpack cargo build --release --quiet -p tongban \
    --config "patch.crates-io.h2.path=\"$root/target/ab-h2-raw\""; then
    cp "$work/Cargo.lock" Cargo.lock
    exit 1
  fi
  cp "$work/Cargo.lock" Cargo.lock
  cp target/ab-raw-hpack/release/tongban "$work/bin/tongban-raw-hpack"
fi
cargo build --release --quiet -p tongban -p tongban-loadgen   # target/release as it was
cp target/release/tongban target/release/tongban-loadgen target/release/tongban-otlp-sink "$work/bin/"
if [ -n "${AB_BASELINE:-}" ]; then
  src="$root/target/ab-baseline-src"
  [ -d "$src" ] || git worktree add -f "$src" "$AB_BASELINE" >/dev/null
  git -C "$src" checkout -q --detach "$AB_BASELINE"
  (cd "$src" && CARGO_TARGET_DIR="$root/target/ab-baseline" cargo build --release --quiet -p tongban)
  cp "$root/target/ab-baseline/release/tongban" "$work/bin/tongban-baseline"
  variants+=(baseline)
fi
bin="$work/bin"
server_cpu="taskset -c 0"
client_cpu="taskset -c 1"
if ! command -v taskset >/dev/null || [ "$(nproc)" -lt 2 ]; then server_cpu=""; client_cpu=""; fi

bench_configs
binary_of() {
  case $1 in
    mimalloc | jemalloc) echo "$bin/tongban-$1" ;;
    baseline) echo "$bin/tongban-baseline" ;;
    "no lifo slot") echo "$bin/tongban-unstable" ;;
    "raw hpack") echo "$bin/tongban-raw-hpack" ;;
    *) echo "$bin/tongban" ;;
  esac
}
config_of() { # variant, city: writes the variant's config and prints its path
  local f="$work/$2-${1// /_}.toml"
  case $1 in
    multi_thread | "pool 2 cores") { cat "$work/$2.toml"; printf '\n[runtime]\nflavor = "multi_thread"\n'; } >"$f" ;;
    "no lifo slot") { cat "$work/$2.toml"; printf '\n[runtime]\nflavor = "multi_thread"\nlifo_slot = false\n'; } >"$f" ;;
    "per_core 2 cores") { cat "$work/$2.toml"; printf '\n[runtime]\nflavor = "per_core"\n'; } >"$f" ;;
    "export off") sed '/^\[telemetry\]/,$d' "$work/$2.toml" >"$f" ;;
    "export all") sed 's/^sample_ratio = .*/sample_ratio = 1.0/' "$work/$2.toml" >"$f" ;;
    "export, none sampled") sed 's/^sample_ratio = .*/sample_ratio = 0.0/' "$work/$2.toml" >"$f" ;;
    "batch audit") sed 's/^durability = .*/durability = "batch"/' "$work/$2.toml" >"$f" ;;
    "mac assertion") sed 's/^caller_assertion = .*/caller_assertion = "mac"/' "$work/$2.toml" >"$f" ;;
    "leader audit") sed 's/^handoff = .*/handoff = "leader"/' "$work/$2.toml" >"$f" ;;
    *) cp "$work/$2.toml" "$f" ;;
  esac
  echo "$f"
}
stop_nodes() {
  local n pid
  for n in node-jinan node-qingdao; do
    [ -f "$work/$n.pid" ] || continue
    pid=$(cat "$work/$n.pid"); kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done
}
start_nodes() { # variant
  stop_nodes
  local cpu=$server_cpu
  # The "2 cores" variants give each node both cores (the load generator's too).
  if [[ $1 == *"2 cores" ]] && [ -n "$server_cpu" ]; then server_cpu="taskset -c 0,1"; fi
  start node-jinan "$(binary_of "$1")" node --config "$(config_of "$1" jinan)"
  start node-qingdao "$(binary_of "$1")" node --config "$(config_of "$1" qingdao)"
  server_cpu=$cpu
}

start otlp-sink "$bin/tongban-otlp-sink" 127.0.0.1:4317
start provider-jinan "$bin/tongban" provider probe --city jinan --listen 127.0.0.1:7201
start provider-qingdao "$bin/tongban" provider probe --city qingdao --listen 127.0.0.1:8201
start_nodes base
bench_register
declare -A consent
bench_consents
hz=$(getconf CLK_TCK)

load() { # to, rate, in_flight, seconds
  $client_cpu "$bin/tongban-loadgen" --node http://127.0.0.1:7000 --token "$(token jinan)" \
    --to "$1" --subject "$subject" --consent "${consent[$1]}" \
    --rate "$2" --in-flight "$3" --seconds "$4" --connections 4 || true
}
for round in $(seq 1 "$rounds"); do
  for v in "${variants[@]}"; do
    start_nodes "$v"
    bench_wait_federated
    load jinan 500 64 1 >/dev/null; load qingdao 500 64 1 >/dev/null   # connections, caches
    for row in "local:jinan:1000:2000" "local:jinan:0:64" "cross-city:qingdao:1000:2000" "cross-city:qingdao:0:64"; do
      IFS=: read -r name to rate inflight <<<"$row"
      j0=$(cpu_ticks node-jinan); q0=$(cpu_ticks node-qingdao)
      out=$(load "$to" "$rate" "$inflight" "$seconds")
      j1=$(cpu_ticks node-jinan); q1=$(cpu_ticks node-qingdao)
      python3 - "$v" "$round" "$name" "$rate" "$out" "$((j1 - j0))" "$((q1 - q0))" "$hz" >>"$work/ab.tsv" <<'PY'
import json, sys
v, rnd, name, rate, out, dj, dq, hz = sys.argv[1:]
o = json.loads(out)
ok = max(o["ok"], 1)
row = f"{name}, {'1,000/s' if rate == '1000' else 'saturated'}"
print("\t".join([v, rnd, row, str(o["rps"]), str(o["latency_us"]["p99"]),
                 str(int(dj) * 1e6 / int(hz) / ok), str(int(dq) * 1e6 / int(hz) / ok),
                 str(sum(o["failed"].values()))]))
PY
    done
    echo -e "$v\t$round\trss\t$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$work/node-jinan.pid")/status")" >>"$work/ab.tsv"
  done
done
stop_nodes

out=${AB_OUT:-bench/AB-RESULTS.md}
python3 - "$work/ab.tsv" "$seconds" "$rounds" "$(nproc)" >"$out" <<'PY'
import statistics, sys, datetime
path, seconds, rounds, cores = sys.argv[1:]
runs = {}
order = []
rss = {}
for line in open(path):
    f = line.rstrip("\n").split("\t")
    if f[2] == "rss":
        rss.setdefault(f[0], []).append(int(f[3]))
        continue
    v, rnd, row, rps, p99, cj, cq, failed = f
    runs.setdefault((v, row), []).append((float(rps), float(p99), float(cj), float(cq), int(failed)))
    if v not in order:
        order.append(v)
rows = ["local, 1,000/s", "local, saturated", "cross-city, 1,000/s", "cross-city, saturated"]
med = lambda xs: statistics.median(xs)
print("# A/B trials of the data path")
print()
print(f"Written by `bash bench/ab.sh` on {datetime.date.today()}, {cores} cores, {seconds} s per row, "
      f"{rounds} rounds interleaved; the median of the rounds. Servers on core 0, the load "
      "generator on core 1; everything on (JWT, purpose, subject, consent, sync audit).")
print("CPU: µs of CPU per successful call of each node (Jinan's node serves both routes; "
      "Qingdao's only provides the cross-city calls). In brackets: ÷ the base variant's.")
print()
print("| variant | row | calls/s | p99 µs | CPU/call, node jinan | CPU/call, node qingdao | failed |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for row in rows:
    base = runs.get(("base", row))
    for v in order:
        r = runs.get((v, row))
        if not r:
            continue
        rps, p99, cj, cq = (med([x[i] for x in r]) for i in range(4))
        failed = sum(x[4] for x in r)
        def rel(val, i):
            if not base or v == "base":
                return ""
            b = med([x[i] for x in base])
            return f" ({val / b:.2f})" if b else ""
        q = f"{cq:.0f}{rel(cq, 3)}" if row.startswith("cross") else "-"
        print(f"| {v} | {row} | {rps:,.0f}{rel(rps, 0) if 'saturated' in row else ''} | {p99:,.0f}{rel(p99, 1)} | {cj:.0f}{rel(cj, 2)} | {q} | {failed} |")
print()
print("Resident memory of Jinan's node after each variant's rows (VmRSS, MiB, median of the rounds):")
print()
print("| variant | RSS |")
print("| --- | ---: |")
for v in order:
    if v in rss:
        print(f"| {v} | {med(rss[v]) / 1024:.1f} |")
PY
cat "$out"
