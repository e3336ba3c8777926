#!/usr/bin/env bash
# kxgw benchmark: every serving path side by side on one veth pair, with the link's ceilings,
# fan-out and tailing latency, in one run. Writes a markdown table and PNG plots.
#
#   sudo scripts/bench.sh [--quick|--smoke] [--mtu 1500|9000|65535] [--lat-mtus 'MTU...']
#                         [--runs N] [--log-mib N] [--out DIR] [--kxgw PATH] [--bench PATH]
#                         [--disk-dir DIR]
#                         [--only 'PATH...']
#
#   --quick      5 runs, 512 MiB logs, tmpfs-only fan-out, 4,000 records per tailing run
#   --smoke      1 run per path, 32 MiB logs, fan-out 1 and 4, 100 records per tailing run:
#                checks the harness end to end
#   --mtu N      the veth MTU of the throughput and fan-out runs (default 1500)
#   --lat-mtus L the veth MTUs of the tailing-latency runs, each a pass over every tailing path
#                in the same run (default '1500 9000'); their rows are named PATH@MTU
#   --kxgw PATH  use this binary instead of building target/release/kxgw
#   --bench PATH the measuring tools (default: kxgw-bench next to the kxgw binary)
#   --out DIR    results directory (default bench/results)
#   --only LIST  measure only these paths (names as in the raw TSV, e.g. 'kafka-sendfile
#                ceil-sendfile'; a tailing path without @MTU at every MTU): for working on one
#                path; the report says it is partial
#
# Layout: the gateway runs in <name>-gw pinned to CPU 0, every consumer in <name>-cl pinned to
# CPU 1 (scripts/netns.sh, 198.18.0.1 <-> 198.18.0.2, no default route: nothing leaves them).
# Runs alternate between paths (run 1 of every path, then run 2, ...), so drift over time hits
# every path alike; the tailing passes set the veth MTU in between (both ends, no gateway
# running). A path the binary does not offer yet is reported "not available", never
# given a number; a run that fails is reported "failed" with its log kept.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MODE=full MTU=1500 LAT_MTUS='1500 9000' RUNS= LOG_MIB= OUT= KXGW= BENCH= DISK_DIR=/var/tmp ONLY=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) MODE=quick; shift ;;
    --smoke) MODE=smoke; shift ;;
    --mtu) MTU=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --log-mib) LOG_MIB=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --kxgw) KXGW=$2; shift 2 ;;
    --bench) BENCH=$2; shift 2 ;;
    --disk-dir) DISK_DIR=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --lat-mtus) LAT_MTUS=$2; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $MTU in 1500|9000|65535) ;; *) echo "bench.sh: --mtu must be 1500, 9000 or 65535" >&2; exit 2 ;; esac
read -r -a lat_mtus <<<"$LAT_MTUS"
[ ${#lat_mtus[@]} -gt 0 ] || { echo "bench.sh: --lat-mtus needs at least one MTU" >&2; exit 2; }
for m in "${lat_mtus[@]}"; do
  case $m in 1500|9000|65535) ;; *) echo "bench.sh: --lat-mtus: $m is not 1500, 9000 or 65535" >&2; exit 2 ;; esac
done
[ "$(printf '%s\n' "${lat_mtus[@]}" | sort -u | wc -l)" = ${#lat_mtus[@]} ] ||
  { echo "bench.sh: --lat-mtus names an MTU twice" >&2; exit 2; }
LAT_MTUS="${lat_mtus[*]}"
case $MODE in
  full) : "${RUNS:=5}" "${LOG_MIB:=2048}"; FANOUT_N="1 4 16"; FANOUT_FS="tmpfs disk"; LAT_COUNT=20000 LAT_RATE=2000 LAT_TIMEOUT=60 ;;
  quick) : "${RUNS:=5}" "${LOG_MIB:=512}"; FANOUT_N="1 4 16"; FANOUT_FS="tmpfs"; LAT_COUNT=4000 LAT_RATE=2000 LAT_TIMEOUT=10 ;;
  smoke) : "${RUNS:=1}" "${LOG_MIB:=32}"; FANOUT_N="1 4"; FANOUT_FS="tmpfs"; LAT_COUNT=100 LAT_RATE=1000 LAT_TIMEOUT=5 ;;
esac
: "${OUT:=$REPO/bench/results}"
[ "$(id -u)" -eq 0 ] || { echo "bench.sh: run as root (namespaces, veth, XDP)" >&2; exit 1; }
for tool in ip taskset iperf3 gnuplot python3 ss openssl; do
  command -v $tool >/dev/null || { echo "bench.sh: $tool missing (scripts/install-deps.sh)" >&2; exit 1; }
done

