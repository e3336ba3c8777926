#!/usr/bin/env bash
# Boots a QEMU guest with a Debian kernel and emulated NICs (two Intel igb, two virtio-net
# with iommu_platform=on) and runs kxgw's AF_XDP fast path there for real: zero-copy bind,
# `kxgw consume --verify` of a multi-segment log with each TX strategy the bind allows, with
# and without 1% loss, and a kprobe trace proving the NIC's TX DMA addresses lie in the UMEM.
#
#   scripts/testvm.sh                    # Linux 7.3 (trixie-backports): zero-copy expected
#   scripts/testvm.sh --kernel 6.12      # Linux 6.12 (Debian 13): loads, serves in copy mode
#   scripts/testvm.sh --kernel 6.1       # Linux 6.1 (Debian 12): the same
#   scripts/testvm.sh --bench            # the VM bench: serving paths side by side (7.3 guest)
#
# --bench runs scripts/testvm-bench.sh in the guest instead of the checks: AF_XDP zero-copy,
# AF_XDP copy mode, kernel UDP and Kafka TCP sendfile on the same emulated NIC, consumer
# Gbit/s and gateway CPU per GiB, medians over --runs runs; the table goes to --out (default
# bench/results/DATE-vm-KERNEL-SHA.md, with the raw runs beside it).
#
# The guest: the kernel and modules of linux-image-amd64 from the named suite, fetched with a
# private apt sources file (`apt-get download` + `dpkg-deb -x`; the machine's own sources and
# packages are untouched), busybox-static, and an initramfs with this script's /init; the
# host's ip/nft/ethtool and the libraries they and kxgw need are copied in by `ldd`; kxgw
# itself and the guest's test script come in over 9p. Kernel, modules and the base initramfs
# are cached in $KXGW_VM_CACHE (default /var/cache/kxgw-testvm) keyed by kernel version.
# QEMU runs with TCG (`/dev/kvm` on these machines cannot run a stock kernel). NIC pairs are
# joined by QEMU hubs: no traffic leaves the QEMU process. Exit status 0 only if every check
# in the guest passed. Needs root (apt-get install of QEMU when missing).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
KERNEL=7.3
EXPECT=
NICS="igb virtio"
TIMEOUT=${KXGW_VM_TIMEOUT:-}
CACHE=${KXGW_VM_CACHE:-/var/cache/kxgw-testvm}
KXGW_BIN=${KXGW_BIN:-}
RECORDS=${KXGW_VM_RECORDS:-20000}
STRATEGIES=
LOSSES=
QUICK=
BIND=
BENCH=
RUNS=
BENCH_RECORDS=
BENCH_OUT=
BENCH_PATHS="xdp-zc xdp-copy udp-sendmmsg kafka-sendfile"

usage() {
  cat >&2 <<EOF
usage: $0 [--kernel 7.3|6.12|6.1] [--nics 'igb virtio'] [--expect zero-copy|copy]
          [--bind zero-copy|copy|auto] [--quick | --full] [--strategies 'sg copy auto']
          [--losses '0 1'] [--udp 'igb virtio-net']
       $0 --bench [--kernel 7.3] [--nics 'igb virtio'] [--runs N] [--records N]
          [--paths 'xdp-zc xdp-copy udp-sendmmsg kafka-sendfile'] [--out DIR]
  --kernel   guest kernel: 7.3 (trixie-backports, zero-copy; default), 6.12 (trixie),
             6.1 (bookworm); a Debian suite name works too
  --quick    one strategy (auto), no loss run (the default with 6.12 and 6.1)
  --full     every strategy the bind allows, with and without 1% loss (the default with 7.3)
  --bind     the --xdp-bind the guest asks for (default: zero-copy where expected, else auto)
  --udp      NICs on which kernel UDP with GSO is checked too (default: igb and virtio-net
             with --full, none with --quick)
  --bench    the VM bench instead of the checks (scripts/testvm-bench.sh in the guest):
             --runs runs per path (default 5), a log of --records 1000-B records (default
             50000), the table written to --out DIR (default bench/results)
EOF
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) KERNEL=${2:?}; shift 2 ;;
    --nics) NICS=${2:?}; shift 2 ;;
    --expect) EXPECT=${2:?}; shift 2 ;;
    --bind) BIND=${2:?}; shift 2 ;;
    --udp) UDPCHECK=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --full) QUICK=0; shift ;;
    --strategies) STRATEGIES=${2:?}; shift 2 ;;
    --losses) LOSSES=${2:?}; shift 2 ;;
    --bench) BENCH=1; shift ;;
    --runs) RUNS=${2:?}; shift 2 ;;
    --records) BENCH_RECORDS=${2:?}; shift 2 ;;
    --paths) BENCH_PATHS=${2:?}; shift 2 ;;
    --out) BENCH_OUT=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    *) usage ;;
  esac
