#!/usr/bin/env bash
# A real Kafka-compatible broker for tidewatch's tests and examples: tansu 0.6.0 with
# sqlite storage, on a free loopback port, in a directory of its own.
#
#   scripts/kafka-broker.sh build             build tansu into the cache if it is not there
#   scripts/kafka-broker.sh start DIR         start a broker with its state in DIR (created);
#                                             prints TIDEWATCH_KAFKA_BROKERS=127.0.0.1:PORT
#   scripts/kafka-broker.sh stop DIR          stop the broker started in DIR
#   scripts/kafka-broker.sh run CMD ARGS...   start a broker in a temporary directory, run
#                                             CMD with TIDEWATCH_KAFKA_BROKERS exported, stop
#                                             it afterwards; exits with CMD's status
#
# The binary is cached outside the clone, so only the first run on a machine builds it
# (about 2,000 CPU-seconds: 17 min on two idle cores; the target dir is kept, so an
# interrupted build resumes):
#   TANSU_CACHE (default ~/.cache)  ->  $TANSU_CACHE/tansu-0.6.0/bin/tansu
#                                       $TANSU_CACHE/tansu-build  (cargo target dir)
#                                       $TANSU_CACHE/tansu-install.log
# TANSU_BIN names another tansu binary to use instead.
set -euo pipefail

TANSU_VERSION=0.6.0
CACHE="${TANSU_CACHE:-$HOME/.cache}"
ROOT="$CACHE/tansu-$TANSU_VERSION"
BIN="${TANSU_BIN:-$ROOT/bin/tansu}"

die() { echo "kafka-broker: $*" >&2; exit 1; }

build() {
  if [ -x "$BIN" ]; then
    return 0
  fi
  [ -z "${TANSU_BIN:-}" ] || die "TANSU_BIN=$TANSU_BIN is not an executable"
  mkdir -p "$CACHE"
  local log="$CACHE/tansu-install.log"
  echo "kafka-broker: building tansu $TANSU_VERSION into $ROOT (first run on this machine;" \
       "about 2,000 CPU-s; log: $log)" >&2
  # `--features libsql` is the sqlite storage engine: a plain install has none. nice: the
  # build must not starve whatever else runs on the machine.
  if ! CARGO_TARGET_DIR="$CACHE/tansu-build" nice -n 19 \
      cargo install "tansu@$TANSU_VERSION" --features libsql --root "$ROOT" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "building tansu failed (log: $log)"
  fi
  [ -x "$BIN" ] || die "cargo install finished but $BIN is missing (log: $log)"
}

# A port nothing listens on now (tansu may still lose a race for it: start retries).
free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "no free loopback port found"
}

start() {
  local dir="${1:?usage: $0 start DIR}"
  build
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  [ ! -s "$dir/tansu.pid" ] || ! kill -0 "$(cat "$dir/tansu.pid")" 2>/dev/null \
    || die "a broker already runs in $dir (pid $(cat "$dir/tansu.pid"))"
  local port pid
  for _ in 1 2 3 4 5; do
    port="$(free_port)"
    # Both listener URLs: the default binds 0.0.0.0 and advertises localhost. The
    # sqlite path is relative to the working directory, so it lands in $dir.
    (cd "$dir" && exec "$BIN" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "sqlite://tansu.db" >>"$dir/tansu.log" 2>&1) &
    pid=$!
    for _ in $(seq 1 100); do
      if ! kill -0 "$pid" 2>/dev/null; then
        break
      fi
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "$pid" >"$dir/tansu.pid"
        echo "127.0.0.1:$port" >"$dir/addr"
        echo "TIDEWATCH_KAFKA_BROKERS=127.0.0.1:$port"
        return 0
      fi
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  tail -n 20 "$dir/tansu.log" >&2 || true
  die "tansu did not start (log: $dir/tansu.log)"
}

stop() {
  local dir="${1:?usage: $0 stop DIR}"
  [ -s "$dir/tansu.pid" ] || return 0
  local pid
  pid="$(cat "$dir/tansu.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    # It stops cleanly on SIGTERM in about 2 s.
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "kafka-broker: tansu (pid $pid) ignored SIGTERM for 10 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$dir/tansu.pid"
}

run() {
  [ $# -gt 0 ] || die "usage: $0 run CMD [ARGS...]"
  local dir status
  dir="$(mktemp -d "${TMPDIR:-/tmp}/tidewatch-kafka.XXXXXX")"
  # shellcheck disable=SC2064 # expand $dir now
  trap "stop '$dir'; rm -rf '$dir'" EXIT
  start "$dir" >/dev/null
  export TIDEWATCH_KAFKA_BROKERS
  TIDEWATCH_KAFKA_BROKERS="$(cat "$dir/addr")"
  echo "kafka-broker: tansu on $TIDEWATCH_KAFKA_BROKERS (state in $dir)" >&2
  set +e
  "$@"
  status=$?
  set -e
  return "$status"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  build) build ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  run) run "$@" ;;
  *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
