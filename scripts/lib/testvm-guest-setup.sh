# Sourced by both guest scripts of scripts/testvm.sh (testvm-guest.sh, the checks, and
# testvm-bench.sh, the bench), which copies it into the 9p share as /mnt/guest-setup.sh:
# what they share (busybox sh).

# By path: busybox sh runs its own (smaller) ip applet for a bare `ip`. Background jobs call
# $IP itself, so that $! is the process (not a subshell running the function).
IP=/usr/local/bin/ip
ip() { $IP "$@"; }

FAILS=0
log() { echo "guest: $*"; }
bad() {
  echo "guest: FAIL: $*"
  FAILS=$((FAILS + 1))
}

# Interfaces bound to driver $1.
ifaces_of() {
  for d in /sys/class/net/*; do
    drv=$(readlink "$d/device/driver" 2>/dev/null)
    [ "${drv##*/}" = "$1" ] && echo "${d##*/}"
  done
}
