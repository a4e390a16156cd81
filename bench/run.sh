#!/usr/bin/env bash
# Tandem vs etcd, side by side, in one run on this machine.
#
#   bench/run.sh            # the normal run (~10 minutes once built): 100,000 keys for the RSS figure
#   bench/run.sh --full     # 1,000,000 keys and 5 minutes of steady load
#   bench/run.sh --idle     # instead: 10 minutes of an idle Tandem set, reporting any election
#   bench/run.sh --confserv # instead: the master Configuration Server pair on a Tandem database
#                           #   (100,000 objects for start-up; add --full for 1,000,000);
#                           #   table in bench/results/confserv.md
#   bench/run.sh --proxy    # instead: the Configuration Server Proxy (reads beside the master and
#                           #   etcd, fan-out to 10,000 subscriptions, back to normal mode);
#                           #   table in bench/results/proxy.md
#
# Further arguments go to `tandem-bench run` (see `bench/target/release/tandem-bench run --help`),
# e.g. `--level-secs 5` or `--phases puts,gets`.
#
# Installs etcd and protoc from Debian's packages when missing, builds `tandem` (release) and the
# load generator, starts 3 Tandem replicas and 3 etcd members on 127.0.0.1 (free ports, temp
# data dirs), prints one markdown table and writes it to bench/results/latest.md. Everything it
# starts is killed at the end, on error and on Ctrl-C, and the temp dir is removed.
#
# TANDEM_BIN=/path/to/tandem skips building tandem (uses that binary instead).
set -euo pipefail

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$bench_dir/.." && pwd)"
command_line="bench/run.sh${*:+ $*}"

mode=run
args=()
for arg in "$@"; do
    case "$arg" in
        --idle) mode=idle ;;
        --confserv) mode=confserv ;;
        --proxy) mode=proxy ;;
        *) args+=("$arg") ;;
    esac
done

# --- what is missing
missing=()
# (The Configuration Server benchmark runs no etcd.)
[[ "$mode" == confserv ]] || command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if ((${#missing[@]})); then
    echo "--- installing ${missing[*]} (Debian packages)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- builds
if [[ -z "${TANDEM_BIN:-}" ]]; then
    echo "--- building tandem (release)" >&2
    (cd "$repo" && cargo build --release -p tandem)
    TANDEM_BIN="$repo/target/release/tandem"
fi
echo "--- building the load generator (release)" >&2
(cd "$bench_dir" && cargo build --release)
bench_bin="$bench_dir/target/release/tandem-bench"
rev="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$repo" status --porcelain -- crates 2>/dev/null)" ]]; then
    rev="$rev+uncommitted"
fi

# --- run, cleaning up whatever happens
work_dir="$(mktemp -d /tmp/tandem-bench.XXXXXX)"
bench_pid=""
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$bench_pid" ]]; then
        kill -TERM "$bench_pid" 2>/dev/null || true
        # Give it a moment to kill its children itself.
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$bench_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$bench_pid" 2>/dev/null || true
    fi
    if [[ -f "$work_dir/pids" ]]; then
        while read -r pid; do
            [[ "$pid" =~ ^[0-9]+$ ]] && kill -KILL "$pid" 2>/dev/null || true
        done <"$work_dir/pids"
    fi
    rm -rf "$work_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ "$mode" == idle ]]; then
    "$bench_bin" idle --tandem-bin "$TANDEM_BIN" --work-dir "$work_dir" "${args[@]}" &
elif [[ "$mode" == proxy ]]; then
    mkdir -p "$bench_dir/results"
    # Thousands of subscriptions: allow as many open files as the hard limit does (the proxies,
    # started by the load generator, inherit it).
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    "$bench_bin" proxy --tandem-bin "$TANDEM_BIN" --etcd-bin "$(command -v etcd)" --work-dir "$work_dir" \
        --out "$bench_dir/results/proxy.md" --command "$command_line" --tandem-rev "$rev" "${args[@]}" &
elif [[ "$mode" == confserv ]]; then
    mkdir -p "$bench_dir/results"
    "$bench_bin" confserv --tandem-bin "$TANDEM_BIN" --work-dir "$work_dir" \
        --out "$bench_dir/results/confserv.md" --command "$command_line" --tandem-rev "$rev" "${args[@]}" &
else
    mkdir -p "$bench_dir/results"
    "$bench_bin" run --tandem-bin "$TANDEM_BIN" --etcd-bin "$(command -v etcd)" --work-dir "$work_dir" \
        --out "$bench_dir/results/latest.md" --command "$command_line" --tandem-rev "$rev" "${args[@]}" &
fi
bench_pid=$!
wait "$bench_pid"