done
# Which Debian suite has the kernel, and the version prefix its linux-image-amd64 must have.
case "$KERNEL" in
  7.3 | trixie-backports) SUITE=trixie-backports WANT=7.3 ;;
  6.12 | trixie) SUITE=trixie WANT=6.12 ;;
  bookworm-backports) SUITE=bookworm-backports WANT=6.12 ;;
  6.1 | bookworm) SUITE=bookworm WANT=6.1 ;;
  *) usage ;;
esac
# Zero-copy TX in igb and virtio-net arrived after 6.12 (7.x has it).
if [ -z "$EXPECT" ]; then
  case "$WANT" in
    7.*) EXPECT=zero-copy ;;
    *) EXPECT=copy ;;
  esac
fi
if [ -z "$QUICK" ]; then
  QUICK=0
  [ "$EXPECT" = copy ] && QUICK=1
fi
if [ "$QUICK" = 1 ]; then
  STRATEGIES=${STRATEGIES:-auto}
  LOSSES=${LOSSES:-0}
else
  UDPCHECK=${UDPCHECK-igb virtio-net}
fi
UDPCHECK=${UDPCHECK-}
# The guest's time limit: the checks take 5-15 min under TCG on a shared host; the bench about
# a minute per path, run and NIC model at the default size.
if [ -z "$TIMEOUT" ]; then
  TIMEOUT=1500
  [ -n "$BENCH" ] && TIMEOUT=$((600 + ${RUNS:-5} * $(echo "$BENCH_PATHS" | wc -w) * $(echo "$NICS" | wc -w) * 60))
fi
LOSSES=${LOSSES:-0 1}

say() { echo "testvm: $*"; }
die() { echo "testvm: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (installs QEMU when missing, the guest needs root)"

RUN=$(mktemp -d /tmp/kxgw-testvm.XXXXXX)
QEMU_PID=
cleanup() {
  local rc=$?
  if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null || true
    sleep 1
    kill -9 "$QEMU_PID" 2>/dev/null || true
  fi
  rm -rf "$RUN"
  exit $rc
}
trap cleanup EXIT INT TERM

# --- private apt: Debian's archive without touching the machine's sources ------------------
APT_DIR=$CACHE/apt
apt_private() {
  apt-get -q -o Dir::Etc::SourceList="$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$APT_DIR/lists" -o Dir::Cache="$APT_DIR/cache" \
    -o APT::Architecture=amd64 -o Debug::NoDropPrivs=true -o APT::Sandbox::User=root "$@"
}
apt_cache() {
  apt-cache -o Dir::Etc::SourceList="$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$APT_DIR/lists" -o Dir::Cache="$APT_DIR/cache" \
    -o APT::Architecture=amd64 "$@"
}
apt_setup() {
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  cat >"$APT_DIR/sources.list" <<'EOF'
deb http://deb.debian.org/debian trixie-backports main
deb http://deb.debian.org/debian trixie main
deb http://deb.debian.org/debian bookworm-backports main
deb http://deb.debian.org/debian bookworm main
EOF
  # Refresh at most daily: versions move, a cached run should not need the network.
  if [ -z "$(find "$APT_DIR/lists" -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
    say "apt-get update (private lists in $APT_DIR)"
    apt_private update -qq >/dev/null || die "apt-get update of Debian's archive failed"
  fi
}

# --- QEMU: from bookworm-backports (10.x: the igb model) when the host's is missing ---------
ensure_qemu() {
  if command -v qemu-system-x86_64 >/dev/null && qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'; then
    return
  fi
  say "installing qemu-system-x86 (with the igb model) from bookworm-backports"
  "$REPO/scripts/install-deps.sh" --qemu || die "could not install QEMU"
  qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"' ||
    die "qemu-system-x86_64 has no igb device model (need QEMU >= 8.0)"
}

# --- guest kernel: download, unpack, pick the modules the test needs ------------------------
# Module names the guest loads (with their dependencies, resolved from .modinfo).
# crc32c_generic: 6.12's libcrc32c (nf_tables) asks the crypto API for crc32c at load time,
# which is no modinfo dependency.
MODULES="virtio_pci virtio_net igb 9pnet_virtio 9p crc32c_generic nf_tables nft_numgen"

kernel_version() {
  local meta deps
  meta=$(apt_cache show "linux-image-amd64/$SUITE" 2>/dev/null | awk '/^Depends:/{print; exit}')
  deps=$(echo "$meta" | grep -oE 'linux-image-[0-9][^ ,]*-amd64' | head -1)
  [ -n "$deps" ] || die "no linux-image-amd64 in $SUITE"
  case "${deps#linux-image-}" in
    "$WANT".*) ;;
    *) die "$SUITE's linux-image-amd64 is ${deps#linux-image-}, not Linux $WANT" ;;
  esac
  echo "${deps#linux-image-}"
}

