#!/usr/bin/env bash
# Measures the two ways eventline spares thread wake-ups on the acknowledged path, each
# against the server without it, so each is kept only while it pays:
#   - the timeline writer's look for its next request before it parks (--writer-spin, µs);
#   - direct writes: the write path writing an idle client's socket itself instead of
#     waking the connection's writer task (--direct-writes).
# Four servers per fsync policy (both on, spin off, direct writes off, both off) take the same
# runs: acknowledged publishes at window 1 (`bench apub`, where every ack is a round trip) and
# publish-to-deliver latency on a stored subject at a fixed rate (`bench latency`). Each case
# runs REPEATS times, rotating which server goes first; the table shows medians and each
# variant's ratio to "both on".
#
# Usage: benches/wakeups.sh
# Environment (defaults in brackets):
#   REPEATS [5]  SIZE [128]  APUB_COUNT [5000]  LATENCY_RATE [10000]  LATENCY_COUNT [30000]
#   TIMEOUT_SECS [60]  SERVER_BIN [target/release/eventline] (see common.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

REPEATS=${REPEATS:-5}
SIZE=${SIZE:-128}
APUB_COUNT=${APUB_COUNT:-5000}
LATENCY_RATE=${LATENCY_RATE:-10000}
LATENCY_COUNT=${LATENCY_COUNT:-30000}
TIMEOUT_SECS=${TIMEOUT_SECS:-60}
script=wakeups.sh
source benches/common.sh

variants=(both-on spin-off direct-off both-off)
declare -A flags=(
    [both-on]="--writer-spin 100 --direct-writes true"
    [spin-off]="--writer-spin 0 --direct-writes true"
    [direct-off]="--writer-spin 100 --direct-writes false"
    [both-off]="--writer-spin 0 --direct-writes false"
)
declare -A addr pid
for fsync in never always; do
    for variant in "${variants[@]}"; do
        # shellcheck disable=SC2086 # the flags are words
        start_eventline "$variant-$fsync" --fsync "$fsync" ${flags[$variant]}
        addr[$variant-$fsync]=$evl_addr
        pid[$variant-$fsync]=$evl_pid
    done
done

print_header
echo "# $SIZE B payloads; apub w=1 x $APUB_COUNT per run; latency $LATENCY_COUNT at $LATENCY_RATE msg/s; $REPEATS repeats"

results=$work/results.tsv
: >"$results"
common=(--size "$SIZE")
for rep in $(seq "$REPEATS"); do
    # Rotate the order, so no variant always runs first (or last) on a shared machine.
    order=("${variants[@]:rep % 4}" "${variants[@]:0:rep % 4}")
    for variant in "${order[@]}"; do
        for fsync in never always; do
            run "$rep" "apub-$fsync" "$variant" apub --server "${addr[$variant-$fsync]}" "${common[@]}" \
                --count "$APUB_COUNT" --window 1
        done
        run "$rep" latency "$variant" latency --server "${addr[$variant-always]}" "${common[@]}" \
            --count "$LATENCY_COUNT" --rate "$LATENCY_RATE"
    done
done

echo "# load after: $(load_average)"
echo
python3 - "$results" "${variants[@]}" <<'EOF'
import json, statistics, sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    _rep, case, label, out = line.rstrip("\n").split("\t", 3)
    runs[case, label].append(json.loads(out))
variants = sys.argv[2:]

rows = [
    ("apub-never", "apub w=1 never", "acks/s", lambda r: r["msg_per_sec"]),
    ("apub-never", "apub w=1 never p50", "us", lambda r: (r["ack_latency_us"] or {}).get("p50")),
    ("apub-always", "apub w=1 always", "acks/s", lambda r: r["msg_per_sec"]),
    ("apub-always", "apub w=1 always p50", "us", lambda r: (r["ack_latency_us"] or {}).get("p50")),
    ("latency", "stored latency p50", "us", lambda r: (r["latency_us"] or {}).get("p50")),
    ("latency", "stored latency p99", "us", lambda r: (r["latency_us"] or {}).get("p99")),
]

def median(case, label, value):
    values = [v for v in (value(r) for r in runs[case, label]) if v is not None]
    return statistics.median(values) if values else None

print(f"{'metric':<22}{'unit':>7}" + "".join(f"{v:>12}" for v in variants) + "".join(f"{'/' + v:>13}" for v in variants[1:]))
for case, metric, unit, value in rows:
    base = median(case, variants[0], value)
    cells = [median(case, v, value) for v in variants]
    line = f"{metric:<22}{unit:>7}" + "".join(f"{c:>12,.0f}" if c is not None else f"{'-':>12}" for c in cells)
    line += "".join(f"{c / base:>13.2f}" if c and base else f"{'-':>13}" for c in cells[1:])
    print(line)
print("(medians over repeats; the last columns are each variant's median divided by both-on's:")
print(" below 1 means the variant is slower for acks/s, above 1 means it is slower for us)")
EOF
echo
echo -n "peak RSS (VmHWM):"
for fsync in never always; do
    for variant in "${variants[@]}"; do echo -n " $variant-$fsync $(hwm "${pid[$variant-$fsync]}");"; done
done
echo
