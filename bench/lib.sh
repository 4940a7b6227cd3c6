# Shared by bench/run.sh, bench/ab.sh and bench/callgrind.sh (sourced, not run): the
# two-city setup every benchmark starts from. After `bench_workdir`, the functions below
# expect `bin` (the release binaries) and `server_cpu` (a taskset prefix or empty).

# A scratch directory ($work), the processes `start` starts ($pids), and a trap that stops
# them and removes the directory on exit (kept with BENCH_KEEP=1).
bench_workdir() { # name
  work=$(mktemp -d "/tmp/tongban-$1-XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${BENCH_KEEP:-}" ]; then echo "bench: work directory kept: $work" >&2; else rm -rf "$work"; fi
}

# Certificates for Jinan and Qingdao and their deploy configs in $work, with the limits a
# benchmark's one caller needs lifted (its rate limit and the per-connection stream cap),
# nothing else.
bench_configs() {
  "$bin/tongban" certs init --out "$work/certs" --city jinan --city qingdao >/dev/null
  cp -r deploy/catalog "$work/"   # the configs name it relative to themselves
  local city
  for city in jinan qingdao; do
    cp "deploy/$city.toml" "deploy/policy-$city.toml" "$work/"
    sed -i -e 's/^caller_rate_per_s = .*/caller_rate_per_s = 10000000/' \
           -e 's/^caller_burst = .*/caller_burst = 10000000/' \
           -e 's/^max_concurrent_streams_per_connection = .*/max_concurrent_streams_per_connection = 4096/' \
           "$work/$city.toml"
  done
}

# Starts a server process on the server core(s), logging to $work/NAME.log.
start() { # name, command...
  local name=$1; shift
  $server_cpu "$@" >>"$work/$name.log" 2>&1 &
  pids+=($!)
  echo $! >"$work/$name.pid"
}

token() { "$bin/tongban" token issue --certs "$work/certs" --city "$1" --org hrss --ttl 1h; }

# Registers each city's probe provider (7201, 8201) with its node and waits until Jinan's
# node sees Qingdao's as up.
bench_register() {
  local city port prov
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
  bench_wait_federated
}

# Waits until Jinan's node lists Qingdao's service as up.
bench_wait_federated() {
  for _ in $(seq 1 100); do
    "$bin/tongban" registry list --node http://127.0.0.1:7000 --token "$(token jinan)" --city qingdao 2>/dev/null | grep -q " up " && break
    sleep 0.1
  done
}

# Everything on: the calls are about a citizen (a GB 11643 resident id, in $subject) and
# name a catalog item that handles personal data (JQ-03), so each providing node checks a
# consent that the citizen granted through Jinan's consent portal, one per target city
# (in the associative array `consent`).
bench_consents() {
  subject=$(python3 -c "
w=[7,9,10,5,8,4,2,1,6,3,7,9,10,5,8,4,2]; f='37010219850312002'
print(f+'10X98765432'[sum(int(c)*x for c,x in zip(f,w))%11])")
  portal_token=$("$bin/tongban" token issue --certs "$work/certs" --city jinan --org portal --role consent-portal --ttl 1h)
  local city
  for city in jinan qingdao; do
    consent[$city]=$("$bin/tongban-loadgen" --node http://127.0.0.1:7000 --token "$(token jinan)" \
      --to "$city" --subject "$subject" --grant-consent "$portal_token" --grant-only)
  done
}

# utime + stime (clock ticks) of the process started as NAME.
cpu_ticks() { awk '{print $14+$15}' "/proc/$(cat "$work/$1.pid")/stat"; }
