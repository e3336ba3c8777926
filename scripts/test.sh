#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint gates, then every unit, property and
# end-to-end test (the end-to-end tests build network namespaces and attach XDP: root only).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The tests run kxgw-bench too, and cargo builds another package's binary for a test only when
# asked: --all-targets builds bins as unit-test harnesses, so build them plainly first.
cargo build --workspace --bins
cargo test --workspace --all-targets "$@"
