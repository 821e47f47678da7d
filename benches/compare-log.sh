#!/usr/bin/env bash
# Compares eventline's event log with nats-server's JetStream, using the same client for both
# (`eventline bench apub|replay|latency`, with --target eventline or --target jetstream):
#   - apub, window 1 and window 256: acknowledged publish throughput and ack round trips
#     (eventline `APUB` -> `+ACK`; JetStream `PUB` with a reply inbox -> PubAck), 128 B;
#   - replay: load N events on one subject (plain PUBs; its time is the unacknowledged publish
#     throughput into the log), then one subscriber replays them all from the start
#     (eventline `SUB <subject> 1 FROM 1`; JetStream an ephemeral push consumer), then M more
#     events are published and the same subscriber follows them live;
#   - latency at a fixed rate to a stored subject (eventline stores, then delivers; nats-server
#     delivers a message on a stream subject live to a plain subscriber and stores it as well).
# Servers: eventline `--fsync always` (fsyncs each batch before acking or delivering it), a
# second eventline `--fsync never` for the window-1 apub case, and nats-server -js. Each case
# runs REPEATS times, alternating which server goes first; the table shows medians.
#
# Usage: benches/compare-log.sh
# Environment (defaults in brackets):
#   REPEATS [3]  SIZE [128]  APUB_W1_COUNT [5000]  APUB_W256_COUNT [200000]
#   REPLAY_COUNT [1000000]  LIVE_COUNT [200000]  LATENCY_RATE [10000]  LATENCY_COUNT [50000]
#   TIMEOUT_SECS [60]  SERVER_BIN [target/release/eventline] (eventline's server; see common.sh)
#   NATS_SERVER [nats-server, else /usr/sbin/nats-server]
# Servers and client share the machine: quote figures with the header this prints.
set -euo pipefail
cd "$(dirname "$0")/.."

REPEATS=${REPEATS:-3}
SIZE=${SIZE:-128}
APUB_W1_COUNT=${APUB_W1_COUNT:-5000}
APUB_W256_COUNT=${APUB_W256_COUNT:-200000}
REPLAY_COUNT=${REPLAY_COUNT:-1000000}
LIVE_COUNT=${LIVE_COUNT:-200000}
LATENCY_RATE=${LATENCY_RATE:-10000}
LATENCY_COUNT=${LATENCY_COUNT:-50000}
TIMEOUT_SECS=${TIMEOUT_SECS:-60}
script=compare-log.sh
source benches/common.sh

start_eventline always --fsync always
always_pid=$evl_pid
always_addr=$evl_addr
start_eventline never --fsync never
never_pid=$evl_pid
never_addr=$evl_addr
start_nats -js -sd "$work/nats"

# The floor under every --fsync always ack: this disk's fdatasync, before and after the runs.
disk_line() { echo "# disk $1: $("$bin" bench fsync --dir "$work" --count 1000 | tail -n 1)"; }
print_header
disk_line before
echo "# nats-server -js at $nats_addr; eventline --fsync always at $always_addr, --fsync never at $never_addr"
echo "# $SIZE B payloads; apub w=1 x $APUB_W1_COUNT, w=256 x $APUB_W256_COUNT; replay x $REPLAY_COUNT then live x $LIVE_COUNT; latency $LATENCY_COUNT at $LATENCY_RATE msg/s"

results=$work/results.tsv
: >"$results"
common=(--size "$SIZE")
for rep in $(seq "$REPEATS"); do
    # Alternate who goes first, so neither always runs on a warmer (or more loaded) machine.
    if ((rep % 2)); then order="eventline jetstream"; else order="jetstream eventline"; fi
    for name in $order; do
        if [[ $name == eventline ]]; then
            run "$rep" apub-w1 eventline-always apub --server "$always_addr" "${common[@]}" --count "$APUB_W1_COUNT" --window 1
            run "$rep" apub-w1 eventline-never apub --server "$never_addr" "${common[@]}" --count "$APUB_W1_COUNT" --window 1
            # The disk's fdatasync right beside them: with the never round trip, the floor
            # under the always round trip.
            printf '%s\tfsync\tdisk\t%s\n' "$rep" "$("$bin" bench fsync --dir "$work" --count 1000 --json)" >>"$results"
        else
            run "$rep" apub-w1 jetstream apub --target jetstream --server "$nats_addr" "${common[@]}" --count "$APUB_W1_COUNT" --window 1
        fi
    done
    for name in $order; do
        if [[ $name == eventline ]]; then
            run "$rep" apub-w256 eventline-always apub --server "$always_addr" "${common[@]}" --count "$APUB_W256_COUNT" --window 256
        else
            run "$rep" apub-w256 jetstream apub --target jetstream --server "$nats_addr" "${common[@]}" --count "$APUB_W256_COUNT" --window 256
        fi
    done
    for name in $order; do
        if [[ $name == eventline ]]; then
            # A subject of its own per repeat: eventline cannot delete events, and the replay
            # starts at sequence 1 (JetStream re-creates its stream instead).
            run "$rep" replay eventline-always replay --server "$always_addr" "${common[@]}" --count "$REPLAY_COUNT" --live "$LIVE_COUNT" --subject "bench.replay.r$rep"
        else
            run "$rep" replay jetstream replay --target jetstream --server "$nats_addr" "${common[@]}" --count "$REPLAY_COUNT" --live "$LIVE_COUNT"
        fi
    done
    for name in $order; do
        if [[ $name == eventline ]]; then
            run "$rep" latency eventline-always latency --server "$always_addr" "${common[@]}" --count "$LATENCY_COUNT" --rate "$LATENCY_RATE"
        else
            run "$rep" latency jetstream latency --target jetstream --server "$nats_addr" "${common[@]}" --count "$LATENCY_COUNT" --rate "$LATENCY_RATE"
        fi
    done