NAME=kxb$$
GW_NS=$NAME-gw CL_NS=$NAME-cl GW_IF=${NAME:0:10}-g CL_IF=${NAME:0:10}-c
GW_ADDR=198.18.0.1 KAFKA_PORT=9092 FETCH_PORT=7070 RAW_PORT=5201 IPERF_PORT=5202
GW_CPU=0 CL_CPU=1
TOPIC=bench RECORD_SIZE=1000 BATCH_RECORDS=16
WORK=$(mktemp -d /tmp/kxgw-bench.XXXXXX)
TMPFS_DIR=/dev/shm/kxgw-bench-$NAME DISK_LOG_DIR=$DISK_DIR/kxgw-bench-$NAME
RAW=$WORK/raw.tsv
PIDS=()

cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  "$REPO/scripts/netns.sh" down --name "$NAME" >/dev/null 2>&1 || true
  rm -rf "$TMPFS_DIR" "$DISK_LOG_DIR"
  if [ $rc -ne 0 ]; then echo "bench.sh: failed (rc $rc); run logs kept in $WORK" >&2; fi
  if [ $rc -eq 0 ] && [ -z "${KEEP_WORK:-}" ] && ! grep -q $'\tfailed\t' "$RAW" 2>/dev/null; then
    rm -rf "$WORK"
  elif [ $rc -eq 0 ]; then
    echo "bench.sh: run logs kept in $WORK" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- build and feature detection
if [ -z "$KXGW" ]; then
  say "building release binary"
  (cd "$REPO" && cargo build --release --quiet -p kxgw-cli -p kxgw-bench)
  KXGW=$REPO/target/release/kxgw
fi
[ -x "$KXGW" ] || { echo "bench.sh: $KXGW is not executable" >&2; exit 1; }
KXGW=$(readlink -f "$KXGW")
: "${BENCH:=$(dirname "$KXGW")/kxgw-bench}"
[ -x "$BENCH" ] || { echo "bench.sh: $BENCH is not executable (cargo build --release -p kxgw-bench, or pass --bench)" >&2; exit 1; }
BENCH=$(readlink -f "$BENCH")

help_of() { "$KXGW" "$@" --help 2>/dev/null || true; }
SERVE_HELP=$(help_of serve) PRODUCE_HELP=$(help_of produce)
has() { grep -q -- "$2" <<<"$1"; }
HAVE_PRODUCE=0 HAVE_KAFKA=0 HAVE_FETCH=0 HAVE_GSO=0 HAVE_XDP=0 HAVE_BUSY=0 HAVE_CONSUME=0 HAVE_TAILP=0 HAVE_TAILF=0 HAVE_XDPRAW=0 HAVE_TLS=0
has "$PRODUCE_HELP" --record-size && HAVE_PRODUCE=1
has "$SERVE_HELP" --kafka-listen && has "$SERVE_HELP" -- "--io" && HAVE_KAFKA=1
has "$SERVE_HELP" --fetch-listen && HAVE_FETCH=1
has "$SERVE_HELP" --udp-gso && HAVE_GSO=1
has "$SERVE_HELP" --xdp-iface && has "$SERVE_HELP" --tx-strategy && HAVE_XDP=1
has "$SERVE_HELP" --busy-poll && HAVE_BUSY=1
BT_HELP=$("$BENCH" --help 2>/dev/null || true)
has "$BT_HELP" fetch-load && HAVE_CONSUME=1
has "$BT_HELP" tail-produce && HAVE_TAILP=1
has "$BT_HELP" tail-fetch && HAVE_TAILF=1
BT_HELP_TAIL=$("$BENCH" tail-fetch --help 2>/dev/null || true)
STATS_HELP=$(help_of stats)
# The raw AF_XDP ceiling's receiver CRCs every byte, as the fetch client and stream-client do.
RAW_CRC=; has "$("$BENCH" raw-udp-client --help 2>/dev/null || true)" --crc && RAW_CRC=--crc
has "$(help_of xdp-raw)" --listen && has "$(help_of xdp-raw-client)" --server && HAVE_XDPRAW=1
has "$SERVE_HELP" --kafka-listen-ssl && has "$("$BENCH" kafka-load --help 2>/dev/null || true)" --tls-ca && HAVE_TLS=1
[ $HAVE_PRODUCE = 1 ] || { echo "bench.sh: '$KXGW produce' is missing: no log to serve, nothing to measure" >&2; exit 1; }

