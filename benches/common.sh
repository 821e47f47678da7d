# Shared by the comparison scripts (sourced, not run): prerequisites, a work directory
# cleaned up on exit, the release binary, and starting eventline and nats-server on free
# loopback ports. The sourcing script sets `script` (its name, for messages) first.

NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}

die() {
    echo "$script: $*" >&2
    exit 1
}

[[ -x $NATS_SERVER ]] || die "nats-server not found (set NATS_SERVER)"
command -v python3 >/dev/null || die "python3 is needed (free port, report table)"

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release
# A copy, so that a concurrent rebuild cannot swap the binary between runs. The load tool is
# always this build's; SERVER_BIN runs another build's server under it (e.g. to measure a
# change before and after in one sitting).
bin=$work/eventline
cp target/release/eventline "$bin"
server_bin=$work/eventline-server
cp "${SERVER_BIN:-target/release/eventline}" "$server_bin"

# start_eventline NAME [serve options...]: eventline on port 0 with its own data directory;
# the first line of its stdout names the bound address. Sets evl_pid and evl_addr.
start_eventline() {
    local name=$1 line=""
    shift
    "$server_bin" serve --port 0 --log-level warn --data "$work/evl-$name" "$@" \
        >"$work/evl-$name.out" 2>"$work/evl-$name.log" &
    evl_pid=$!
    pids+=("$evl_pid")
    for _ in $(seq 100); do
        # The shell may not have created the file yet.
        line=$(head -n 1 "$work/evl-$name.out" 2>/dev/null || true)
        [[ -n $line ]] && break
        kill -0 "$evl_pid" 2>/dev/null || die "eventline ($name) exited: $(cat "$work/evl-$name.log")"
        sleep 0.1
    done
    [[ $line == "listening on "* ]] || die "eventline ($name) printed no address (got '$line'): $(cat "$work/evl-$name.log")"
    evl_addr=${line#listening on }
}

# start_nats [nats-server options...]: nats-server on a port the kernel just handed out (a
# tiny race, fine for a bench script). Sets nats_pid and nats_addr.
start_nats() {
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$NATS_SERVER" "$@" -a 127.0.0.1 -p "$port" >"$work/nats.log" 2>&1 &
    nats_pid=$!
    pids+=("$nats_pid")
    nats_addr=127.0.0.1:$port
    for _ in $(seq 100); do
        if (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return; fi
        kill -0 "$nats_pid" 2>/dev/null || die "nats-server exited: $(cat "$work/nats.log")"
        sleep 0.1
    done
    die "nats-server is not accepting on $nats_addr"
}

# The lines every report starts with: when, which commit, which machine, how loaded.
print_header() {
    echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')${SERVER_BIN:+, server $SERVER_BIN}"
    echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    echo "# nats-server $("$NATS_SERVER" --version | awk '{print $2}')"
    echo "# load before: $(load_average)"
}

# load_average: the machine's load, quoted before and after the runs (it is shared).
load_average() { uptime | sed 's/.*load average/load average/'; }

# hwm PID: a process's peak resident memory, for the report's last line.
hwm() { awk '/^VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

# run <repeat> <case> <label> <bench arguments...>: one `eventline bench` run with --json; its
# report is appended to $results (tab-separated: repeat, case, label, JSON) and one progress
# line goes to stderr. A failed run is reported and left out. Needs results, REPEATS and
# TIMEOUT_SECS set.
run() {
    local rep=$1 case=$2 label=$3 out
    shift 3
    if ! out=$("$bin" bench "$@" --timeout-secs "$TIMEOUT_SECS" --json); then
        echo "run $rep/$REPEATS $case $label failed" >&2
        return 0
    fi
    printf '%s\t%s\t%s\t%s\n' "$rep" "$case" "$label" "$out" >>"$results"
    python3 - "$rep/$REPEATS" "$case" "$label" "$out" >&2 <<'EOF'
import json, sys
rep, case, label, out = sys.argv[1:5]
r = json.loads(out)
if r["mode"] == "apub":
    l = r["ack_latency_us"] or {}
    what = "%12.0f acks/s, ack p50 %.0f us, p99 %.0f us" % (r["msg_per_sec"], l.get("p50", 0), l.get("p99", 0))
elif r["mode"] == "replay":
    what = "load %.0f msg/s, replay %.0f msg/s, first after %.1f ms, live %.0f msg/s" % (
        r["load"]["msg_per_sec"], r["msg_per_sec"], r["first_msg_ms"], (r.get("live") or {}).get("msg_per_sec", 0))
else:
    l = r["latency_us"] or {}
    what = "p50 %.0f us, p99 %.0f us, lost %d" % (l.get("p50", 0), l.get("p99", 0), r["lost"])
print("run %s %-11s %-16s %s" % (rep, case, label, what))
EOF
}
