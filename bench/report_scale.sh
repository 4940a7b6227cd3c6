#!/usr/bin/env bash
# The regulators' report at scale: a synthetic audit log of N records (default 10 million,
# the node's own writer: chain, frames, 64 MiB segments; cross-city Submit exchanges of the
# 27 items both ways over 30 days, 2% refused), then `tongban report` over it, weekly, as
# JSON; elapsed time and peak RSS from /usr/bin/time. Needs about 2.6 GiB of disk for 10M.
#
# usage: bash bench/report_scale.sh [N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
n=${1:-10000000}
cargo build --release --quiet -p tongban --bin tongban -p tongban-loadgen --bin tongban-make-audit-log
dir=$(mktemp -d /tmp/tongban-report-scale.XXXXXX)
trap 'rm -rf "$dir"' EXIT
./target/release/tongban-make-audit-log --dir "$dir" --records "$n" --days 30
to=$(TZ=Asia/Shanghai date +%F)
from=$(TZ=Asia/Shanghai date -d "31 days ago" +%F)
echo "log: $(du -sh "$dir/audit" | cut -f1)"
/usr/bin/time -f "report: %e s elapsed, %U s user, %M KiB peak RSS" \
  ./target/release/tongban report --audit "$dir" --from "$from" --to "$to" --period week \
  --format json --out "$dir/report.json"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('read', d['sources']['audit_records'], 'records;', len(d['applications']), 'application rows,', len(d['refusals']), 'refusal rows')" "$dir/report.json"