# The SSL listener's certificate (kafka-tls): P-256, for the gateway address, signed by a CA
# made here that the consumers trust.
TLS_CA=$WORK/tls-ca.pem TLS_CERT=$WORK/tls-cert.pem TLS_KEY=$WORK/tls-key.pem
if [ $HAVE_TLS = 1 ]; then
  {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
      -subj /CN=kxgw-bench-ca -keyout "$WORK/tls-ca.key" -out "$TLS_CA"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=kxgw-bench \
      -keyout "$TLS_KEY" -out "$WORK/tls.csr"
    printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\n' "$GW_ADDR" >"$WORK/tls-ext.cnf"
    openssl x509 -req -in "$WORK/tls.csr" -CA "$TLS_CA" -CAkey "$WORK/tls-ca.key" -CAcreateserial \
      -days 2 -extfile "$WORK/tls-ext.cnf" -out "$TLS_CERT"
  } >"$WORK/openssl.log" 2>&1 || { echo "bench.sh: making the TLS certificate failed: $(cat "$WORK/openssl.log")" >&2; exit 1; }
fi

# ---------------------------------------------------------------- network and logs
"$REPO/scripts/netns.sh" up --mtu "$MTU" --name "$NAME" >/dev/null
LINK_MTU=$MTU
say "namespaces $GW_NS / $CL_NS, veth $GW_IF <-> $CL_IF, MTU $MTU (tailing: $LAT_MTUS)"
# Both ends of the veth pair to MTU $1, between runs (no gateway, so no XDP program, attached).
set_mtu() {
  [ "$1" = "$LINK_MTU" ] && return 0
  ip -n "$GW_NS" link set dev "$GW_IF" mtu "$1" && ip -n "$CL_NS" link set dev "$CL_IF" mtu "$1" ||
    { echo "bench.sh: setting the veth MTU to $1 failed" >&2; exit 1; }
  LINK_MTU=$1
  say "veth MTU $1"
}

LOG_BYTES_WANTED=$((LOG_MIB * 1024 * 1024))
RECORDS=$((LOG_BYTES_WANTED / (RECORD_SIZE + 40)))
mkdir -p "$TMPFS_DIR" "$DISK_LOG_DIR"
[ "$(stat -f -c %T "$DISK_LOG_DIR")" != tmpfs ] || say "warning: --disk-dir $DISK_DIR is tmpfs"
DISK_FS=$(stat -f -c %T "$DISK_LOG_DIR")
for fs in tmpfs disk; do
  dir=$TMPFS_DIR; [ $fs = disk ] && dir=$DISK_LOG_DIR
  say "producing $RECORDS records of $RECORD_SIZE B ($BATCH_RECORDS per batch) on $fs ($dir)"
  "$KXGW" produce --log-dir "$dir/log" --topic $TOPIC --partitions 1 --records $RECORDS \
    --record-size $RECORD_SIZE --batch-records $BATCH_RECORDS >"$WORK/produce-$fs.log" 2>&1
