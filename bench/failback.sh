#!/usr/bin/env bash
# Benchmark: reverse protection after a failover. The old source A comes
# back; the failed-over machine B (A's system plus what changed while B
# stood in) must bring A up to date.
#
#   standin: `standin target seed` on A (its staging area from its own tree,
#            hard links or reflinks), then `standin protect --once` on B (a
#            checksum difference mirror against the seeded area).
#   rsync:   `rsync -aHAX --delete` from B to an rsync daemon whose module
#            is A's own tree copied with `cp -a` (rsync must not write into
#            A's running system; the copy is what the seed replaces), delta
#            transfer on.
#
# The change on B: a new 3 MiB file, 8 x 4 KiB rewritten in each of the 3
# largest files, 1% of the files appended to, a directory deleted. Prints
# medians of RUNS, bytes on the wire (protect --json counters; rsync
# --stats), bytes changed and the ratio, and the time to prepare A's side
# (seed vs cp -a).
#
# Usage: bench/failback.sh [RUNS]   (default 3; as root)
# STANDIN=path/to/standin to use another build (default: release, built here).
# Tree: a copy of the cached Debian root (tests make it).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
debian=${STANDIN_TEST_CACHE:-/var/cache/standin-test}/debian-bookworm
work=/var/tmp/standin-bench/failback
[ "$(id -u)" = 0 ] || { echo "run as root (owners and devices are mirrored)"; exit 1; }
command -v rsync >/dev/null || { echo "rsync is missing; install it with: apt-get install -y rsync"; exit 1; }
[ -d "$debian/etc" ] || { echo "no Debian root at $debian; run: cargo test --test image_roundtrip debian (as root)"; exit 1; }
if [ -z "${STANDIN:-}" ]; then cargo build --release --quiet; STANDIN=$PWD/target/release/standin; fi
standin=$STANDIN
rm -rf "$work"; mkdir -p "$work"
port=$((20000 + RANDOM % 20000)); rport=$((port + 1))
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }

"$standin" keys init --dir "$work/a-id" > "$work/a.fpr"
"$standin" keys init --dir "$work/b-id" > "$work/b.fpr"
cat > "$work/rsyncd.conf" <<CONF
pid file = $work/rsyncd.pid
use chroot = no
uid = root
gid = root
[dst]
    path = $work/rsync-dst
    read only = false
CONF

# A: the Debian root with its own boot loader; B: A plus the change.
a=$work/a; b=$work/b
cp -a "$debian" "$a"
mkdir -p "$a/boot/grub"; echo "# A's grub" > "$a/boot/grub/grub.cfg"; echo web-01 > "$a/etc/hostname"
cp -a "$a" "$b"
changed=0
head -c $((3 << 20)) /dev/urandom > "$b/usr/lib/libbench.so.1"; changed=$((changed + (3 << 20)))
find "$b" -type f -links 1 -printf '%s %p\n' | sort -n | tail -3 | cut -d' ' -f2- | while IFS= read -r f; do
  sz=$(stat -c %s "$f")
  for k in 1 2 3 4 5 6 7 8; do
    head -c 4096 /dev/urandom | dd of="$f" bs=4096 seek=$(( sz / 4096 * k / 9 )) conv=notrunc status=none
  done
done
changed=$((changed + 3 * 8 * 4096))
n=0
while IFS= read -r f; do printf 'changed while failed over\n' >> "$f"; n=$((n + 26)); done \
  < <(find "$b" -type f -links 1 | sort | awk 'NR % 100 == 7')
changed=$((changed + n))
rm -rf "$b/usr/share/doc/apt"
files=$(find "$a" -type f | wc -l); bytes=$(du -sb "$a" | cut -f1)
echo "A: Debian root, $files files, $((bytes >> 20)) MiB; changed on B: $changed bytes; $runs runs, medians; $(nproc) CPUs; $standin"
tar -C "$b" -cf - . | cat >/dev/null

