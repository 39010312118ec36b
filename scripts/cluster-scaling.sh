#!/usr/bin/env bash
# HTTP ingest across processes, measured as a cluster of machines would see it: one
# process, then two, each in its own network namespace (its own network stack, talking
# to its peer over a veth pair) and pinned to its own core, each fed by a load generator
# beside it (NestJS-like gzip frames, pre-encoded). Frames/s is what process 0 scored
# (`tidewatch_frames_scored_total`) over the measured interval; the two runs alternate
# ROUNDS times and the ratio of their medians is printed, so noise shows as spread.
#
#   sudo scripts/cluster-scaling.sh                 # DURATION=20 ROUNDS=3 THREADS=1
#
# Needs root (ip netns), iproute2, curl, and a release build (target/release/tidewatch).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-$PWD/target/release/tidewatch}"
DURATION="${DURATION:-20}"
ROUNDS="${ROUNDS:-3}"
CONCURRENCY="${CONCURRENCY:-4}"
WARMUP="${WARMUP:-3}"
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del tw-a 2>/dev/null || true
  ip netns del tw-b 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# two namespaces joined by a veth pair: 10.77.0.1 (tw-a) and 10.77.0.2 (tw-b)
ip netns add tw-a
ip netns add tw-b
ip link add tw-a0 type veth peer name tw-b0
ip link set tw-a0 netns tw-a
ip link set tw-b0 netns tw-b
ip -n tw-a addr add 10.77.0.1/24 dev tw-a0
ip -n tw-b addr add 10.77.0.2/24 dev tw-b0
for ns in tw-a tw-b; do ip -n "$ns" link set lo up; done
ip -n tw-a link set tw-a0 up
ip -n tw-b link set tw-b0 up

printf '10.77.0.1:2101\n10.77.0.2:2101\n' > "$work/hosts"
printf '0.0.0.0:9000\n0.0.0.0:9000\n' > "$work/ingest"

# run in the background only: exec makes $! the process itself, so that kill reaches it
in_ns() { local ns="$1" cpu="$2"; shift 2; exec ip netns exec "$ns" taskset -c "$cpu" "$@"; }

scored() { ip netns exec tw-a curl -sf http://127.0.0.1:9000/metrics | awk '$1 ~ /^tidewatch_frames_scored_total({|$)/ {print $2}'; }

wait_ready() {
  local ns="$1"
  for _ in $(seq 1 600); do
    ip netns exec "$ns" curl -sf -o /dev/null http://127.0.0.1:9000/health/ready && return 0
    sleep 0.1
  done
  echo "not ready in $ns; the logs:" >&2
  tail -n 5 "$work"/serve-*.log >&2
  return 1
}

# one run: $1 processes; prints frames/s scored
run() {
  local n="$1" nss=(tw-a tw-b)
  pids=()
  for p in $(seq 0 $((n - 1))); do
    local cluster=()
    [ "$n" -gt 1 ] && cluster=(-n "$n" -p "$p" -h "$work/hosts" --ingest every-process --ingest-addrs "$work/ingest")
    in_ns "${nss[$p]}" "$p" env LOG_LEVEL=warn "$BIN" serve --port 9000 --no-webhook -w 1 "${cluster[@]}" \
      >"$work/serve-$n-$p.log" 2>&1 &
    pids+=($!)
  done
  for p in $(seq 0 $((n - 1))); do wait_ready "${nss[$p]}"; done
  local gens=()
  for p in $(seq 0 $((n - 1))); do
    in_ns "${nss[$p]}" "$p" "$BIN" loadgen --url http://127.0.0.1:9000/data-enqueue --ring 16 \
      --concurrency "$CONCURRENCY" --duration "$((DURATION + WARMUP + 2))s" >"$work/loadgen-$n-$p.log" 2>&1 &
    gens+=($!)
  done
  sleep "$WARMUP"
  local a b
  a="$(scored)"
  sleep "$DURATION"
  b="$(scored)"
  wait "${gens[@]}" || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  awk -v a="$a" -v b="$b" -v d="$DURATION" 'BEGIN{printf "%.1f\n", (b-a)/d}'
}

one=(); two=()
for r in $(seq 1 "$ROUNDS"); do
  one+=("$(run 1)")
  two+=("$(run 2)")
  echo "round $r: 1 process ${one[-1]} frames/s, 2 processes ${two[-1]} frames/s" >&2
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{print (NR%2)? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
m1="$(median "${one[@]}")"; m2="$(median "${two[@]}")"
echo "{\"one_process_frames_per_second\": $m1, \"two_processes_frames_per_second\": $m2, \"scaling\": $(awk -v a="$m1" -v b="$m2" 'BEGIN{printf "%.2f", b/a}'), \"runs\": {\"one\": [$(IFS=,; echo "${one[*]}")], \"two\": [$(IFS=,; echo "${two[*]}")]}}"
