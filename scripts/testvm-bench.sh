#!/bin/sh
# Runs inside scripts/testvm.sh's guest for `testvm.sh --bench` (busybox sh, from the 9p share
# at /mnt). Per NIC pair (netns gw/cl, one NIC each, the gateway NIC's interrupts on vCPU 0,
# the consumer NIC's on vCPU 1), the serving paths side by side on the same emulated NIC:
#
#   xdp-zc         kxgw serve --xdp-iface --xdp-bind zero-copy  (AF_XDP, the NIC DMAs the UMEM)
#   xdp-copy       kxgw serve --xdp-iface --xdp-bind copy       (AF_XDP copy mode)
#   udp-sendmmsg   kxgw serve --fetch-listen --udp-gso off      (kernel UDP)
#   kafka-sendfile kxgw serve --kafka-listen --io sendfile      (Kafka TCP)
#
# The gateway runs pinned to vCPU 0, the consumer (kxgw-bench fetch-load / kafka-load, which
# CRC-check every batch) to vCPU 1. Runs alternate between paths (run 1 of every path, then
# run 2, ..., each run starting one path further on). Each run appends a row to
# /mnt/bench.tsv: nic path run status gbps records/s cpu-s/GiB bytes secs note, where cpu is
# the gateway process's utime+stime plus vCPU 0's softirq time over the consume.
. /mnt/params
K=/mnt/kxgw
B=/mnt/kxgw-bench
OUT=/mnt/bench.tsv
GW=198.18.0.1
FETCH_PORT=9093
KAFKA_PORT=9092
export RUST_LOG=info
# IP, ip, FAILS, log, bad, ifaces_of (scripts/lib/testvm-guest-setup.sh).
. /mnt/guest-setup.sh

wait_carrier() {
  i=0
  while [ $i -lt 100 ]; do
    ip -n "$1" link show "$2" | grep -q LOWER_UP && return 0
    sleep 0.1
    i=$((i + 1))
  done
  return 1
}

# The PCI device of interface $1 (in this namespace): where its MSI/MSI-X vectors are listed.
pci_dev() {
  dev=$(readlink -f "/sys/class/net/$1/device")
  # virtio-net: the vectors belong to the virtio PCI device, the parent of virtioN.
  [ -d "$dev/msi_irqs" ] || dev=$(dirname "$dev")
  echo "$dev"
}

# Interrupts of PCI device $1 onto CPU mask $2 (once the interface is up: the driver requests
# its vectors on open). Prints IRQ:CPU pairs.
pin_irqs() {
  dev=$1
  got=
  for irq in $(ls "$dev/msi_irqs" 2>/dev/null); do
    echo "$2" >"/proc/irq/$irq/smp_affinity" 2>/dev/null
    got="$got $irq:$(cat /proc/irq/$irq/smp_affinity_list 2>/dev/null)"
  done
  echo "${got:- none}"
}

# utime+stime of process $1 (clock ticks) and softirq ticks of CPU 0.
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
softirq0() { awk '$1 == "cpu0" { print $8 }' /proc/stat; }

json() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" "$2" | tail -1; }

row() { # nic path run status gbps rps cpu bytes secs note
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>$OUT
}

# The gateway command line of path $1 on interface $2.
gw_cmd() {
  case $1 in
    xdp-zc) echo "$K serve --log-dir /tmp/log --fetch-listen $GW:$FETCH_PORT --xdp-iface $2 --xdp-bind zero-copy --tx-strategy auto --require-xdp --arena-mib 64" ;;
    xdp-copy) echo "$K serve --log-dir /tmp/log --fetch-listen $GW:$FETCH_PORT --xdp-iface $2 --xdp-bind copy --tx-strategy auto --require-xdp --arena-mib 64" ;;
    udp-sendmmsg) echo "$K serve --log-dir /tmp/log --fetch-listen $GW:$FETCH_PORT --udp-gso off" ;;
    kafka-sendfile) echo "$K serve --log-dir /tmp/log --kafka-listen $GW:$KAFKA_PORT --io sendfile" ;;
  esac
}

# What the gateway said about how it serves (bind mode, TX strategy, datagram size).
mode_note() {
  case $1 in
    xdp-*)
      m=$(grep -oE 'bound [a-z -]+, TX strategy [a-z]+( \([^)]*\))?' /tmp/gw.err | head -1)
      d=$(grep -oE 'max datagram [0-9]+ B' /tmp/gw.err | head -1)
      echo "${m:-bind mode unknown}, $d" ;;
    udp-*) echo "kernel UDP sendmmsg, no GSO, $(grep -oE 'max datagram [0-9]+ B' /tmp/gw.err | head -1)" ;;
    kafka-*) echo "Kafka Fetch v11 (kxgw-bench kafka-load), --io sendfile" ;;
  esac
}