fetch_kernel() {
  local kver=$1 dir=$2 dl pkgs p
  dl=$RUN/debs
  mkdir -p "$dl" "$dir/x"
  pkgs="linux-image-$kver"
  # 7.x splits the image into linux-binary-* (vmlinuz) and linux-modules-*.
  for p in "linux-binary-$kver" "linux-modules-$kver"; do
    apt_cache show "$p" >/dev/null 2>&1 && pkgs="$pkgs $p"
  done
  say "downloading $pkgs busybox-static"
  (cd "$dl" && apt_private download -qq $pkgs "busybox-static/bookworm" >/dev/null) ||
    die "apt-get download $pkgs failed"
  for p in "$dl"/*.deb; do dpkg-deb -x "$p" "$dir/x"; done
  local vmlinuz
  vmlinuz=$(find "$dir/x" -name "vmlinuz*" -type f | head -1)
  [ -n "$vmlinuz" ] || die "no vmlinuz in $pkgs"
  cp "$vmlinuz" "$dir/vmlinuz"
  cp "$dir/x/bin/busybox" "$dir/busybox"
  local moddir
  moddir=$(find "$dir/x" -type d -path "*/modules/$kver" | head -1)
  [ -n "$moddir" ] || die "no modules/$kver in $pkgs"
  select_modules "$moddir" "$dir/modules"
  rm -rf "$dir/x"
}

# Decompresses the named modules and their dependencies into $2, and writes $2/order (load
# order, dependencies first). A name without a .ko is built into the kernel.
select_modules() {
  local src=$1 out=$2
  mkdir -p "$out"
  find "$src" -name '*.ko*' >"$out/.index"
  : >"$out/order"
  local -A seen=()
  visit() {
    local name=$1 f deps d
    name=${name//-/_}
    [ -n "${seen[$name]:-}" ] && return
    seen[$name]=1
    f=$(grep -E "/${name//_/[_-]}\.ko(\.xz|\.zst|\.gz)?$" "$out/.index" | head -1 || true)
    [ -n "$f" ] || return 0
    case "$f" in
      *.xz) xz -dc "$f" >"$out/$name.ko" ;;
      *.zst) zstd -qdc "$f" >"$out/$name.ko" ;;
      *.gz) gzip -dc "$f" >"$out/$name.ko" ;;
      *) cp "$f" "$out/$name.ko" ;;
    esac
    deps=$(tr '\0' '\n' <"$out/$name.ko" | sed -n 's/^depends=//p' | head -1)
    for d in ${deps//,/ }; do visit "$d"; done
    echo "$name" >>"$out/order"
  }
  for m in $MODULES; do visit "$m"; done
  rm -f "$out/.index"
}

# --- initramfs: busybox and modules (cached); /init, host tools + libraries (per run) ---------
# /init is per run, so that editing scripts/testvm-init.sh (or a fresh checkout) does not make
# the cached kernel look stale.
base_initramfs() {
  local dir=$1 root=$RUN/base
  mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,mnt,run,etc,lib/modules}
  cp "$dir/busybox" "$root/bin/busybox"
  cp "$dir/modules/"*.ko "$dir/modules/order" "$root/lib/modules/"
  chmod +x "$root/bin/busybox"
  (cd "$root" && find . | "$dir/busybox" cpio -o -H newc 2>/dev/null | gzip -1 >"$dir/base.cpio.gz")
}

copy_with_libs() {
  local root=$1 bin f
  shift
  for bin in "$@"; do
    mkdir -p "$root$(dirname "$bin")"
    cp -L "$bin" "$root$bin"
    for f in $(ldd "$bin" 2>/dev/null | grep -oE '/[^ ]+'); do
      [ -e "$root$f" ] && continue
      mkdir -p "$root$(dirname "$f")"
      cp -L "$f" "$root$f"
    done
  done
}

