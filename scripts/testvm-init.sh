#!/bin/busybox sh
# /init of scripts/testvm.sh's guest: mounts, loads the test's modules, runs the guest test
# script from the 9p share, writes its exit status there and powers off.
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ulimit -l unlimited
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko 2>/dev/null
done
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /mnt; then
  sh /mnt/guest.sh
  echo $? >/mnt/result
  sync
  umount /mnt
else
  echo "init: mounting the 9p share failed"
fi
poweroff -f
