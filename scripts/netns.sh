#!/usr/bin/env bash
# Builds (or removes) the test network kxgw's demo, benchmarks and Vagrant VM use: two network
# namespaces joined by a veth pair, addresses from the benchmarking range 198.18.0.0/15, no
# default route. Same layout as src/testnet.rs (which the Rust tests use, with per-run names).
#
#   scripts/netns.sh up [--mtu N] [--name PREFIX]    # creates PREFIX-gw / PREFIX-cl
#   scripts/netns.sh down [--name PREFIX]
#   scripts/netns.sh status [--name PREFIX]
set -euo pipefail

name=kxgw
mtu=1500
action=${1:-}
shift || true
while [ $# -gt 0 ]; do
  case $1 in
    --mtu) mtu=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    *) echo "netns.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
gw_ns=$name-gw cl_ns=$name-cl gw_if=${name:0:10}-g cl_if=${name:0:10}-c
GW_ADDR=198.18.0.1 CL_ADDR=198.18.0.2

down() {
  for ns in "$gw_ns" "$cl_ns"; do
    if ip netns list | grep -qw "^$ns"; then
      # Processes left in the namespace keep it (and its XDP program) alive: stop them first.
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
  done
}

case $action in
  up)
    [ "$(id -u)" -eq 0 ] || { echo "netns.sh: run as root (creates namespaces)" >&2; exit 1; }
    down
    trap 'down' ERR
    ip netns add "$gw_ns"
    ip netns add "$cl_ns"
    ip link add "$gw_if" netns "$gw_ns" type veth peer name "$cl_if" netns "$cl_ns"
    for side in "$gw_ns $gw_if $GW_ADDR" "$cl_ns $cl_if $CL_ADDR"; do
      set -- $side
      ip -n "$1" link set lo up
      ip -n "$1" link set "$2" mtu "$mtu"
      ip -n "$1" addr add "$3/30" dev "$2"
      ip -n "$1" link set "$2" up
    done
    echo "gateway:  ip netns exec $gw_ns ...   ($gw_if $GW_ADDR, MTU $mtu)"
    echo "consumer: ip netns exec $cl_ns ...   ($cl_if $CL_ADDR)"
    ;;
  down) down ;;
  status)
    for ns in "$gw_ns" "$cl_ns"; do
      echo "== $ns"; ip -n "$ns" -br addr 2>/dev/null || echo "(absent)"
    done
    ;;
  *) echo "usage: netns.sh up|down|status [--mtu N] [--name PREFIX]" >&2; exit 2 ;;
esac
