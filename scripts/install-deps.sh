#!/usr/bin/env bash
# Installs the system and Python packages kxgw's build, tests, demo and benchmarks need on
# Debian 12 (run as root). Idempotent: it only calls apt-get/pip for what is missing.
set -euo pipefail

APT_PACKAGES=(
  clang llvm libelf-dev zlib1g-dev pkg-config linux-libc-dev libbpf-dev # BPF build
  iproute2 bpftool nftables ethtool                                     # test network
  kcat iperf3 gnuplot-nox openssl                                       # clients, ceilings, plots, bench TLS certificate
  python3 python3-pip ruby vagrant systemd                              # kafka-python, confluent-kafka, Vagrantfile check, unit check
  xz-utils zstd binutils                                                # scripts/testvm.sh: guest modules, strip
)
PIP_PACKAGES=(kafka-python==2.3.3 python-snappy==0.7.3 lz4==4.4.5 zstandard==0.25.0 confluent-kafka==2.16.1)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (apt-get install)" >&2
  exit 1
fi

# QEMU >= 8 (the igb model) for scripts/testvm.sh: Debian 12 has 7.2, bookworm-backports has
# 10.x. A private sources list (bookworm + bookworm-backports) and private apt lists keep the
# machine's own sources untouched.
install_qemu() {
  if command -v qemu-system-x86_64 >/dev/null &&
    qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'; then
    return
  fi
  local d=/var/cache/kxgw-testvm/apt-host
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  cat >"$d/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bookworm-backports main
EOF
  local o=(-o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache")
  echo "install-deps: apt-get install -t bookworm-backports qemu-system-x86"
  apt-get "${o[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive apt-get "${o[@]}" install -y -qq --no-install-recommends \
    -t bookworm-backports qemu-system-x86 >/dev/null
}
install_qemu
if [ "${1:-}" = "--qemu" ]; then
  exit 0
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

# kafkajs for cli/tests/groups.rs: node from Debian when missing, the package from cli/tests/js's lock.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "install-deps: apt-get install nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
js_dir="$(cd "$(dirname "$0")/.." && pwd)/cli/tests/js"
if [ ! -d "$js_dir/node_modules/kafkajs" ]; then
  echo "install-deps: npm ci in $js_dir"
  (cd "$js_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi

command -v cargo >/dev/null || {
  echo "install-deps: no cargo on PATH: install a Rust toolchain >= 1.82 (rustup) first" >&2
  exit 1
}
