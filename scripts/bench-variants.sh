#!/usr/bin/env bash
# Throughput and latency of every dataflow variant on its shipped model, in one run, as a
# Markdown table: unpaced frames/s with the floor of this machine measured in the same run
# (`bench --floor`: the same frames inflated, decoded and passed over linearly in a plain
# loop, no dataflow) and its share of that floor, then receive -> scored p50/p99 offered
# at a fixed RATE frames/s. The machines variant has no generated frames (its input is
# machine records): it is timed by replaying the AI4I records (records/s, no floor).
#
#   scripts/bench-variants.sh [TIDEWATCH_BINARY] [RATE] [SECONDS]
set -euo pipefail
bin="${1:-target/release/tidewatch}"
rate="${2:-100}"
secs="${3:-5}"
ai4i="${AI4I:-../shared/data/AI4I2020/ai4i2020.csv}"
common=(--log-level warn --json)

field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
stage() { # stage name, percentile key, of the JSON on stdin
  field "next((s['$2'] for s in d['stages'] if s['stage'] == '$1'), '-')"
}

echo "| variant (model) | features | frames/s | floor frames/s | share of floor | receive -> scored p50 / p99 at $rate/s (us) |"
echo "|---|---|---|---|---|---|"
for spec in "default default" "ewma default" "telemetry telemetry" "forecast forecast" "rules rules"; do
  set -- $spec
  unpaced=$("$bin" bench --dataflow "$1" --model "$2" --duration "${secs}s" --floor 2s "${common[@]}" 2>/dev/null)
  paced=$("$bin" bench --dataflow "$1" --model "$2" --duration "${secs}s" --rate "$rate" "${common[@]}" 2>/dev/null)
  printf '| %s (%s) | %s | %.0f | %.0f | %.2f | %s / %s |\n' "$1" "$2" \
    "$(field "d['features']" <<<"$unpaced")" \
    "$(field "d['frames_per_second']" <<<"$unpaced")" \
    "$(field "d['floor_frames_per_second']" <<<"$unpaced")" \
    "$(field "d['share_of_floor']" <<<"$unpaced")" \
    "$(stage receive_to_scored p50_us <<<"$paced")" "$(stage receive_to_scored p99_us <<<"$paced")"
done
if [ -f "$ai4i" ]; then
  run() { "$bin" replay --dataflow machines --model machines --input "$ai4i" "${common[@]}" "$@" 2>/dev/null; }
  unpaced=$(run)
  # paced: the first RATE x SECONDS records, so that it takes SECONDS
  subset=$(mktemp --suffix .csv)
  head -n "$((rate * secs + 1))" "$ai4i" > "$subset"
  paced=$("$bin" replay --dataflow machines --model machines --input "$subset" --rate "$rate" "${common[@]}" 2>/dev/null)
  rm -f "$subset"
  lat() { field "next((s['$1'] for s in d['latencies'] if s['stage'] == 'receive_to_scored'), '-')"; }
  printf '| machines (machines), replay of %s records | 6 | %.0f | | | %s / %s |\n' \
    "$(field "d['stats']['frames_in']" <<<"$unpaced")" \
    "$(field "d['frames_per_second']" <<<"$unpaced")" \
    "$(lat p50_us <<<"$paced")" "$(lat p99_us <<<"$paced")"
fi
