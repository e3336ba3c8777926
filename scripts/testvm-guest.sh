#!/bin/sh
# Runs inside scripts/testvm.sh's guest (busybox sh), from the 9p share at /mnt. For each NIC
# pair: netns gw/cl with one NIC each, `kxgw serve --xdp-iface` (bind mode checked against
# $EXPECT), `kxgw consume --verify` of a multi-segment log with every TX strategy the bind
# allows, with and without 1% loss, no UMEM frame leaked at shutdown, and in zero-copy mode a
# kretprobe on xp_raw_get_dma whose TX DMA addresses must all lie in the UMEM's pages.
. /mnt/params
K=/mnt/kxgw
TR=/sys/kernel/tracing
EP=198.18.0.1:9093
export RUST_LOG=info
# The bind asked for: zero-copy where it is expected, else auto (which must fall back to copy),
# unless the host script forced one (--bind).
if [ -z "$BIND" ]; then
  BIND=auto
  [ "$EXPECT" = zero-copy ] && BIND=zero-copy
fi

# IP, ip, FAILS, log, bad, ifaces_of (scripts/lib/testvm-guest-setup.sh).
. /mnt/guest-setup.sh
nft() { /usr/local/bin/nft "$@"; }
ethtool() { /usr/local/bin/ethtool "$@"; }

# Waits up to 10 s for carrier on $2 in netns $1 (igb resets its link on XDP attach and bind).
wait_carrier() {
  i=0
  while [ $i -lt 100 ]; do
    ip -n "$1" link show "$2" | grep -q LOWER_UP && return 0
    sleep 0.1
    i=$((i + 1))
  done
  bad "no carrier on $2 ($1) after 10 s"
  return 1
}

set_loss() {
  ip netns exec cl /usr/local/bin/nft delete table inet kxgwloss 2>/dev/null
  [ "$1" = 0 ] && return 0
  printf 'table inet kxgwloss {\n chain input {\n  type filter hook input priority -300;\n  numgen random mod 100 < %s drop\n }\n}\n' "$1" |
    ip netns exec cl /usr/local/bin/nft -f - 2>/tmp/nft.err ||
    bad "installing the ${1}% loss rule: $(cat /tmp/nft.err)"
}

trace_start() {
  echo 0 >$TR/events/kxgw/xpdma/enable 2>/dev/null
  echo '-:kxgw/xpdma' >>$TR/kprobe_events 2>/dev/null
  echo 'r:kxgw/xpdma xp_raw_get_dma ret=$retval:u64' >>$TR/kprobe_events 2>/dev/null ||
    { bad "cannot create a kretprobe on xp_raw_get_dma"; return; }
  echo 32768 >$TR/buffer_size_kb
  echo >$TR/trace
  echo 1 >$TR/events/kxgw/xpdma/enable
}

