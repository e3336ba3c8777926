#!/usr/bin/env bash
# The README's five-minute tour, run as it is shown there: build, a namespace pair, a demo log,
# one gateway (AF_XDP fetch endpoint + Kafka TCP), consumers over both, the counters, and down
# again. The lines between "tour: begin" and "tour: end" are the README's tour block, verbatim
# (tests/readme.rs compares them). Idempotent, and it removes what it made on success and on
# failure: the namespaces kxtour-gw / kxtour-cl (198.18.0.1 / 198.18.0.2, no route out), the
# log dir and the control socket. Run as root from anywhere; CI runs it from .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

LOGS=/var/tmp/kxgw-tour
SOCK=/run/kxgw/kxtour.sock
cleanup() {
  # Stopping the namespaces' processes first lets the gateway detach XDP before they go.
  scripts/netns.sh down --name kxtour
  rm -rf "$LOGS" "$SOCK"
}
cleanup
trap cleanup EXIT

# tour: begin
scripts/install-deps.sh
cargo build --release --locked
K=target/release/kxgw
scripts/netns.sh up --name kxtour --mtu 1500
$K produce --log-dir /var/tmp/kxgw-tour --topic t --partitions 2 --records 50000 --record-size 200
ip netns exec kxtour-gw $K serve --log-dir /var/tmp/kxgw-tour --kafka-listen 198.18.0.1:9092 \
    --fetch-listen 198.18.0.1:7878 --xdp-iface kxtour-g --require-xdp \
    --control-socket /run/kxgw/kxtour.sock &
GW=$!
until $K stats --socket /run/kxgw/kxtour.sock >/dev/null 2>&1; do sleep 0.2; kill -0 $GW || break; done
ip netns exec kxtour-cl $K consume --fetch 198.18.0.1:7878 --topic t --partition 0 --verify
ip netns exec kxtour-cl $K consume --fetch 198.18.0.1:7878 --topic t --partition 1 \
    --offset 49997 --format '%p %o %k %S\n'
ip netns exec kxtour-cl kcat -C -b 198.18.0.1:9092 -t t -p 1 -o beginning -e -q | wc -l | grep -x 50000
$K stats --socket /run/kxgw/kxtour.sock
kill $GW && wait $GW
scripts/netns.sh down --name kxtour
# tour: end
echo "tour: done"
