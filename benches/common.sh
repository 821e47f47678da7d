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
