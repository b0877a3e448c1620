#!/usr/bin/env bash
# Benchmark: build time of a bootable GPT disk with `standin image disk`
# against the same disk made by hand (truncate + sgdisk + mke2fs -d +
# mkfs.vfat/mcopy + dd), on the same trees, in the same run.
#
# Trees: the demo-source recipe's tree (busybox) and a Debian root
# (/var/cache/standin-test/debian-bookworm, made by the tests'
# debian_root(): debootstrap --variant=minbase bookworm).
# Prints the median of RUNS runs of each, the ratio standin/by-hand, and
# peak memory (/usr/bin/time -v).
#
# Usage: bench/disk-build.sh [RUNS]   (STANDIN=path/to/standin to pick a binary)
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-3}
STANDIN=${STANDIN:-}
if [ -z "$STANDIN" ]; then
  if [ -x target/release/standin ]; then STANDIN=target/release/standin; else STANDIN=target/debug/standin; fi
fi
DEBIAN=${DEBIAN_ROOT:-/var/cache/standin-test/debian-bookworm}
for t in sgdisk mke2fs mkfs.vfat mcopy /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install -y gdisk e2fsprogs dosfstools mtools time)"; exit 1; }
done
[ -d "$DEBIAN/etc" ] || { echo "missing $DEBIAN; run the tests once (debian_root) or debootstrap --variant=minbase bookworm $DEBIAN"; exit 1; }

WORK=$(mktemp -d /var/tmp/standin-bench-disk.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
KERNEL=$(ls -v /boot/vmlinuz-* | tail -n 1)
INITRD=/boot/initrd.img-${KERNEL#/boot/vmlinuz-}

# The demo tree: build the recipe once, keep the tree by building from a copy.
echo "preparing the demo tree..."
mkdir -p "$WORK/demo-tree"
# The recipe's tree made with shell tools (busybox and the recipe's files),
# so both sides start from the same directory.
(
  set -e
  cd "$WORK/demo-tree"
  mkdir -p bin sbin usr/bin usr/sbin etc/standin dev proc sys run tmp srv/data
  cp /bin/busybox bin/busybox
  for a in $(busybox --list-full); do [ "$a" = bin/busybox ] || [ -e "$a" ] || ln -s /bin/busybox "$a"; done
  rm -f sbin/init; install -m 0755 "$OLDPWD/images/demo-source/init.sh" sbin/init
  echo demo-source > etc/hostname
  cp "$OLDPWD/images/demo-source/data.txt" srv/data/data.txt
  printf "AFTER=stay\nDATA_FILE=/srv/data/data.txt\n" > etc/standin/init.conf
)

# by_hand TREE OUT: the same layout standin makes (64 MiB ESP, root sized
# from the tree with the same headroom), with shell tools only.
by_hand() {
  set -e
  local tree=$1 out=$2
  local kib inodes root_mib esp_mib=64 disk_mib
  kib=$(du -sk --apparent-size "$tree" | cut -f1)
  inodes=$(find "$tree" | wc -l)
  root_mib=$(( (kib / 1024) * 5 / 4 + inodes * 512 / 1048576 + 48 ))
  disk_mib=$(( 1 + esp_mib + root_mib + 1 ))
  rm -f "$out"
  truncate -s "${disk_mib}M" "$out"
  sgdisk -q -n 1:2048:+${esp_mib}M -t 1:ef00 -c 1:ESP \
            -n 2:0:+${root_mib}M -t 2:4f68bce3-e8cd-4db1-96e7-fbcaf984b709 -c 2:root "$out"
  mke2fs -q -F -t ext4 -d "$tree" "$out.root" "${root_mib}M"
  dd if="$out.root" of="$out" bs=1M seek=$(( 1 + esp_mib )) conv=sparse,notrunc status=none
  rm -f "$out.root"
  mkfs.vfat -F 32 -s 1 -n ESP "$out.esp" -C $(( esp_mib * 1024 )) >/dev/null
  MTOOLS_SKIP_CHECK=1 mcopy -i "$out.esp" "$KERNEL" ::/vmlinuz
  MTOOLS_SKIP_CHECK=1 mcopy -i "$out.esp" "$INITRD" ::/initrd.img
  dd if="$out.esp" of="$out" bs=1M seek=1 conv=sparse,notrunc status=none
  rm -f "$out.esp"
  sync "$out"
}

with_standin() {
  "$STANDIN" image disk --root "$1" -o "$2" >/dev/null
}

# measure NAME CMD...: runs RUNS times; prints "median_seconds peak_kib".
measure() {
  local times=() mems=() i
  for i in $(seq 1 "$RUNS"); do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    local t0 t1
    t0=$(date +%s.%N)
    if ! /usr/bin/time -v -o "$WORK/time.txt" "$@" >"$WORK/out.txt" 2>&1; then
      echo "failed: $*" >&2; cat "$WORK/out.txt" >&2; exit 1
    fi
    t1=$(date +%s.%N)
    times+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')")
    mems+=("$(awk -F': ' '/Maximum resident/ {print $2}' "$WORK/time.txt")")
  done
  local med mem
  med=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  mem=$(printf '%s\n' "${mems[@]}" | sort -g | tail -n 1)
  echo "$med $mem"
}

export -f by_hand with_standin
export STANDIN KERNEL INITRD

printf "%-14s %12s %12s %8s %14s %14s\n" tree "standin s" "by hand s" ratio "standin KiB" "by hand KiB"
for name in demo debian; do
  case $name in
    demo) tree=$WORK/demo-tree ;;
    debian) tree=$DEBIAN ;;
  esac
  read -r s_t s_m < <(measure bash -c 'with_standin "$0" "$1"' "$tree" "$WORK/$name-standin.img")
  read -r h_t h_m < <(measure bash -c 'by_hand "$0" "$1"' "$tree" "$WORK/$name-hand.img")
  ratio=$(awk -v a="$s_t" -v b="$h_t" 'BEGIN {print a / b}')
  printf "%-14s %12.2f %12.2f %8.2f %14s %14s\n" "$name" "$s_t" "$h_t" "$ratio" "$s_m" "$h_m"
done
echo "(medians of $RUNS runs; ratio = standin / by hand, lower is better; standin also computes the root digest"
echo " of the tree and writes DISK.json, and its ESP holds systemd-boot; peak memory is the largest of the runs)"
