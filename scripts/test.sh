#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint gates, then every unit, property and
# end-to-end test (the end-to-end tests build network namespaces and attach XDP: root only).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets "$@"
