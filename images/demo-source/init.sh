#!/bin/sh
# init of the standin demo source server (busybox).
# Mounts the kernel filesystems, then prints on the console
#   STANDIN-BOOTED host=<hostname> data=<sha256 of the data file>
# computed now from the tree (so a failed-over copy of this tree shows the
# source's values), then keeps running or powers off as
# /etc/standin/init.conf says (AFTER=stay|poweroff).
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH

# Debian's initramfs moves /proc, /sys, /dev and /run into the root; mount
# what is missing (booted without an initramfs).
[ -r /proc/mounts ] || mount -t proc proc /proc
mounted() { grep -q " $1 " /proc/mounts; }
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mounted /run || mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /dev/pts /dev/shm

AFTER=stay
DATA_FILE=/srv/data/data.txt
[ -r /etc/standin/init.conf ] && . /etc/standin/init.conf

[ -r /etc/hostname ] && hostname "$(cat /etc/hostname)"
ip link set lo up 2>/dev/null

if [ -r "$DATA_FILE" ]; then
    data=$(sha256sum "$DATA_FILE" | cut -d ' ' -f 1)
else
    data=missing
fi
echo "STANDIN-BOOTED host=$(hostname) data=$data"

if [ "$AFTER" = poweroff ]; then
    sync
    poweroff -f
fi
# Stay up as PID 1: reap children forever.
while :; do
    sleep 3600 &
    wait
done
