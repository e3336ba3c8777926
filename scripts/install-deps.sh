#!/usr/bin/env bash
# Installs the system and Python packages kxgw's build, tests, demo and benchmarks need on
# Debian 12 (run as root). Idempotent: it only calls apt-get/pip for what is missing.
set -euo pipefail

APT_PACKAGES=(
  clang llvm libelf-dev zlib1g-dev pkg-config linux-libc-dev libbpf-dev # BPF build
  iproute2 bpftool nftables ethtool                                     # test network
  kcat iperf3 gnuplot-nox                                               # clients, ceilings, plots
  python3 python3-pip ruby vagrant systemd                              # kafka-python, confluent-kafka, Vagrantfile check, unit check
)
PIP_PACKAGES=(kafka-python==2.3.3 confluent-kafka==2.16.1)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (apt-get install)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Whatever python3 is first on PATH runs the tests, so install into that one.
for spec in "${PIP_PACKAGES[@]}"; do
  name=${spec%%==*}
  if ! python3 -m pip show -q "$name" >/dev/null 2>&1; then
    echo "install-deps: pip install $spec"
    python3 -m pip install -q "$spec" 2>/dev/null ||
      python3 -m pip install -q --break-system-packages "$spec"
  fi
done

command -v cargo >/dev/null || {
  echo "install-deps: no cargo on PATH: install a Rust toolchain >= 1.82 (rustup) first" >&2
  exit 1
}