# One run of path $2 on NIC $1 (interface $3): appends a row.
measure() {
  nic=$1 path=$2 iface=$3 run=$4
  rm -f /tmp/gw.out /tmp/gw.err /tmp/cl.out /tmp/cl.err
  # shellcheck disable=SC2046
  $IP netns exec gw taskset 1 $(gw_cmd "$path" "$iface") >/tmp/gw.out 2>/tmp/gw.err &
  gw=$!
  i=0
  while [ $i -lt 300 ] && ! grep -q "counters: kxgw stats" /tmp/gw.err 2>/dev/null; do
    kill -0 $gw 2>/dev/null || break
    sleep 0.1
    i=$((i + 1))
  done
  if ! grep -q "counters: kxgw stats" /tmp/gw.err 2>/dev/null; then
    row "$nic" "$path" "$run" failed - - - - - "gateway did not start: $(tail -1 /tmp/gw.err | tr '\t' ' ')"
    kill $gw 2>/dev/null
    wait $gw 2>/dev/null
    return
  fi
  # igb resets its link on an XDP attach and a zero-copy bind.
  sleep 1
  wait_carrier gw "$iface" || log "$nic $path: no carrier on $iface"
  note=$(mode_note "$path")
  t0=$(proc_ticks $gw)
  s0=$(softirq0)
  case $path in
    kafka-*)
      # kafka-load has no time limit of its own.
      timeout 300 $IP netns exec cl taskset 2 $B kafka-load --bootstrap $GW:$KAFKA_PORT --topic t \
        --records "$RECORDS" >/tmp/cl.out 2>/tmp/cl.err ;;
    *)
      $IP netns exec cl taskset 2 $B fetch-load --fetch $GW:$FETCH_PORT --topic t \
        --records "$RECORDS" --timeout-secs 300 >/tmp/cl.out 2>/tmp/cl.err ;;
  esac
  rc=$?
  t1=$(proc_ticks $gw)
  s1=$(softirq0)
  kill -TERM $gw 2>/dev/null
  wait $gw 2>/dev/null
  bytes=$(json bytes /tmp/cl.out)
  secs=$(json secs /tmp/cl.out)
  records=$(json records /tmp/cl.out)
  if [ $rc != 0 ] || [ -z "$bytes" ] || [ -z "$secs" ]; then
    row "$nic" "$path" "$run" failed - - - - - "consumer exit $rc: $(tail -1 /tmp/cl.err | tr '\t' ' ')"
    log "$nic $path run $run: FAILED (consumer exit $rc): $(tail -2 /tmp/cl.err)"
    return
  fi
  set -- $(awk -v b="$bytes" -v s="$secs" -v r="$records" -v t="$((t1 - t0))" -v q="$((s1 - s0))" \
    'BEGIN { printf "%.4f %.1f %.4f", b * 8 / s / 1e9, r / s, (t + q) / 100 / (b / 1073741824) }')
  row "$nic" "$path" "$run" ok "$1" "$2" "$3" "$bytes" "$secs" "$note"
  log "$nic $path run $run: $1 Gbit/s, $2 records/s, gateway $3 CPU s/GiB ($note)"
  # AF_XDP: rebinding right after a close can give EBUSY for a moment.
  sleep 0.5
}

bench_pair() {
  nic=$1 drv=$2
  set -- $(ifaces_of "$drv")
  [ $# -ge 2 ] || { bad "$nic: want two $drv interfaces, found: $*"; return; }
  a=$1 b=$2
  # One queue each (as the checks), then the interrupts: the gateway NIC's on vCPU 0 with the
  # gateway, the consumer NIC's on vCPU 1 with the consumer.
  /usr/local/bin/ethtool -L "$a" combined 1 2>/dev/null
  /usr/local/bin/ethtool -L "$b" combined 1 2>/dev/null
  da=$(pci_dev "$a")
  db=$(pci_dev "$b")
  ip netns add gw
  ip netns add cl
  ip link set "$a" netns gw
  ip link set "$b" netns cl
  ip -n gw addr add $GW/24 dev "$a"
  ip -n cl addr add 198.18.0.2/24 dev "$b"
  for ns in gw cl; do ip -n $ns link set lo up; done
  ip -n gw link set "$a" up
  ip -n cl link set "$b" up
  wait_carrier gw "$a" && wait_carrier cl "$b" || bad "$nic: no carrier"
  log "== $nic ($drv): $a in netns gw, IRQ:CPU$(pin_irqs "$da" 1); $b in netns cl, IRQ:CPU$(pin_irqs "$db" 2)"
  n=$(echo $PATHS | wc -w)
  run=1
  while [ $run -le "$RUNS" ]; do
    # Each run starts one path further on, so no path always follows the same one.
    k=0
    while [ $k -lt "$n" ]; do
      idx=$(((run - 1 + k) % n + 1))
      path=$(echo $PATHS | cut -d' ' -f$idx)
      measure "$nic" "$path" "$a" "$run"
      k=$((k + 1))
    done
    run=$((run + 1))
  done
  ip netns del gw
  ip netns del cl
  sleep 0.5
}

: >$OUT
log "bench: kernel $(uname -r), $(nproc) vCPU(s); NICs: $NICS; paths: $PATHS; $RUNS run(s)"
$K produce --log-dir /tmp/log --topic t --records "$RECORDS" --record-size 1000 \
  --batch-records 16 >/dev/null 2>&1 || bad "kxgw produce"
bytes=$(cat /tmp/log/t-0/*.log | wc -c)
log "bench log: $RECORDS records of 1000 B, 16 per batch, $bytes bytes in $(ls /tmp/log/t-0/*.log | wc -l) segment(s)"
echo "$bytes" >/mnt/bench.logbytes
for nic in $NICS; do
  case $nic in
    igb) bench_pair igb igb ;;
    virtio) bench_pair virtio-net virtio_net ;;
  esac
done
fails=$(grep -c "	failed	" $OUT)
[ "$fails" = 0 ] || bad "$fails run(s) failed"
log "$FAILS failure(s)"
[ $FAILS = 0 ]
