#!/usr/bin/env bash
# Provisions a Debian 12 machine (the Vagrant test VM, or any root shell) for kxgw:
# system packages, a Rust toolchain if there is none, a release build installed to
# /usr/local/bin, the config file and the systemd unit, and the demo network (scripts/netns.sh).
# Idempotent; CI runs it for real.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src"

[ "$(id -u)" -eq 0 ] || { echo "provision: run as root" >&2; exit 1; }

scripts/install-deps.sh

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH=$HOME/.cargo/bin:$PATH
  else
    # Only the VM takes this branch (CI and dev machines ship a toolchain).
    apt-get install -y -qq curl ca-certificates >/dev/null
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH=$HOME/.cargo/bin:$PATH
  fi
fi

cargo build --release --locked
install -m 0755 target/release/kxgw /usr/local/bin/kxgw
install -d -m 0755 /etc/kxgw /var/lib/kxgw/logs
[ -f /etc/kxgw/kxgw.toml ] || install -m 0644 deploy/kxgw.toml /etc/kxgw/kxgw.toml
install -m 0644 deploy/kxgw.service /etc/systemd/system/kxgw.service
systemd-analyze verify /etc/systemd/system/kxgw.service
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi

scripts/netns.sh up --name kxgw --mtu "${KXGW_MTU:-1500}"
echo "provision: kxgw $(kxgw --version | cut -d' ' -f2) installed; demo network kxgw-gw/kxgw-cl is up"
