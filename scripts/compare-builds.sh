#!/usr/bin/env bash
# Issue 16's figures for two builds, alternated run by run so that the machine's drift
# (up to 1.6x between runs here) falls on both alike: shares of the floor at -w 1 and -w 2
# for the shipped RFF model and a linear model, HTTP frames/s against in-process, and
# receive -> scored latency at 1 frame/s over HTTP.
#
#   scripts/compare-builds.sh NEW_BINARY OLD_BINARY [LINEAR_MODEL_DIR]
#
# The linear model: tidewatch train --kind linear --synthetic-frames 400 --out /tmp/linear25k
set -euo pipefail
new="$1"
old="$2"
linear="${3:-/tmp/linear25k}"
j() {
  python3 -c "import json,sys; d=json.load(sys.stdin); print(*[(k, round(d[k],3) if isinstance(d[k],float) else d[k]) for k in sys.argv[1:] if k in d])" "$@"
}
for m in default "$linear"; do for w in 1 2; do for bin in "$old" "$new"; do
  echo -n "$m -w $w $bin: "
  "$bin" bench --model "$m" --duration 8s --floor 3s -w "$w" --json 2>/dev/null |
    j frames_per_second floor_frames_per_second share_of_floor
done; done; done
for bin in "$old" "$new"; do for mode in "" "--http"; do
  echo -n "default -w 2 $mode $bin: "
  "$bin" bench --duration 10s -w 2 $mode --json 2>/dev/null | j frames_per_second
done; done
for bin in "$new" "$old"; do
  echo -n "latency 1/s -w 2 --http $bin: "
  "$bin" bench --frames 60 --rate 1 --http -w 2 --json 2>/dev/null | python3 -c "
import json, sys
d = json.load(sys.stdin)
s = {x['stage']: x for x in d['stages']}
r = s['receive_to_scored']
print('p50', r['p50_us'], 'p99', r['p99_us'], 'decode p50', s['decode']['p50_us'])"
done
