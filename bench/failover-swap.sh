#!/usr/bin/env bash
# Swap time of `standin failover` (no reboot) for the Debian root and for a
# tree of at least 1 GiB, against what a user would do instead (copying the
# staged tree into place with `rsync -aHAX`). Goal: swap under 2 s and flat
# in the data size. Needs root and the cached Debian root
# (/var/cache/standin-test/debian-bookworm, made by `cargo test`).
#
#   bench/failover-swap.sh            # uses target/release/standin if built, else target/debug
#   STANDIN=path/to/standin RUNS=5 bench/failover-swap.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DEBIAN=${DEBIAN:-/var/cache/standin-test/debian-bookworm}
if [ -z "${STANDIN:-}" ]; then
  if [ -x target/release/standin ]; then STANDIN=target/release/standin; else STANDIN=target/debug/standin; fi
fi
[ "$(id -u)" = 0 ] || { echo "run as root (the swap keeps owners)"; exit 1; }
[ -d "$DEBIAN/etc" ] || { echo "missing $DEBIAN: run the tests once (cargo test --test failover_swap) to build it"; exit 1; }
command -v rsync >/dev/null || { echo "rsync is missing: apt-get install -y rsync"; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/standin-bench-swap.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

target_system() {
  local t=$1
  mkdir -p "$t"/boot/efi/EFI/debian "$t"/usr/lib/modules/6.1.0-target "$t"/usr/bin "$t"/etc/network "$t"/etc/default "$t"/var/log
  echo kernel >"$t"/boot/vmlinuz-6.1.0-target
  echo module >"$t"/usr/lib/modules/6.1.0-target/e1000.ko
  ln -s usr/lib "$t"/lib; ln -s usr/bin "$t"/bin
  printf 'UUID=1 / ext4 defaults 0 1\nUUID=2 /boot ext4 defaults 0 2\n' >"$t"/etc/fstab
  printf 'auto ens3\niface ens3 inet dhcp\n' >"$t"/etc/network/interfaces
  echo standby >"$t"/etc/hostname
}

# layout NAME EXTRA_BYTES → prints the target root; the staged tree is the Debian root (+ one big file)
layout() {
  local d="$WORK/$1" extra=$2
  rm -rf "$d"; mkdir -p "$d"
  target_system "$d/root"
  local st="$d/root/var/lib/standin"
  mkdir -p "$st/staging/bench" "$st/journal" "$st/snapshots" "$st/rollback"
  cp -a "$DEBIAN" "$st/staging/bench/root"
  if [ "$extra" -gt 0 ]; then
    mkdir -p "$st/staging/bench/root/srv"
    fallocate -l "$extra" "$st/staging/bench/root/srv/big.img"
  fi
  printf '{"format":1,"source_id":"bench","source_fingerprint":null,"last_applied_seq":1,"last_applied_created_unix_ms":null,"last_applied_unix_ms":null,"bytes_received":0,"mirror":null,"mirror_complete":true,"last_heartbeat":null,"warning":null,"paused":null}' >"$st/state.json"
  sync
  echo "$d/root"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

ms_now() { date +%s%3N; }

bench_one() {
  local name=$1 extra=$2 root swaps=() walls=() rs=()
  root=$(layout "$name" "$extra")
  local st="$root/var/lib/standin" size
  size=$(du -sb "$st/staging/bench/root" | cut -f1)
  for _ in $(seq "$RUNS"); do
    local t0 t1
    t0=$(ms_now)
    "$STANDIN" failover --state-dir "$st" --target-root "$root" --no-reboot --json >"$WORK/rep.json" 2>"$WORK/failover.log"
    t1=$(ms_now)
    walls+=($((t1 - t0)))
    swaps+=("$(grep -o '"swap_ms": [0-9]*' "$WORK/rep.json" | grep -o '[0-9]*$')")
    "$STANDIN" failover --rollback --state-dir "$st" --target-root "$root" >/dev/null 2>&1
    # the alternative: copy the staged tree into place
    rm -rf "$WORK/copy"; mkdir -p "$WORK/copy"; sync
    t0=$(ms_now)
    rsync -aHAX "$st/staging/bench/root/" "$WORK/copy/"
    sync
    t1=$(ms_now)
    rs+=($((t1 - t0)))
  done
  local sw wa r
  sw=$(printf '%s\n' "${swaps[@]}" | median)
  wa=$(printf '%s\n' "${walls[@]}" | median)
  r=$(printf '%s\n' "${rs[@]}" | median)
  printf '%-14s %10s MiB  swap %6s ms  command %6s ms  rsync -aHAX copy %7s ms  copy/swap %6.1fx\n' \
    "$name" "$((size >> 20))" "$sw" "$wa" "$r" "$(awk -v a="$r" -v b="$sw" 'BEGIN{print (b>0)?a/b:0}')"
  rm -rf "$WORK/$name" "$WORK/copy"
}

echo "standin failover swap (no reboot), median of $RUNS runs, binary $STANDIN"
bench_one debian-root 0
bench_one debian+1GiB $((1 << 30))