done
log_dir() { if [ "$1" = disk ]; then echo "$DISK_LOG_DIR/log"; else echo "$TMPFS_DIR/log"; fi; }
LOG_BYTES=$(du -cb "$TMPFS_DIR"/log/$TOPIC-0/*.log | tail -1 | cut -f1)
BIG_SEGMENT() { ls -S "$(log_dir "$1")"/$TOPIC-0/*.log | head -1; }
say "log: $LOG_BYTES bytes of batches per filesystem"

# ---------------------------------------------------------------- measuring primitives
CLK_TCK=$(getconf CLK_TCK)
# utime+stime of a process (all threads), in clock ticks.
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# softirq ticks of the gateway's CPU.
softirq_ticks() { awk -v c="cpu$GW_CPU" '$1 == c {print $8}' /proc/stat; }
rx_packets() {
  ip -n "$CL_NS" -s -j link show dev "$CL_IF" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["rx"]["packets"])'
}
now() { date +%s.%N; }
in_gw() { ip netns exec "$GW_NS" taskset -c $GW_CPU "$@"; }
in_cl() { ip netns exec "$CL_NS" taskset -c $CL_CPU "$@"; }
json_get() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(d[sys.argv[1]])' "$1"; }

GW_PID=
start_bg() { # start_bg LOGFILE cmd...: gateway-side process pinned to the gateway CPU
  local logf=$1; shift
  # exec: $! must be the gateway itself (ip netns exec and taskset exec too), not a subshell,
  # so that the signal reaches it and /proc/$!/stat is its CPU time.
  (exec ip netns exec "$GW_NS" taskset -c $GW_CPU "$@" >"$logf" 2>&1) &
  GW_PID=$!
  PIDS+=("$GW_PID")
}
stop_gw() {
  [ -n "$GW_PID" ] || return 0
  kill -TERM "$GW_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$GW_PID" 2>/dev/null || true
  wait "$GW_PID" 2>/dev/null || true
  GW_PID=
  # AF_XDP: rebinding right after close can give EBUSY for a moment.
  sleep 0.2
}
wait_tcp() { # port
  for _ in $(seq 100); do
    kill -0 "$GW_PID" 2>/dev/null || return 1
    ip netns exec "$CL_NS" timeout 1 bash -c "exec 3<>/dev/tcp/$GW_ADDR/$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
wait_udp() { # port [log]: bound in the gateway namespace (kernel UDP) or XDP attached (AF_XDP)
  # With the log of a fetch gateway on AF_XDP, an attached program counts only once the log says
  # the endpoint serves: between the attach and the socket bind (over a second in a debug build)
  # the program has no socket to steer to, and a probe's first requests are lost and retried.
  for _ in $(seq 100); do
    kill -0 "$GW_PID" 2>/dev/null || return 1
    if [ -n "$(ip netns exec "$GW_NS" ss -Hlun "sport = :$1")" ] ||
      { ip -n "$GW_NS" -d link show dev "$GW_IF" | grep -q 'prog/xdp' &&
        { [ -z "${2:-}" ] || grep -q '^kxgw: fetch endpoint .* on AF_XDP' "$2"; }; }; then
      sleep 0.3
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# Gateway command line of a path; empty when the binary lacks it.
gw_cmd() { # path fs
  local dir; dir=$(log_dir "$2")
  case $1 in
    kafka-copy|kafka-sendfile)
      [ $HAVE_KAFKA = 1 ] && echo "$KXGW serve --log-dir $dir --kafka-listen $GW_ADDR:$KAFKA_PORT --io ${1#kafka-}" ;;
    kafka-tls)
      [ $HAVE_TLS = 1 ] && echo "$KXGW serve --log-dir $dir --kafka-listen-ssl $GW_ADDR:$KAFKA_PORT --tls-cert $TLS_CERT --tls-key $TLS_KEY" ;;
    udp-sendmmsg|udp-gso)
      [ $HAVE_FETCH = 1 ] && [ $HAVE_CONSUME = 1 ] || return 0
      if [ $HAVE_GSO = 1 ]; then
        local g=off; [ $1 = udp-gso ] && g=on
        echo "$KXGW serve --log-dir $dir --fetch-listen $GW_ADDR:$FETCH_PORT --udp-gso $g"
      elif [ $1 = udp-sendmmsg ]; then
        echo "$KXGW serve --log-dir $dir --fetch-listen $GW_ADDR:$FETCH_PORT"
      fi ;;
    xdp-copy|xdp-sg|xdp-auto)
      [ $HAVE_XDP = 1 ] && [ $HAVE_CONSUME = 1 ] || return 0
      local extra=; has "$SERVE_HELP" --require-xdp && extra=--require-xdp
      # sg sends tmpfs segments from their own pages (registered as UMEM); other filesystems
      # (and so the disk rows) are staged through the arena.
      [ $1 = xdp-sg ] && has "$SERVE_HELP" --umem-segments && extra="$extra --umem-segments"
      echo "$KXGW serve --log-dir $dir --xdp-iface $GW_IF --fetch-listen $GW_ADDR:$FETCH_PORT --tx-strategy ${1#xdp-} $extra" ;;
    ceil-sendfile)
      echo "$BENCH sendfile-server --listen $GW_ADDR:$RAW_PORT --file $(BIG_SEGMENT "$2")" ;;
    ceil-iperf3)
      echo "iperf3" ;;
    ceil-xdp-raw-copy|ceil-xdp-raw-sg)
      [ $HAVE_XDPRAW = 1 ] && echo "$KXGW xdp-raw --listen $GW_ADDR:$FETCH_PORT --xdp-iface $GW_IF --tx-strategy ${1#ceil-xdp-raw-}" ;;
  esac
  return 0
}

# Bind mode and TX strategy an AF_XDP gateway reported in its log.
xdp_mode_of() {
  local bind tx
  bind=$(grep -oE 'bound (zero-copy|copy) (single|multi)-buffer' "$1" | head -1 | sed 's/^bound //' || true)
  tx=$(grep -oE 'TX strategy [a-z]+( \([^)]*\))?' "$1" | head -1 | sed 's/^TX strategy //' || true)
  local pages=
  if [ "$tx" = sg ] && grep -q "fetch endpoint" "$1"; then
    if grep -q 'MiB) registered as UMEM' "$1"; then pages=", log pages registered as UMEM"; else pages=", log staged in arena"; fi
  fi
  echo "${bind:-?} mode, TX ${tx:-?}$pages"
}

record() { # section path fs consumers run status gbps rps pps cpu bytes secs note
  local IFS=$'\t'
  echo "$*" >>"$RAW"
}

# Whether --only lets a path run.
wanted() { [ -z "$ONLY" ] || [[ " ${ONLY//,/ } " == *" $1 "* ]]; }

# One consumer-side measurement of one path; appends a row to $RAW.
measure() { # section path fs consumers run
  local section=$1 path=$2 fs=$3 n=$4 run=$5
  wanted "$path" || return 0
  local cmd; cmd=$(gw_cmd "$path" "$fs")
  if [ -z "$cmd" ]; then
    record "$section" "$path" "$fs" "$n" "$run" "n/a" - - - - - - "not in this build"
    return 0
  fi
  local logf=$WORK/$section-$path-$fs-$n-$run.log
  local clog=$WORK/$section-$path-$fs-$n-$run.client.log
  local out=
  if [ "$path" = ceil-iperf3 ]; then
    # Sender (-Z: sendfile) in the gateway namespace on the gateway CPU, receiver on the other.
    (exec ip netns exec "$CL_NS" taskset -c $CL_CPU iperf3 -s -1 -B 198.18.0.2 -p $IPERF_PORT >"$logf" 2>&1) &
    local spid=$!; PIDS+=("$spid"); sleep 0.3
    local secs=3; [ $MODE = smoke ] && secs=1
    local s0 s1 p0 p1 ticks ok=1
    s0=$(softirq_ticks); p0=$(rx_packets)
    # The subshell's cutime+cstime after waiting for iperf3 is iperf3's CPU time.
    ticks=$( (in_gw iperf3 -c 198.18.0.2 -p $IPERF_PORT -Z -t $secs -J >"$clog" 2>&1 || exit 1
      awk '{print $16 + $17}' "/proc/$BASHPID/stat") ) || ok=0
    s1=$(softirq_ticks); p1=$(rx_packets)
    wait "$spid" 2>/dev/null || true
    if [ $ok = 0 ]; then
      record "$section" "$path" "$fs" "$n" "$run" failed - - - - - - "iperf3 failed: $clog"; return 0
    fi
    local r
    r=$(python3 - "$clog" "$ticks" "$s0" "$s1" "$p0" "$p1" "$CLK_TCK" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))["end"]["sum_received"]
ticks, s0, s1, p0, p1, hz = map(float, sys.argv[2:8])
b, s = e["bytes"], e["seconds"]
cpu = (ticks + s1 - s0) / hz
print(f"{b*8/s/1e9:.4f}\t{(p1-p0)/s:.1f}\t{cpu/(b/2**30):.4f}\t{b}\t{s:.6f}")
PY
    ) || { record "$section" "$path" "$fs" "$n" "$run" failed - - - - - - "bad iperf3 output: $clog"; return 0; }
    local gbps pps cpu bytes s
    IFS=$'\t' read -r gbps pps cpu bytes s <<<"$r"
    record "$section" "$path" "$fs" "$n" "$run" ok "$gbps" - "$pps" "$cpu" "$bytes" "$s" "iperf3 -Z, 1 TCP stream"
    return 0
  fi

  # shellcheck disable=SC2086
  start_bg "$logf" $cmd
  local ready=wait_udp
  case $path in
    kafka-*) ready="wait_tcp $KAFKA_PORT" ;;
    ceil-sendfile) ready="wait_tcp $RAW_PORT" ;;
    xdp-*) ready="wait_udp $FETCH_PORT $logf" ;;
    *) ready="wait_udp $FETCH_PORT" ;;
  esac
  if ! $ready; then
    record "$section" "$path" "$fs" "$n" "$run" failed - - - - - - "gateway did not come up: $logf"
    stop_gw; return 0
  fi
  local g0 s0 p0 rc=0
  g0=$(proc_ticks "$GW_PID"); s0=$(softirq_ticks); p0=$(rx_packets)
  local per=$RECORDS
  # Fan-out: n consumers of the same partition share one log's worth of reading.
  [ "$n" -gt 1 ] && per=$(( (RECORDS + n - 1) / n ))
  [ $per -gt $RECORDS ] && per=$RECORDS
  case $path in
    kafka-*)
      local tls=; [ "$path" = kafka-tls ] && tls="--tls-ca $TLS_CA"
      # shellcheck disable=SC2086
      out=$(in_cl "$BENCH" kafka-load --bootstrap $GW_ADDR:$KAFKA_PORT --topic $TOPIC \
        --consumers "$n" --records $per $tls 2>"$clog") || rc=$? ;;
    ceil-xdp-raw-*)
      # recvmmsg receiver (kxgw-bench): xdp-raw-client verifies every byte with one recv per
      # datagram and would be the bottleneck of the ceiling it measures. --crc: the same
      # per-byte CRC32C work as the fetch client, so the ceiling bounds a path measured alike.
      out=$(in_cl "$BENCH" raw-udp-client --server $GW_ADDR:$FETCH_PORT \
        --bytes "$LOG_BYTES" --size 65536 $RAW_CRC 2>"$clog") || rc=$? ;;
    ceil-sendfile)
      out=$(in_cl "$BENCH" stream-client --connect $GW_ADDR:$RAW_PORT \
        --bytes "$LOG_BYTES" --crc 2>"$clog") || rc=$? ;;
    udp-*|xdp-*)
      # One process, a thread per consumer, released together (as kafka-load): the protocol
      # client CRC-checks each batch and the tool checks offset continuity.
      out=$(in_cl "$BENCH" fetch-load --fetch $GW_ADDR:$FETCH_PORT --topic $TOPIC \
        --consumers "$n" --records $per 2>"$clog") || rc=$? ;;
  esac
  local g1 s1 p1
  g1=$(proc_ticks "$GW_PID"); s1=$(softirq_ticks); p1=$(rx_packets)
  local note=
  case $path in xdp-*|ceil-xdp-*) note="$(xdp_mode_of "$logf")" ;; esac
  case $path in ceil-xdp-*)
    local lost; lost=$(json_get lost_bytes <<<"$out" 2>/dev/null || echo 0)
    [ "${lost:-0}" = 0 ] || note="$note, $lost bytes lost (not re-sent)" ;;
  esac
  stop_gw
  if [ $rc -ne 0 ]; then
    record "$section" "$path" "$fs" "$n" "$run" failed - - - - - - "consumer exit $rc: $clog"
    return 0
  fi
  if [ -z "$out" ]; then
    record "$section" "$path" "$fs" "$n" "$run" failed - - - - - - "no result line: $clog"
    return 0
  fi
  local bytes secs records
  bytes=$(json_get bytes <<<"$out") secs=$(json_get secs <<<"$out") records=$(json_get records <<<"$out")
  local r
  r=$(python3 -c "
b, s, rec = $bytes, $secs, $records
cpu = (($g1 - $g0) + ($s1 - $s0)) / $CLK_TCK
print(f'{b*8/s/1e9:.4f}\t{rec/s:.1f}\t{($p1 - $p0)/s:.1f}\t{cpu/(b/2**30):.4f}')")
  local gbps rps pps cpu
  IFS=$'\t' read -r gbps rps pps cpu <<<"$r"
  case $path in ceil-*) rps=- ;; esac
  record "$section" "$path" "$fs" "$n" "$run" ok "$gbps" "$rps" "$pps" "$cpu" "$bytes" "$secs" "$note"
}

# Per-record hops of one latency run: the gateway's tail trace (kxgw stats --tail-trace, read
# before it stops) joined with the probe's records (kxgw-bench tail-hops), one latency-hop row
# per hop: gbps=p50, rps=p99, pps=p99.9 (µs), cpu=samples (records joined).
record_hops() { # path run socket records-file
  local path=$1 run=$2 ctl=$3 recs=$4 via=fetch hop
  case $path in kafka-*) via=kafka ;; esac
  local trace=${recs%.records}.trace hopsf=${recs%.records}.hops
  if ! has "$STATS_HELP" --tail-trace || ! has "$BT_HELP" tail-hops || ! has "$BT_HELP_TAIL" --records-out; then
    for hop in $HOPS; do
      record latency-hop "$path:$hop" tmpfs 1 "$run" "n/a" - - - - - - "no per-record trace in this build"
    done
    return 0
  fi
  local why=
  [ -s "$recs" ] || why="the probe wrote no records"
  [ -z "$why" ] && { "$KXGW" stats --tail-trace --socket "$ctl" >"$trace" 2>"$hopsf.err" || why="kxgw stats --tail-trace failed: $(basename "$hopsf.err")"; }
  [ -z "$why" ] && { "$BENCH" tail-hops --trace "$trace" --records "$recs" --topic tail --via $via \
    >"$hopsf" 2>>"$hopsf.err" || why="tail-hops failed: $(basename "$hopsf.err")"; }
  if [ -n "$why" ]; then
    for hop in $HOPS; do record latency-hop "$path:$hop" tmpfs 1 "$run" failed - - - - - - "$why"; done
    return 0
  fi
  local kind name n q50 q99 q999 max records joined parked clamped note
  read -r kind records joined parked clamped < <(grep '^summary' "$hopsf" | tr '\t' ' ') || true
  note="$joined of $records records traced, $parked by parked polls"
  [ "${clamped:-0}" = 0 ] || note="$note, $clamped samples below 0 counted as 0"
  while IFS=$'\t' read -r kind name n q50 q99 q999 max; do
    [ "$kind" = hop ] || continue
    if [ "$n" = 0 ]; then
      record latency-hop "$path:$name" tmpfs 1 "$run" "n/a" - - - - - - "no traced record"
    else
      record latency-hop "$path:$name" tmpfs 1 "$run" ok "$q50" "$q99" "$q999" "$n" - - "$note"
    fi
  done <"$hopsf"
}
HOPS="append_detect detect_validate validate_send send_arrival"
# Tailing latency of one path at the link's current MTU: the stamping producer appends to a
# live log the gateway follows. Its rows (and logs) are named <path>@<MTU>.
measure_latency() { # path run
  local kind=$1 run=$2 cmd= client=
  local path=$kind@$LINK_MTU
  wanted "$kind" || wanted "$path" || return 0
  # <path>-spin: the same gateway, the probe spins on its socket instead of sleeping in it.
  local spin=; case $kind in *-spin) spin=--spin ;; esac
  local dir=$WORK/taillog; rm -rf "$dir"
  if [ $HAVE_TAILP = 0 ]; then
    record latency "$path" tmpfs 1 "$run" "n/a" - - - - - - "no stamping producer in this build"; return 0
  fi
  # A fresh live log on tmpfs with a few records so the partition exists.
  "$BENCH" tail-produce --log-dir "$TMPFS_DIR/tail-$path-$run" --topic tail --count 1 --rate 1000 >/dev/null 2>&1 || true
  dir=$TMPFS_DIR/tail-$path-$run
  case ${kind%-spin} in
    kafka-longpoll|kafka-longpoll-busypoll)
      [ $HAVE_KAFKA = 1 ] && cmd="$KXGW serve --log-dir $dir --kafka-listen $GW_ADDR:$KAFKA_PORT --io sendfile"
      if [ ${kind%-spin} = kafka-longpoll-busypoll ]; then
        if has "$SERVE_HELP" --kafka-busy-poll; then cmd="$cmd --kafka-busy-poll"; else cmd=; fi
      fi
      client="$BENCH tail-kafka --bootstrap $GW_ADDR:$KAFKA_PORT --topic tail --offset 1 --count $LAT_COUNT --timeout-secs $LAT_TIMEOUT" ;;
    udp-kernel|udp-kernel-busypoll)
      [ $HAVE_FETCH = 1 ] && [ $HAVE_TAILF = 1 ] && cmd="$KXGW serve --log-dir $dir --fetch-listen $GW_ADDR:$FETCH_PORT"
      if [ ${kind%-spin} = udp-kernel-busypoll ]; then
        if has "$SERVE_HELP" --fetch-busy-poll; then cmd="$cmd --fetch-busy-poll"; else cmd=; fi
      fi
      client="$BENCH tail-fetch --fetch $GW_ADDR:$FETCH_PORT --topic tail --offset 1 --count $LAT_COUNT --timeout-secs $LAT_TIMEOUT" ;;
    xdp-busypoll-off|xdp-busypoll-on)
      if [ $HAVE_XDP = 1 ] && [ $HAVE_TAILF = 1 ]; then
        cmd="$KXGW serve --log-dir $dir --xdp-iface $GW_IF --fetch-listen $GW_ADDR:$FETCH_PORT --tx-strategy auto"
        if [ ${kind%-spin} = xdp-busypoll-on ]; then
          if [ $HAVE_BUSY = 1 ]; then cmd="$cmd --busy-poll"; else cmd=; fi
        fi
      fi
      client="$BENCH tail-fetch --fetch $GW_ADDR:$FETCH_PORT --topic tail --offset 1 --count $LAT_COUNT --timeout-secs $LAT_TIMEOUT" ;;
  esac
  if [ -n "$spin" ] && ! has "$BT_HELP_TAIL" --spin; then cmd=; fi
  if [ -z "$cmd" ]; then
    record latency "$path" tmpfs 1 "$run" "n/a" - - - - - - "not in this build"; return 0
  fi
  client="$client $spin"
  local recs=$WORK/latency-$path-$run.records
  has "$BT_HELP_TAIL" --records-out && client="$client --records-out $recs"
  local logf=$WORK/latency-$path-$run.log clog=$WORK/latency-$path-$run.client.log
  # The gateway's tail trace is read from its control socket before it stops.
  local ctl=$WORK/latency-$path-$run.sock
  has "$SERVE_HELP" --control-socket && cmd="$cmd --control-socket $ctl"
  # shellcheck disable=SC2086
  start_bg "$logf" $cmd
  local ready="wait_udp $FETCH_PORT"
  case $path in kafka-*) ready="wait_tcp $KAFKA_PORT" ;; xdp-*) ready="wait_udp $FETCH_PORT $logf" ;; esac
  if ! $ready; then
    record latency "$path" tmpfs 1 "$run" failed - - - - - - "gateway did not come up: $logf"; stop_gw; return 0
  fi
  local out rc=0
  # shellcheck disable=SC2086
  (exec ip netns exec "$CL_NS" taskset -c $CL_CPU $client >"$clog.out" 2>"$clog") &
  local cpid=$!
  sleep 0.3
  # The producer shares the consumer's CPU: the gateway's CPU stays the gateway's alone.
  taskset -c $CL_CPU "$BENCH" tail-produce --log-dir "$dir" --topic tail \
    --count "$LAT_COUNT" --rate "$LAT_RATE" >>"$clog" 2>&1 || rc=$?
  wait $cpid || rc=$?
  out=$(cat "$clog.out")
  local note=
  case $path in xdp-*) note="$(xdp_mode_of "$logf")" ;; esac
  record_hops "$path" "$run" "$ctl" "$recs"
  stop_gw
  if [ $rc -ne 0 ] || [ -z "$out" ]; then
    local partial=
    [ -n "$out" ] && partial="stalled: $(json_get count <<<"$out") of $LAT_COUNT records arrived"
    record latency "$path" tmpfs 1 "$run" failed - - - - - - "${partial:-exit $rc}: $(basename "$clog")"; return 0
  fi
  local p50 p99 p999
  p50=$(json_get p50_us <<<"$out") p99=$(json_get p99_us <<<"$out") p999=$(json_get p999_us <<<"$out")
  # Latency rows reuse the numeric columns: gbps=p50, rps=p99, pps=p99.9 (µs).
  record latency "$path" tmpfs 1 "$run" ok "$p50" "$p99" "$p999" - - - "$note"
}

# ---------------------------------------------------------------- the runs
PATHS="kafka-copy kafka-sendfile kafka-tls udp-sendmmsg udp-gso xdp-copy xdp-sg"
FANOUT_PATHS="kafka-sendfile udp-sendmmsg xdp-sg"
# Every tailing path (Kafka long-poll, kernel UDP, AF_XDP; each without and with its busy poll)
# with a blocking consumer and a spinning one (-spin), at every MTU of --lat-mtus.
LAT_PATHS=
for p in kafka-longpoll kafka-longpoll-busypoll udp-kernel udp-kernel-busypoll xdp-busypoll-off xdp-busypoll-on; do
  LAT_PATHS="$LAT_PATHS $p $p-spin"
done
: >"$RAW"
T_START=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for run in $(seq "$RUNS"); do
  set_mtu "$MTU"
  say "run $run/$RUNS: paths and ceilings"
  for fs in tmpfs disk; do
    for p in $PATHS; do measure paths "$p" "$fs" 1 "$run"; done
    measure ceiling ceil-sendfile "$fs" 1 "$run"
  done
  measure ceiling ceil-iperf3 - 1 "$run"
  measure ceiling ceil-xdp-raw-copy - 1 "$run"
  measure ceiling ceil-xdp-raw-sg - 1 "$run"
  say "run $run/$RUNS: fan-out"
  for fs in $FANOUT_FS; do
    for n in $FANOUT_N; do
      [ "$n" = 1 ] && continue # the paths section's single-consumer runs are the fan-out base
      for p in $FANOUT_PATHS; do measure fanout "$p" "$fs" "$n" "$run"; done
    done
  done
  for m in $LAT_MTUS; do
    set_mtu "$m"
    say "run $run/$RUNS: tailing latency at MTU $m"
    for p in $LAT_PATHS; do measure_latency "$p" "$run"; done
  done
done
ELAPSED=$(( $(date +%s) - T_START ))
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
XDP_BIND=$(cat "$WORK"/*xdp*.log 2>/dev/null | grep -oE 'bound (zero-copy|copy) (single|multi)-buffer' |
  sed 's/^bound //' | sort | uniq -c | sort -rn |
  awk '{n = $1; $1 = ""; sub(/^ /, ""); printf "%s%s (%s gateway starts)", (NR > 1 ? ", " : ""), $0, n}' || true)
mkdir -p "$OUT"
STAMP=$(date -u +%Y-%m-%d)
BASE=$OUT/$STAMP-mtu$MTU
[ $MODE = smoke ] && BASE=$OUT/smoke-mtu$MTU
# A partial run never replaces a full table.
[ -n "$ONLY" ] && BASE=$OUT/partial-mtu$MTU
python3 "$REPO/scripts/bench_report.py" --raw "$RAW" --out "$BASE" \
  --machine "kernel $(uname -r); CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc); MTU $MTU (veth, namespaces $GW_NS/$CL_NS; tailing latency at MTU ${LAT_MTUS// /, }); AF_XDP bind mode: ${XDP_BIND:-n/a (no AF_XDP run)}; TX strategy: per row; gateway pinned to CPU $GW_CPU, consumers to CPU $CL_CPU; disk fs: $DISK_FS; mode $MODE${ONLY:+ (only: $ONLY)}, $RUNS run(s) per path, ${ELAPSED}s; load average before $LOAD0, after $LOAD1; kxgw $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
  --log "$LOG_BYTES bytes per log ($RECORDS records of $RECORD_SIZE B, $BATCH_RECORDS records per batch, 1 partition)" \
  --fanout "$FANOUT_N"
cp "$RAW" "$BASE.raw.tsv"
rm -f "$BASE"-*.dat
say "wrote $BASE.md (raw runs: $BASE.raw.tsv, plots: $BASE-*.png) in ${ELAPSED}s"
cat "$BASE.md"