# The DMA addresses of TX descriptors (kretprobe) against the UMEM's physical pages.
trace_check() {
  echo 0 >$TR/events/kxgw/xpdma/enable
  cat $TR/trace >/tmp/trace.txt
  grep -o 'ret=[0-9a-fx]*' /tmp/trace.txt | cut -d= -f2 >/tmp/dma
  echo >$TR/trace
  echo '-:kxgw/xpdma' >>$TR/kprobe_events
  res=$(awk 'NR == FNR { for (p = int($1 / 4096); p < int($2 / 4096); p++) page[p] = 1; next }
      { n++; if (int($1 / 4096) in page) ok++; else { out++; if (!first) first = $1 } }
      END { printf "%d %d %d %s", n, ok, out, first }' /tmp/pm /tmp/dma)
  what=$1
  set -- $res
  ranges=$(wc -l </tmp/pm)
  log "DMA proof ($what): $1 TX DMA addresses (xp_raw_get_dma), $2 inside the UMEM's pages ($ranges physical ranges), $3 outside${4:+ (first: $4)}"
  if [ "$3" != 0 ]; then
    log "  trace sample: $(grep -m2 xpdma /tmp/trace.txt)"
    log "  UMEM ranges: $(head -2 /tmp/pm | tr '\n' ' ')"
  fi
  [ "$1" -gt 0 ] || bad "$what: no TX DMA address traced in zero-copy mode"
  [ "$3" = 0 ] || bad "$what: $3 TX DMA address(es) outside the UMEM"
}

# serve_start IF BIND STRATEGY [extra...]: starts the gateway in gw; 0 once it printed its
# endpoint line.
serve_start() {
  iface=$1 bind=$2 strat=$3
  shift 3
  rm -f /tmp/serve.out /tmp/serve.err /tmp/pm
  $IP netns exec gw $K serve --log-dir /tmp/log --fetch-listen $EP --xdp-iface "$iface" \
    --xdp-bind "$bind" --tx-strategy "$strat" --arena-mib 64 --require-xdp \
    --xdp-umem-pagemap /tmp/pm "$@" >/tmp/serve.out 2>/tmp/serve.err &
  SERVE=$!
  i=0
  while [ $i -lt 300 ]; do
    grep -q "fetch endpoint" /tmp/serve.out 2>/dev/null && return 0
    kill -0 $SERVE 2>/dev/null || return 1
    sleep 0.1
    i=$((i + 1))
  done
  return 1
}

serve_stop() {
  kill -TERM $SERVE 2>/dev/null
  wait $SERVE
  rc=$?
  [ $rc = 0 ] || bad "kxgw serve exited $rc"
  if grep -q "UMEM frame(s) leaked\|unaccounted for at shutdown" /tmp/serve.err; then
    bad "UMEM frames leaked: $(grep "UMEM frame(s) leaked\|unaccounted for at shutdown" /tmp/serve.err)"
  fi
  grep -q "no UMEM frame leaked" /tmp/serve.err || bad "no frame-ledger line at shutdown"
  grep -m1 "no UMEM frame leaked" /tmp/serve.err | sed 's/^/guest:   /'
}

# One gateway + one verified consume. Args: NIC IF STRATEGY LOSS.
run_one() {
  nic=$1 iface=$2 strat=$3 loss=$4
  zc=0
  [ "$EXPECT" = zero-copy ] && { trace_start; zc=1; }
  if ! serve_start "$iface" $BIND "$strat"; then
    bad "$nic $strat: kxgw serve did not start: $(tail -3 /tmp/serve.err)"
    return
  fi
  banner=$(grep -m1 "fetch endpoint" /tmp/serve.out)
  log "$nic: $banner"
  echo "$banner" | grep -q "bind mode $EXPECT" || bad "$nic: expected bind mode $EXPECT: $banner"
  sleep 1
  wait_carrier gw "$iface"
  set_loss "$loss"
  t0=$(date +%s)
  ip netns exec cl $K consume --fetch $EP --topic t --from-beginning --verify \
    --count "$RECORDS" --connect-timeout-ms 20000 >/tmp/consume.out 2>&1
  crc=$?
  t1=$(date +%s)
  set_loss 0
  summary=$(grep -m1 "verified" /tmp/consume.out)
  log "$nic strategy $strat loss ${loss}%: $summary ($((t1 - t0)) s)"
  [ $crc = 0 ] || bad "$nic $strat ${loss}%: consume exited $crc: $(tail -3 /tmp/consume.out)"
  echo "$summary" | grep -q "verified $RECORDS records" || bad "$nic $strat ${loss}%: not every record verified"
  [ $zc = 1 ] && trace_check "$nic $strat ${loss}%"
  serve_stop
}

# Kernel UDP (no --xdp-iface) with UDP GSO on this NIC pair. Where the device damages GSO
# datagrams (QEMU's igb does) the gateway must notice and fall back to plain sendmmsg, which
# `kxgw stats` shows (fetch_udp_gso_fallbacks_total, reason damaged). The consumer running
# when that happens must get every record, and so must one started after it.
udp_check() {
  nic=$1
  rm -f /tmp/serve.out /tmp/serve.err /tmp/kxgw.sock
  $IP netns exec gw $K serve --log-dir /tmp/log --fetch-listen $EP --udp-gso on \
    --control-socket /tmp/kxgw.sock >/tmp/serve.out 2>/tmp/serve.err &
  SERVE=$!
  i=0
  while [ $i -lt 300 ] && ! grep -q "fetch endpoint" /tmp/serve.out 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
  done
  if ! grep -q "on kernel UDP" /tmp/serve.out; then
    bad "$nic kernel UDP: kxgw serve did not start: $(tail -3 /tmp/serve.err)"
    kill $SERVE 2>/dev/null
    wait $SERVE
    return
  fi
  # Two consumers, one after the other: the first meets GSO (and on a damaging device, the
  # fallback while it runs); both must get every record.
  metric() { echo "$raw" | grep "^kxgw_fetch_udp_gso$1" | awk '{ print $2 }'; }
  for run in first second; do
    t0=$(date +%s)
    # The client's debug lines say what damaged datagrams did to it.
    RUST_LOG=info,kxgw::fetch::client=debug timeout 300 $IP netns exec cl $K consume --fetch $EP \
      --topic t --from-beginning --verify --count "$RECORDS" --connect-timeout-ms 20000 \
      >/tmp/consume.out 2>&1
    crc=$?
    t1=$(date +%s)
    summary=$(grep -m1 "verified" /tmp/consume.out)
    raw=$($IP netns exec gw $K stats --socket /tmp/kxgw.sock --raw)
    log "$nic kernel UDP + GSO, $run consumer: $summary ($((t1 - t0)) s); GSO fallbacks so far: damaged $(metric '_fallbacks_total{.*reason="damaged"')"
    grep -m1 "loss recovered" /tmp/consume.out | sed 's/^/guest:   /'
    log "  client: $(grep -c 'bad DATA' /tmp/consume.out) bad DATA header(s), $(grep -c 'disagrees with its partial' /tmp/consume.out) fragment(s) disagreeing with their partial batch, $(grep -c 'with nothing in flight to unblock' /tmp/consume.out) resync(s)"
    grep -m3 'bad DATA\|disagrees with its partial\|nothing in flight to unblock' /tmp/consume.out | cut -c1-300 | sed 's/^/guest:   /'
    grep -m1 'fetch client at exit' /tmp/consume.out | cut -c1-600 | sed 's/^/guest:   /'
    [ $crc = 0 ] || bad "$nic kernel UDP, $run consumer: consume exited $crc: $(tail -3 /tmp/consume.out | cut -c1-300)"
    echo "$summary" | grep -q "verified $RECORDS records" || bad "$nic kernel UDP, $run consumer: not every record verified"
  done
  gso="GSO fallbacks: damaged $(metric '_fallbacks_total{.*reason="damaged"'), refused $(metric '_fallbacks_total{.*reason="refused"'); GSO now $(metric '{')"
  kill -TERM $SERVE 2>/dev/null
  wait $SERVE
  log "$nic kernel UDP + GSO: $gso"
  grep "damage GSO" /tmp/serve.err | sed 's/^/guest:   /'
  echo "$gso" | grep -q 'damaged [0-9]' || bad "$nic kernel UDP: no GSO fallback counter in kxgw stats: $raw"
}

test_pair() {
  nic=$1 drv=$2
  set -- $(ifaces_of "$drv")
  [ $# -ge 2 ] || { bad "$nic: want two $drv interfaces, found: $*"; return; }
  a=$1 b=$2
  log "== $nic ($drv): $a in netns gw, $b in netns cl"
  ip netns add gw
  ip netns add cl
  ip link set "$a" netns gw
  ip link set "$b" netns cl
  # One queue each: with two, RSS may put the flow on a queue kxgw then has to serve too.
  ip netns exec gw /usr/local/bin/ethtool -L "$a" combined 1 2>/dev/null
  ip netns exec cl /usr/local/bin/ethtool -L "$b" combined 1 2>/dev/null
  ip -n gw addr add 198.18.0.1/24 dev "$a"
  ip -n cl addr add 198.18.0.2/24 dev "$b"
  ip -n gw link set lo up
  ip -n cl link set lo up
  ip -n gw link set "$a" up
  ip -n cl link set "$b" up
  wait_carrier gw "$a" && wait_carrier cl "$b"
  # Which strategies does the bind allow? Ask with auto first.
  strategies="copy auto"
  if serve_start "$a" $BIND auto; then
    grep -m1 "fetch endpoint" /tmp/serve.out | grep -q "multi-buffer" && strategies="sg copy auto"
    serve_stop
  else
    bad "$nic: kxgw serve (auto) did not start: $(tail -3 /tmp/serve.err)"
  fi
  case "$strategies" in
    sg*) ;;
    *)
      # Single-buffer: sg must be refused at start with a clear error, not stall.
      if serve_start "$a" $BIND sg; then
        bad "$nic: --tx-strategy sg accepted on a single-buffer bind"
        serve_stop
      else
        wait $SERVE 2>/dev/null
        grep -q "needs a multi-buffer" /tmp/serve.err &&
          log "$nic: sg refused on the single-buffer bind: $(grep -m1 -o 'needs a multi-buffer[^:]*' /tmp/serve.err)" ||
          bad "$nic: sg failed without the single-buffer error: $(tail -2 /tmp/serve.err)"
      fi
      ;;
  esac
  # A quick run (copy-mode kernels): the one strategy asked for, where the bind allows it.
  if [ -n "$STRATEGIES" ]; then
    want=
    for s in $STRATEGIES; do
      case " $strategies " in *" $s "*) want="$want $s" ;; *) log "$nic: strategy $s not allowed by this bind; skipped" ;; esac
    done
    strategies=$want
    [ -n "$strategies" ] || bad "$nic: none of the strategies $STRATEGIES is allowed by the bind"
  fi
  for strat in $strategies; do
    for loss in $LOSSES; do
      run_one "$nic" "$a" "$strat" "$loss"
    done
  done
  case " $UDPCHECK " in *" $nic "*) udp_check "$nic" ;; esac
  ip netns del gw
  ip netns del cl
  sleep 0.5
}

log "kernel $(uname -r), $(nproc) vCPU(s); NICs: $NICS; expecting bind mode $EXPECT"
$K produce --log-dir /tmp/log --topic t --records "$RECORDS" --record-size 1000 \
  --segment-bytes 4194304 >/dev/null 2>&1 || bad "kxgw produce"
segs=$(ls /tmp/log/t-0/*.log | wc -l)
log "log: $RECORDS records of 1000 B in $segs segments"
[ "$segs" -ge 2 ] || bad "want a multi-segment log, got $segs segment(s)"
for nic in $NICS; do
  case $nic in
    igb) test_pair igb igb ;;
    virtio) test_pair virtio-net virtio_net ;;
  esac
done
log "$FAILS failure(s)"
[ $FAILS = 0 ]