tools_initramfs() {
  local dir=$1 root=$RUN/tools
  mkdir -p "$root"
  local ip nft ethtool
  ip=$(command -v ip) || die "no ip (iproute2) on the host"
  nft=$(command -v nft) || die "no nft (nftables) on the host"
  ethtool=$(command -v ethtool) || die "no ethtool on the host"
  copy_with_libs "$root" "$ip" "$nft" "$ethtool" "$SHARE/kxgw"
  rm -rf "${root:?}$SHARE"
  # At fixed paths: the guest calls them by path, since busybox sh prefers its own applets.
  mkdir -p "$root/usr/local/bin"
  for t in "$ip" "$nft" "$ethtool"; do mv "$root$t" "$root/usr/local/bin/"; done
  cp "$REPO/scripts/testvm-init.sh" "$root/init"
  chmod +x "$root/init"
  (cd "$root" && find . | "$dir/busybox" cpio -o -H newc 2>/dev/null | gzip -1 >"$RUN/tools.cpio.gz")
}

# --- bench report: the guest's raw rows into a markdown table (scripts/testvm_bench_report.py)
bench_report() {
  local out=${BENCH_OUT:-$REPO/bench/results} sha profile base qv
  sha=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
  case "$KXGW_BIN" in */release/*) profile=release ;; *) profile="debug (opt-level 1, dependencies 2)" ;; esac
  qv=$(qemu-system-x86_64 --version | head -1 | grep -oE '[0-9]+\.[0-9.]+' | head -1)
  mkdir -p "$out"
  base=$out/$(date -u +%Y-%m-%d)-vm-$KERNEL-$sha
  cp "$SHARE/bench.tsv" "$base.raw.tsv"
  python3 "$REPO/scripts/testvm_bench_report.py" --raw "$base.raw.tsv" --out "$base.md" \
    --machine "guest Linux $KVER ($SUITE) under QEMU $qv TCG, 2 vCPUs, 2 GiB (gateway and its NIC's interrupts on vCPU 0, consumer and its NIC's on vCPU 1); host: $(nproc) CPU(s) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), shared, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; kxgw $sha, $profile build" \
    --log "$(cat "$SHARE/bench.logbytes" 2>/dev/null || echo '?') bytes ($RECORDS records of 1000 B, 16 per batch, 1 partition, on tmpfs in the guest)" \
    --runs "$RUNS" || die "writing the bench report failed"
  say "bench table: $base.md"
  cat "$base.md"
}

# --- main ----------------------------------------------------------------------------------
T0=$(date +%s)
ensure_qemu
apt_setup
KVER=$(kernel_version)
KDIR=$CACHE/$KVER
if [ -s "$KDIR/vmlinuz" ] && [ -s "$KDIR/base.cpio.gz" ] && [ -s "$KDIR/modules/order" ] &&
  [ "$(cat "$KDIR/modules.list" 2>/dev/null)" = "$MODULES" ]; then
  say "guest kernel $KVER ($SUITE): cached in $KDIR"
else
  say "guest kernel $KVER ($SUITE): building into $KDIR"
  rm -rf "$KDIR"
  mkdir -p "$KDIR"
  fetch_kernel "$KVER" "$KDIR"
  base_initramfs "$KDIR"
  echo "$MODULES" >"$KDIR/modules.list"
fi

SHARE=$RUN/share
mkdir -p "$SHARE"
if [ -z "$KXGW_BIN" ]; then
  say "cargo build (kxgw${BENCH:+, kxgw-bench})"
  if [ -n "$BENCH" ]; then
    (cd "$REPO" && cargo build -q -p kxgw-cli -p kxgw-bench --bins) || die "cargo build failed"
  else
    (cd "$REPO" && cargo build -q --bin kxgw) || die "cargo build failed"
  fi
  KXGW_BIN=$REPO/target/debug/kxgw
fi
[ -x "$KXGW_BIN" ] || die "no kxgw binary at $KXGW_BIN"
# Without debug info: 9p under TCG is slow, and the guest needs only the code.
strip -o "$SHARE/kxgw" "$KXGW_BIN" 2>/dev/null || cp "$KXGW_BIN" "$SHARE/kxgw"
if [ -n "$BENCH" ]; then
  # The host bench's measuring tools (fetch-load, kafka-load), from the same build.
  BENCH_BIN=${KXGW_BENCH_BIN:-$(dirname "$KXGW_BIN")/kxgw-bench}
  if [ ! -x "$BENCH_BIN" ]; then
    say "cargo build (kxgw-bench)"
    (cd "$REPO" && cargo build -q -p kxgw-bench) || die "cargo build -p kxgw-bench failed"
    BENCH_BIN=$REPO/target/debug/kxgw-bench
  fi
  strip -o "$SHARE/kxgw-bench" "$BENCH_BIN" 2>/dev/null || cp "$BENCH_BIN" "$SHARE/kxgw-bench"
  cp "$REPO/scripts/testvm-bench.sh" "$SHARE/guest.sh"
  RUNS=${RUNS:-5}
  RECORDS=${BENCH_RECORDS:-50000}
else
  cp "$REPO/scripts/testvm-guest.sh" "$SHARE/guest.sh"
fi
# What both guest scripts share; they source it as /mnt/guest-setup.sh.
cp "$REPO/scripts/lib/testvm-guest-setup.sh" "$SHARE/guest-setup.sh"
cat >"$SHARE/params" <<EOF
NICS="$NICS"
EXPECT=$EXPECT
RECORDS=$RECORDS
STRATEGIES="$STRATEGIES"
BIND=$BIND
UDPCHECK="$UDPCHECK"
LOSSES="$LOSSES"
KVER=$KVER
RUNS=${RUNS:-1}
PATHS="$BENCH_PATHS"
EOF
tools_initramfs "$KDIR"
cat "$KDIR/base.cpio.gz" "$RUN/tools.cpio.gz" >"$RUN/initrd.gz"
T1=$(date +%s)
say "guest ready in $((T1 - T0)) s; booting ($NICS; expecting bind $EXPECT)"

NETDEVS=()
slot=1
hub=0
mac=1
for nic in $NICS; do
  for side in a b; do
    NETDEVS+=(-netdev "hubport,id=n$hub$side,hubid=$hub")
    # Each NIC behind its own PCIe root port: two igb on one bus clash on their SR-IOV slots.
    NETDEVS+=(-device "pcie-root-port,id=rp$slot,chassis=$slot,slot=$slot")
    case "$nic" in
      igb) NETDEVS+=(-device "igb,netdev=n$hub$side,bus=rp$slot,mac=52:54:00:12:00:0$mac") ;;
      # iommu_platform=on: without VIRTIO_F_ACCESS_PLATFORM virtio-net refuses zero-copy.
      virtio) NETDEVS+=(-device "virtio-net-pci,netdev=n$hub$side,bus=rp$slot,mac=52:54:00:12:00:0$mac,iommu_platform=on,disable-legacy=on") ;;
      *) die "unknown NIC model $nic (igb or virtio)" ;;
    esac
    slot=$((slot + 1))
    mac=$((mac + 1))
  done
  hub=$((hub + 1))
done

# no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can miss its
# ticks and panic ("IO-APIC + timer doesn't work!"); the emulated timer is fine.
# setpriv --pdeathsig: QEMU dies with this script even when the script is killed outright
# (SIGKILL leaves no trap to run), so no guest outlives the run that started it.
setpriv --pdeathsig KILL qemu-system-x86_64 -machine q35 -accel tcg,thread=multi -cpu max -smp 2 -m 2048 \
  -nodefaults -display none -no-reboot -serial "file:$RUN/console.log" \
  -kernel "$KDIR/vmlinuz" -initrd "$RUN/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=4 panic=-1 net.ifnames=0 no_timer_check" \
  -virtfs "local,path=$SHARE,mount_tag=share,security_model=none,id=share" \
  "${NETDEVS[@]}" &
QEMU_PID=$!
deadline=$((T1 + TIMEOUT))
while kill -0 "$QEMU_PID" 2>/dev/null; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    cat "$RUN/console.log" 2>/dev/null || true
    die "the guest did not finish within $TIMEOUT s"
  fi
  sleep 2
done
wait "$QEMU_PID" || true
QEMU_PID=
T2=$(date +%s)
cat "$RUN/console.log" 2>/dev/null | grep -v '^\s*$' || true
[ -s "$RUN/console.log" ] || die "QEMU wrote no console output: it did not start (see above)"
[ -f "$SHARE/result" ] || die "the guest did not report a result (it did not reach its test; console above)"
rc=$(cat "$SHARE/result")
say "guest ran for $((T2 - T1)) s (total $((T2 - T0)) s; kernel $KVER)"
if [ -n "$BENCH" ]; then
  [ -s "$SHARE/bench.tsv" ] || die "the guest wrote no bench rows (exit $rc)"
  bench_report
fi
[ "$rc" = 0 ] || die "guest checks failed (exit $rc); see the guest output above"
say "PASSED"
