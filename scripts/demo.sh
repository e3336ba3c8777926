#!/usr/bin/env bash
# The README's first command: installs what is missing, builds kxgw (release), then runs
# `kxgw demo`: gateway + demo log + consumers on a veth pair between two namespaces.
# Extra arguments go to `kxgw demo` (e.g. --mtu 9000, --records 100000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked --quiet
exec target/release/kxgw demo "$@"
