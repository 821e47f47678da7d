#!/usr/bin/env bash
# Start-up time and replay memory on a large log (issue goals: start-up <= 1 s and a replay
# peaking <= 64 MiB above the idle server, with 10,000,000 events stored).
#   COUNT [10000000]   events of 128 B to store (one subject), then replay
# Prints the load and replay rates, the log's size on disk, three start-up times on the
# full log, and the peak RSS of a restarted server while one subscriber replays everything.
set -euo pipefail
cd "$(dirname "$0")/.."
script=ten-million.sh
COUNT=${COUNT:-10000000}
source benches/common.sh

start_eventline big
print_header
"$bin" bench replay --server "$evl_addr" --count "$COUNT" --size 128 --subject big.load --timeout-secs 120 | tail -n 2
kill -TERM "$evl_pid"
wait "$evl_pid" || true
echo "log on disk: $(du -sh "$work/evl-big" | cut -f1)"

for run in 1 2 3; do
    rm -f "$work/evl-big.out"
    started=$(date +%s.%N)
    start_eventline big
    ready=$(date +%s.%N)
    idle=$(awk '/VmRSS/ {print $2}' "/proc/$evl_pid/status")
    echo "start-up $run: $(python3 -c "print(f'{$ready - $started:.2f}')") s to 'listening on', idle RSS $((idle / 1024)) MiB"
    if [[ $run == 3 ]]; then
        "$bin" sub --server "$evl_addr" big.load --from 1 --count "$COUNT" >/dev/null 2>&1
        peak=$(awk '/VmHWM/ {print $2}' "/proc/$evl_pid/status")
        echo "replay of $COUNT after restart: peak RSS $((peak / 1024)) MiB, $(((peak - idle) / 1024)) MiB above idle"
    fi
    kill -TERM "$evl_pid"
    wait "$evl_pid" || true
done
