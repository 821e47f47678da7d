#!/usr/bin/env bash
# Compares eventline with nats-server on fan-out throughput, using the same client for both
# (`eventline bench fanout`), so the difference is the servers'. Runs each case REPEATS times,
# alternating which server goes first, and prints per case the median over repeats of the
# per-subscriber median msg/s, then each server's peak RSS.
#
# This is the live (volatile) path: eventline starts with `--volatile 'bench.>'` (plus the
# default `_INBOX.>`) on a temporary data directory, so the fan-out subject `bench.fanout` is
# delivered but never stored, like core NATS. For the stored path (acked publishes, replay,
# latency on a stored subject) against JetStream, see benches/compare-log.sh.
#
# Usage: benches/compare.sh
# Environment (defaults in brackets):
#   REPEATS [3]  COUNT_SMALL [2000000] (16 B and 128 B cases)  COUNT_1K [500000] (1 KiB cases)
#   NATS_SERVER [nats-server, else /usr/sbin/nats-server]
# Both servers and the client share the machine: quote figures with the header this prints.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEATS=${REPEATS:-3}
COUNT_SMALL=${COUNT_SMALL:-2000000}
COUNT_1K=${COUNT_1K:-500000}
script=compare.sh
source benches/common.sh

# `--volatile` replaces the default list, so `_INBOX.>` is named again.
start_eventline live --volatile '_INBOX.>' --volatile 'bench.>'
start_nats

print_header
echo "# eventline at $evl_addr (bench.> volatile: live only), nats-server at $nats_addr"

# subscribers size count
cases=(
    "1 16 $COUNT_SMALL"
    "4 16 $COUNT_SMALL"
    "1 128 $COUNT_SMALL"
    "4 128 $COUNT_SMALL"
    "1 1024 $COUNT_1K"
    "4 1024 $COUNT_1K"
)
results=$work/results.tsv
: >"$results"
for rep in $(seq "$REPEATS"); do
    for c in "${cases[@]}"; do
        read -r subs size count <<<"$c"
        # Alternate who goes first, so neither always runs on a warmer (or more loaded) machine.
        if ((rep % 2)); then order="eventline nats-server"; else order="nats-server eventline"; fi
        for name in $order; do
            if [[ $name == eventline ]]; then addr=$evl_addr; else addr=$nats_addr; fi
            if ! out=$("$bin" bench fanout --server "$addr" --subscribers "$subs" --size "$size" --count "$count" --json); then
                echo "run $rep 1->$subs ${size} B $name failed" >&2
                continue
            fi
            read -r median lost < <(python3 -c 'import json, sys
r = json.loads(sys.argv[1])
print((r["sub_msg_per_sec"] or {"median": 0})["median"], r["lost"])' "$out")
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$subs" "$size" "$name" "$median" "$lost" >>"$results"
            printf 'run %s/%s 1->%s %5s B %-11s median %12.0f msg/s/sub, lost %s\n' \
                "$rep" "$REPEATS" "$subs" "$size" "$name" "$median" "$lost" >&2
        done
    done
done

echo "# load after: $(load_average)"
echo
python3 - "$results" <<'EOF'
import statistics, sys
from collections import defaultdict

runs = defaultdict(list)
lost = defaultdict(int)
order = []
for line in open(sys.argv[1]):
    _rep, subs, size, name, median, n_lost = line.split("\t")
    case = (int(subs), int(size))
    if case not in order:
        order.append(case)
    runs[case, name].append(float(median))
    lost[case, name] += int(n_lost)

def fmt(values):
    return f"{statistics.median(values):,.0f}" if values else "failed"

print(f"{'case':<14}{'eventline msg/s':>17}{'nats-server msg/s':>19}{'ratio':>8}   lost (eventline/nats-server)")
for case in order:
    e, n = runs[case, "eventline"], runs[case, "nats-server"]
    ratio = f"{statistics.median(e) / statistics.median(n):.2f}" if e and n and statistics.median(n) else "-"
    label = f"1->{case[0]} {case[1]} B"
    print(f"{label:<14}{fmt(e):>17}{fmt(n):>19}{ratio:>8}   {lost[case, 'eventline']}/{lost[case, 'nats-server']}")
print("(msg/s: median over repeats of the per-subscriber median; ratio = eventline / nats-server)")
EOF
echo
echo "peak RSS (VmHWM): eventline $(hwm "$evl_pid"), nats-server $(hwm "$nats_pid")"