for i in $(seq 1 "$runs"); do
  # standin: seed A's staging area, serve, protect back from B.
  rm -rf "$work/state" "$work/serve.out"   # no stale "listening" line
  t0=$(now)
  "$standin" target seed --state-dir "$work/state" --source-id web-01 --from-root "$a" --json > "$work/seed.json"
  t1=$(now)
  "$standin" target serve --listen "127.0.0.1:$port" --state-dir "$work/state" --identity "$work/a-id" \
    --trust "$(cat "$work/b.fpr")" --target-root "$a" --snapshot-every 0 > "$work/serve.out" 2>>"$work/serve.log" &
  dpid=$!; pids+=("$dpid")
  for _ in $(seq 1 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
  t2=$(now)
  "$standin" protect --target "127.0.0.1:$port" --identity "$work/b-id" --trust "$(cat "$work/a.fpr")" \
    --root "$b" --source-id web-01 --once --json --progress none > "$work/protect.json" 2>"$work/protect.err" \
    || { echo "standin protect failed:"; tail -20 "$work/protect.err"; exit 1; }
  t3=$(now)
  kill "$dpid"; wait "$dpid" 2>/dev/null || true
  python3 - "$work/protect.json" >> "$work/standin.bytes" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["mirror"]
assert m["complete"], m
print(m["bytes_sent"] + m["compare_bytes_sent"] + m["compare_bytes_received"])
PY
  awk -v a="$t1" -v b="$t0" 'BEGIN {printf "%.3f\n", a - b}' >> "$work/standin.prep"
  awk -v a="$t3" -v b="$t2" 'BEGIN {printf "%.3f\n", a - b}' >> "$work/standin.sync"

  # rsync: a copy of A as the module, then a delta transfer from B.
  rm -rf "$work/rsync-dst"
  t0=$(now); cp -a "$a" "$work/rsync-dst"; t1=$(now)
  rsync --daemon --no-detach --address=127.0.0.1 --port="$rport" --config="$work/rsyncd.conf" &
  rpid=$!; pids+=("$rpid"); sleep 0.5
  t2=$(now)
  rsync -aHAX --numeric-ids --delete --stats "$b/" "rsync://127.0.0.1:$rport/dst/" > "$work/rsync.out" 2>"$work/rsync.err" \
    || { echo "rsync failed:"; cat "$work/rsync.err"; exit 1; }
  t3=$(now)
  kill "$rpid"; wait "$rpid" 2>/dev/null || true
  s=$(grep 'Total bytes sent' "$work/rsync.out" | tr -dc 0-9); r=$(grep 'Total bytes received' "$work/rsync.out" | tr -dc 0-9)
  echo $((s + r)) >> "$work/rsync.bytes"
  awk -v a="$t1" -v b="$t0" 'BEGIN {printf "%.3f\n", a - b}' >> "$work/rsync.prep"
  awk -v a="$t3" -v b="$t2" 'BEGIN {printf "%.3f\n", a - b}' >> "$work/rsync.sync"
done

sb=$(median < "$work/standin.bytes"); rb=$(median < "$work/rsync.bytes")
sp=$(median < "$work/standin.prep"); rp=$(median < "$work/rsync.prep")
ss=$(median < "$work/standin.sync"); rs=$(median < "$work/rsync.sync")
printf "prepare A   standin target seed %6.2fs | cp -a %6.2fs | cp/seed %s\n" "$sp" "$rp" "$(awk -v a="$rp" -v b="$sp" 'BEGIN {printf "%.1f", a/b}')"
printf "reverse     standin protect     %6.2fs (%9s B on the wire, %.2fx changed) | rsync -aHAX %6.2fs (%9s B, %.2fx changed)\n" \
  "$ss" "$sb" "$(awk -v a="$sb" -v b="$changed" 'BEGIN {print a/b}')" "$rs" "$rb" "$(awk -v a="$rb" -v b="$changed" 'BEGIN {print a/b}')"