done

echo "# load after: $(load_average)"
disk_line after
echo
python3 - "$results" <<'EOF'
import json, statistics, sys
from collections import defaultdict

runs = defaultdict(list)
per_rep = {}
for line in open(sys.argv[1]):
    rep, case, label, out = line.rstrip("\n").split("\t", 3)
    runs[case, label].append(json.loads(out))
    if case in ("apub-w1", "fsync"):
        per_rep[rep, label] = json.loads(out)

rows = [
    # case, metric label, unit, value of one run
    ("apub-w1", "apub w=1 acked", "msg/s", lambda r: r["msg_per_sec"]),
    ("apub-w1", "apub w=1 ack p50", "us", lambda r: (r["ack_latency_us"] or {}).get("p50")),
    ("apub-w1", "apub w=1 ack p99", "us", lambda r: (r["ack_latency_us"] or {}).get("p99")),
    ("apub-w256", "apub w=256 acked", "msg/s", lambda r: r["msg_per_sec"]),
    ("apub-w256", "apub w=256 ack p50", "us", lambda r: (r["ack_latency_us"] or {}).get("p50")),
    ("apub-w256", "apub w=256 ack p99", "us", lambda r: (r["ack_latency_us"] or {}).get("p99")),
    ("replay", "replay: load (plain PUB)", "msg/s", lambda r: r["load"]["msg_per_sec"]),
    ("replay", "replay: load (plain PUB)", "MB/s", lambda r: r["load"]["mb_per_sec"]),
    ("replay", "replay", "msg/s", lambda r: r["msg_per_sec"]),
    ("replay", "replay", "MB/s", lambda r: r["mb_per_sec"]),
    ("replay", "replay: first message", "ms", lambda r: r["first_msg_ms"]),
    ("replay", "live after the replay", "msg/s", lambda r: (r.get("live") or {}).get("msg_per_sec")),
    ("latency", "latency p50", "us", lambda r: (r["latency_us"] or {}).get("p50")),
    ("latency", "latency p99", "us", lambda r: (r["latency_us"] or {}).get("p99")),
    ("latency", "latency p99.9", "us", lambda r: (r["latency_us"] or {}).get("p99_9")),
    ("latency", "latency lost", "msgs", lambda r: r["lost"]),
]

def median(case, label, value):
    values = [v for v in (value(r) for r in runs[case, label]) if v is not None]
    return statistics.median(values) if values else None

def fmt(v, unit):
    if v is None:
        return "-"
    return f"{v:,.1f}" if unit in ("MB/s", "ms") or (unit == "us" and v < 100) else f"{v:,.0f}"

def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"

print(f"{'metric':<28}{'unit':>6}{'eventline':>14}{'eventline':>13}{'JetStream':>13}{'ratio':>8}{'ratio':>8}")
print(f"{'':<28}{'':>6}{'fsync always':>14}{'fsync never':>13}{'(2.9.10)':>13}{'always':>8}{'never':>8}")
for case, metric, unit, value in rows:
    a = median(case, "eventline-always", value)
    n = median(case, "eventline-never", value)
    j = median(case, "jetstream", value)
    print(f"{metric:<28}{unit:>6}{fmt(a, unit):>14}{fmt(n, unit):>13}{fmt(j, unit):>13}{ratio(a, j):>8}{ratio(n, j):>8}")
# The window-1 floor: an always ack costs one fdatasync more than a never ack, and nothing
# else. Per repeat, from runs made side by side: the always mean round trip over the disk's
# fdatasync mean plus the never mean round trip.
floors = []
for rep in sorted({r for r, _ in per_rep}):
    always, never, disk = (per_rep.get((rep, label)) for label in ("eventline-always", "eventline-never", "disk"))
    if always and never and disk:
        floor = disk["fdatasync_us"]["mean"] + never["ack_latency_us"]["mean"]
        floors.append((always["ack_latency_us"]["mean"], floor))
if floors:
    ratios = sorted(a / f for a, f in floors)
    print(f"apub w=1 --fsync always mean round trip over its floor (fdatasync mean + never mean), per repeat: "
          + ", ".join(f"{a:.0f}/{f:.0f} us = {a / f:.2f}" for a, f in floors)
          + f"; median {statistics.median(ratios):.2f}")
counts = {label: len(v) for (case, label), v in runs.items() if case == "apub-w1"}
print("(medians over repeats; ratio = eventline / JetStream: above 1 is better for msg/s and MB/s,")
print(" below 1 is better for us and ms; runs per server in apub w=1: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")
EOF
echo
echo "peak RSS (VmHWM): eventline --fsync always $(hwm "$always_pid"), eventline --fsync never $(hwm "$never_pid"), nats-server $(hwm "$nats_pid")"
cat <<'EOF'
notes:
- durability differs: nats-server 2.9.10 does not fsync per message (its default sync interval
  is 2 minutes), so its PubAck means "written to the OS"; eventline --fsync always fsyncs each
  batch before acking it (and, for a plain PUB on a stored subject, before delivering it).
  eventline --fsync never is the like-for-like case for the window-1 ack round trip.
- latency: on eventline the subject is stored, and delivered once stored; on nats-server the
  message on the stream subject is delivered live to the plain subscriber by the core server,
  while JetStream stores it alongside.
- replay: eventline replays a subject of its own per repeat (bench.replay.rN) from a log that
  also holds the earlier repeats' events; JetStream replays a stream re-created for the run.
  The load row is the replay's load phase: unacknowledged publishes until all are stored.
EOF
