#!/usr/bin/env bash
# Benchmark: `standin protect --once` (full and difference mirror) against
# rsync to an rsync daemon on 127.0.0.1 (`rsync -aHAX`, delta transfer on).
# Same data, same run, page cache warm for both. Prints medians of several
# runs, bytes on the wire (rsync --stats "Total bytes sent + received" vs
# standin's counters in `protect --json`), ratios (rsync time / standin
# time; goals: full >= 1.5, difference >= 3 with fewer bytes) and the
# agent's peak memory (/usr/bin/time -v), and the CPU time (user+sys) of
# each side: the agent and the target daemon, the rsync client and the
# rsync daemon (its forked children), so that runs on a loaded machine can
# still be compared.
#
# The full mirror starts from an empty replica each run (a fresh target
# state directory / rsync module). Each difference run first changes 1% of
# the regular files (appends) and 3 x 4 KiB inside each of the 3 largest
# files of the source copy, then both tools bring their replica up to date.
#
# The agent keeps its state directory (digest cache) between runs, as a
# installed agent does; the target daemon keeps running between the
# difference runs (its digest cache is in memory and in its state dir).
#
# Usage: bench/mirror.sh [RUNS]     (default 3; as root)
#   TREES="debian big" (default) picks the trees, KINDS="full diff" (default)
#   the rows: `KINDS=full TREES=debian bench/mirror.sh 1` is a quick check.
#   FULL_RUNS=N   full-mirror runs (default RUNS; the difference runs need one)
#   LINK=RATE (e.g. LINK=1gbit or LINK=200mbit) runs both tools over a shaped
#   link instead of loopback: two network namespaces the script makes, joined
#   by a veth pair (198.18.0.1 -> 198.18.0.2, no default route), a tc token
#   bucket (tbf) at RATE on both ends (this kernel has no netem, so no delay); the clients run in the source namespace, the
#   daemons in the target one. rsync then also runs with -z (zstd), as a user
#   on a slow link would, and the ratios use the faster rsync.
#   STANDIN_ARGS="--compress 3" passes more options to `standin protect`.
#   BENCH_LOG_DIR=DIR keeps each standin run's log (STANDIN_LOG=standin_agent=debug
#   shows the mirror's phases) and /usr/bin/time -v output there
# Trees: a copy of the cached Debian root (tests make it) and of the >= 1 GiB
# tree bench/make-big-tree.sh makes in /var/tmp/standin-bench/big.
# Needs: GNU time (apt-get install -y time), rsync, a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
full_runs=${FULL_RUNS:-$runs}
trees=${TREES:-debian big}
kinds=${KINDS:-full diff}
debian=${STANDIN_TEST_CACHE:-/var/cache/standin-test}/debian-bookworm
big=/var/tmp/standin-bench/big
work=${BENCH_WORK:-/var/tmp/standin-bench/mirror}   # BENCH_WORK: another work dir (two benches at once)
[ "$(id -u)" = 0 ] || { echo "run as root (owners and devices are mirrored)"; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time is missing; install it with: apt-get install -y time"; exit 1; }
command -v rsync >/dev/null || { echo "rsync is missing; install it with: apt-get install -y rsync"; exit 1; }
[ -d "$debian/etc" ] || { echo "no Debian root at $debian; run: cargo test --test image_roundtrip debian (as root)"; exit 1; }
bench/make-big-tree.sh "$big" >/dev/null
cargo build --release --quiet
standin=$PWD/target/release/standin
# Both tools read from one fresh ext4 filesystem and write to another, made
# with mkfs.ext4's defaults (journal on) and loop-mounted: two disks, as on
# two machines, and the source tree is its filesystem's root, as `/` is on a
# server (validation then reads used space from statvfs instead of walking
# the tree). Without a journal, ext4 skips every inode freed in the last
# minute when it allocates one (fs/ext4/ialloc.c, recently_deleted), so on a
# journal-less scratch filesystem each run pays for the trees the runs before
# it deleted: `cp -a` of the Debian tree took 0.7-1.9 s there against a steady
# 0.25 s here. BENCH_FS=host runs in BENCH_WORK on its own filesystem instead.
# The inode tables and journal are initialised at mkfs time (lazy init off):
# otherwise ext4lazyinit writes them in the background during the first runs.
mounts=()
make_fs() { # make_fs MOUNT_POINT SIZE: a fresh journaled ext4 there
  local mnt=$1 img=$1.img
  mountpoint -q "$mnt" && umount "$mnt"
  rm -f "$img"; mkdir -p "$mnt"
  truncate -s "$2" "$img" && mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$img" && mount -o loop "$img" "$mnt" \
    || { echo "could not make the benchmark filesystem $img (BENCH_FS=host skips it)"; exit 1; }
  mounts+=("$mnt")
}
loopfs=
if [ "${BENCH_FS:-loop}" = loop ]; then
  command -v mkfs.ext4 >/dev/null || { echo "mkfs.ext4 is missing; install it with: apt-get install -y e2fsprogs"; exit 1; }
  loopfs=$work
  mkdir -p "$(dirname "$work")"
  make_fs "$work.fs" 32G
  work=$work.fs/mirror
fi
rm -rf "$work"; mkdir -p "$work"
port=$((20000 + RANDOM % 20000)); rport=$((port + 1))
pids=()
addr=127.0.0.1 in_src=() in_tgt=() netns=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" 2>/dev/null || true
    rm -f "${mounts[i]}.img"; rmdir "${mounts[i]}" 2>/dev/null || true
  done
  for ns in "${netns[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  [ -n "${acct:-}" ] && [ -d "$acct" ] && { for t in $(cat "$acct/tasks" 2>/dev/null); do echo "$t" > /sys/fs/cgroup/cpuacct/tasks; done; rmdir "$acct" 2>/dev/null || true; }
}
trap cleanup EXIT
if [ -n "${LINK:-}" ]; then
  command -v tc >/dev/null || { echo "tc is missing; install it with: apt-get install -y iproute2"; exit 1; }
  ns_s=sbench-s$$ ns_t=sbench-t$$ veth=sbv$$
  netns=("$ns_s" "$ns_t")
  ip netns add "$ns_s" && ip netns add "$ns_t"
  ip link add "${veth}a" type veth peer name "${veth}b"
  ip link set "${veth}a" netns "$ns_s"; ip link set "${veth}b" netns "$ns_t"
  ip -n "$ns_s" addr add 198.18.0.1/24 dev "${veth}a"; ip -n "$ns_t" addr add 198.18.0.2/24 dev "${veth}b"
  for nd in "$ns_s ${veth}a" "$ns_t ${veth}b"; do
    set -- $nd
    ip -n "$1" link set lo up; ip -n "$1" link set "$2" up
    ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$LINK" burst 1mb latency 50ms \
      || { echo "could not shape the link to $LINK (tc tbf)"; exit 1; }
  done
  addr=198.18.0.2 in_src=(ip netns exec "$ns_s") in_tgt=(ip netns exec "$ns_t")
fi

# CPU seconds (user+sys) of a process, and of its waited-for children.
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{printf "%.3f\n", ($14 + $15) / t}' "/proc/$1/stat"; }
# The rsync daemon forks a process per connection (and that one forks the
# receiver), and does not wait for them in a way /proc counts: its CPU is
# read from a cgroup-v1 cpuacct group it is put in (children inherit it).
acct=/sys/fs/cgroup/cpuacct/standin-bench-$$
cpu_rsyncd() { if [ -r "$acct/cpuacct.usage" ]; then awk '{printf "%.3f\n", $1 / 1e9}' "$acct/cpuacct.usage"; else echo 0; fi; }

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }

"$standin" keys init --dir "$work/src-id" > "$work/src.fpr"
"$standin" keys init --dir "$work/tgt-id" > "$work/tgt.fpr"
troot=$work/target-system
mkdir -p "$troot/etc" "$troot/boot/grub"
cp "$debian/etc/os-release" "$troot/etc/os-release" 2>/dev/null || cp "$debian/usr/lib/os-release" "$troot/etc/os-release"
echo standby > "$troot/etc/hostname"; : > "$troot/boot/grub/grub.cfg"

cat > "$work/rsyncd.conf" <<CONF
pid file = $work/rsyncd.pid
use chroot = no
uid = root
gid = root
[dst]
    path = $work/rsync-dst
    read only = false
[dstz]
    path = $work/rsync-dstz
    read only = false
CONF
mkdir -p "$work/rsync-dst" "$work/rsync-dstz"
${in_tgt[@]+"${in_tgt[@]}"} rsync --daemon --no-detach --address="$addr" --port="$rport" --config="$work/rsyncd.conf" &
rsyncd_pid=$!; pids+=("$rsyncd_pid")
if mkdir "$acct" 2>/dev/null; then echo "$rsyncd_pid" > "$acct/tasks"
else echo "(no cpuacct cgroup at $acct: the rsync daemon's CPU shows as 0)"; fi

daemon_pid=
# The daemon takes no periodic snapshots here: the first one, right after
# the full mirror, hard-links the whole replica in the background (7 s for
# the big tree) and ran into rsync's timed run that follows. (What a
# snapshot costs the first difference mirror after it, copying out the
# files it changes, is not measured here.)
start_target() { # fresh state dir
  [ -n "$daemon_pid" ] && { kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; }
  # The old "listening" line must not be read before the new daemon's
  # redirection empties the file (a "Connection refused" flake).
  rm -rf "$work/state" "$work/serve.out"
  ${in_tgt[@]+"${in_tgt[@]}"} "$standin" target serve --listen "$addr:$port" --state-dir "$work/state" --identity "$work/tgt-id" \
    --trust "$(cat "$work/src.fpr")" --target-root "$troot" --snapshot-every 0 > "$work/serve.out" 2>>"$work/serve.log" &
  daemon_pid=$!; pids+=("$daemon_pid")
  for _ in $(seq 1 100); do grep -q listening "$work/serve.out" 2>/dev/null && return; sleep 0.1; done
  echo "target did not start:"; cat "$work/serve.log"; exit 1
}

# standin LABEL SRC : appends "seconds maxrss_kib wire_bytes" to $work/LABEL.times
run_standin() {
  local label=$1 src=$2
  daemon_cpu0=$(cpu_of "$daemon_pid")
  /usr/bin/time -v -o "$work/time.tmp" ${in_src[@]+"${in_src[@]}"} "$standin" protect --target "$addr:$port" --identity "$work/src-id" \
    --trust "$(cat "$work/tgt.fpr")" --root "$src" --state-dir "$work/agent-state" --source-id bench --once --json ${STANDIN_ARGS:-} > "$work/protect.json" 2>"$work/protect.err" \
    || { echo "standin $label failed:"; tail -20 "$work/protect.err"; cat "$work/protect.json"; exit 1; }
  # The target acknowledges a mirror's end once the replica is complete and
  # checked, then syncs it to disk in the background (state.json says
  # complete only after that). Wait for that sync, untimed, so it does not
  # run during the next tool's run; how long it took is reported beside
  # rsync + sync -f.
  local t0 t1; t0=$(date +%s.%N)
  for _ in $(seq 1 1200); do
    "$standin" status --json --state-dir "$work/state" 2>/dev/null | grep -q 'being written to disk' || break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  echo "$t0 $t1" | awk '{printf "%.3f\n", $2 - $1}' >> "$work/$label.sync"
  [ -n "${BENCH_LOG_DIR:-}" ] && { mkdir -p "$BENCH_LOG_DIR"; cp "$work/protect.err" "$BENCH_LOG_DIR/$label.$(date +%s%N).log"; cp "$work/time.tmp" "$BENCH_LOG_DIR/$label.$(date +%s%N).time"; }
  python3 - "$work/protect.json" "$work/time.tmp" >> "$work/$label.times" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1])); m = d["mirror"]
assert m["complete"], m
t = open(sys.argv[2]).read()
wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", t)
secs = (int(wall.group(1) or 0) * 3600) + int(wall.group(2)) * 60 + float(wall.group(3))
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
wire = m["bytes_sent"] + m["compare_bytes_sent"] + m["compare_bytes_received"]
user = float(re.search(r"User time \(seconds\): ([\d.]+)", t).group(1))
system = float(re.search(r"System time \(seconds\): ([\d.]+)", t).group(1))
print(f"{secs:.3f} {rss} {wire} {m.get('files_hashed', -1)} {m['compare_bytes_sent'] + m['compare_bytes_received']} {user + system:.3f}", end=" ")
PY
  echo "$(awk -v a="$(cpu_of "$daemon_pid")" -v b="$daemon_cpu0" 'BEGIN {printf "%.3f", a - b}')" >> "$work/$label.times"
}

run_rsync() { # run_rsync LABEL SRC [MODULE [EXTRA_OPTION]]
  local label=$1 src=$2 module=${3:-dst}
  local rd0; rd0=$(cpu_rsyncd)
  /usr/bin/time -f "%e %M %U %S" -o "$work/time.tmp" ${in_src[@]+"${in_src[@]}"} rsync -aHAX ${4:-} --numeric-ids --delete --stats "$src/" \
    "rsync://$addr:$rport/$module/" > "$work/rsync.out" 2>"$work/rsync.err" \
    || { echo "rsync $label failed:"; cat "$work/rsync.err"; exit 1; }
  # rsync does not sync; standin's target syncs the replica after it
  # acknowledged the mirror's end. Both are waited for untimed (so neither
  # runs into the next run) and reported as "until on disk".
  local t0 t1; t0=$(date +%s.%N); sync -f "$work/rsync-$module"; t1=$(date +%s.%N)
  echo "$t0 $t1" | awk '{printf "%.3f\n", $2 - $1}' >> "$work/$label.sync"
  local s r
  s=$(grep 'Total bytes sent' "$work/rsync.out" | tr -dc 0-9)
  r=$(grep 'Total bytes received' "$work/rsync.out" | tr -dc 0-9)
  local e m u y; read -r e m u y < "$work/time.tmp"
  # columns: seconds maxrss wire - - client_cpu server_cpu (as standin's)
  echo "$e $m $((s + r)) - - $(awk -v a="$u" -v b="$y" 'BEGIN {printf "%.3f", a + b}') $(awk -v a="$(cpu_rsyncd)" -v b="$rd0" 'BEGIN {printf "%.3f", a - b}')" >> "$work/$label.times"
}

# A reference for a copy with a sender and a receiver on this machine: a
# local `tar -c | tar -x` pipe between the same two filesystems (no network,
# no checksums, no sync).
run_floor() {
  local label=$1 src=$2 t0 t1
  rm -rf "$work/floor-dst"; mkdir -p "$work/floor-dst"
  t0=$(date +%s.%N)
  tar -C "$src" --xattrs --xattrs-include='*' --acls -cf - . | tar -C "$work/floor-dst" --xattrs --xattrs-include='*' --acls --numeric-owner -xpf -
  t1=$(date +%s.%N)
  echo "$t0 $t1" | awk '{printf "%.3f\n", $2 - $1}' >> "$work/$label.times"
  rm -rf "$work/floor-dst"
}

mutate() { # 1% of regular files (a different 1% each round) + 3 x 4 KiB in the 3 largest
  local src=$1 round=$2
  find "$src" -type f -links 1 -printf '%s %p\n' | sort -k2 > "$work/files"
  awk -v r="$round" 'NR % 100 == r' "$work/files" | cut -d' ' -f2- | while IFS= read -r f; do
    printf 'changed in round %s\n' "$round" >> "$f"; done
  sort -n "$work/files" | tail -3 | cut -d' ' -f2- | while IFS= read -r f; do
    sz=$(stat -c %s "$f")
    for frac in 1 5 9; do
      head -c 4096 /dev/urandom | dd of="$f" bs=4096 seek=$(( sz / 4096 * frac / 10 )) conv=notrunc status=none
    done
  done
}

report() {
  local name=$1 kind=$2
  local s r sm sw rw sc
  s=$(cut -d' ' -f1 "$work/$name-$kind-standin.times" | median)
  r=$(cut -d' ' -f1 "$work/$name-$kind-rsync.times" | median)
  sm=$(cut -d' ' -f2 "$work/$name-$kind-standin.times" | sort -n | tail -1)
  sw=$(cut -d' ' -f3 "$work/$name-$kind-standin.times" | median)
  rw=$(cut -d' ' -f3 "$work/$name-$kind-rsync.times" | median)
  sc=$(cut -d' ' -f5 "$work/$name-$kind-standin.times" | median)
  local sa st ra rt
  sa=$(cut -d' ' -f6 "$work/$name-$kind-standin.times" | median)
  st=$(cut -d' ' -f7 "$work/$name-$kind-standin.times" | median)
  ra=$(cut -d' ' -f6 "$work/$name-$kind-rsync.times" | median)
  rt=$(cut -d' ' -f7 "$work/$name-$kind-rsync.times" | median)
  printf "%-7s %-10s standin %7.2fs (agent peak %4d MiB, %10s B on the wire, %s B comparing) | rsync -aHAX %7.2fs (%10s B) | speed rsync/standin %5s | bytes standin/rsync %s\n" \
    "$name" "$kind" "$s" "$((sm / 1024))" "$sw" "$sc" "$r" "$rw" \
    "$(awk -v a="$r" -v b="$s" 'BEGIN {printf "%.2f", a/b}')" "$(awk -v a="$sw" -v b="$rw" 'BEGIN {printf "%.2f", a/b}')"
  if [ -s "$work/$name-$kind-rsyncz.times" ]; then
    local z zw
    z=$(cut -d' ' -f1 "$work/$name-$kind-rsyncz.times" | median)
    zw=$(cut -d' ' -f3 "$work/$name-$kind-rsyncz.times" | median)
    printf "%-7s %-10s rsync -aHAXz (zstd) %7.2fs (%10s B) | speed rsync-z/standin %5s | bytes standin/rsync-z %s | faster rsync/standin %s\n" \
      "$name" "$kind" "$z" "$zw" "$(awk -v a="$z" -v b="$s" 'BEGIN {printf "%.2f", a/b}')" \
      "$(awk -v a="$sw" -v b="$zw" 'BEGIN {printf "%.2f", a/b}')" "$(awk -v a="$r" -v z="$z" -v b="$s" 'BEGIN {m = a < z ? a : z; printf "%.2f", m/b}')"
  fi
  if [ -s "$work/$name-$kind-floor.times" ]; then
    local f rs
    f=$(median < "$work/$name-$kind-floor.times")
    rs=$(median < "$work/$name-$kind-rsync.sync")
    printf "%-7s %-10s reference: local tar -c | tar -x %.2fs (rsync/tar %s)\n" \
      "$name" "$kind" "$f" "$(awk -v a="$r" -v b="$f" 'BEGIN {printf "%.2f", a/b}')"
  fi
  if [ -s "$work/$name-$kind-rsync.sync" ] && [ -s "$work/$name-$kind-standin.sync" ]; then
    local rs ss
    rs=$(median < "$work/$name-$kind-rsync.sync")
    ss=$(median < "$work/$name-$kind-standin.sync")
    printf "%-7s %-10s until on disk: standin + the target's background sync %.2fs | rsync + sync -f %.2fs | ratio %s\n" \
      "$name" "$kind" "$(awk -v a="$s" -v b="$ss" 'BEGIN {printf "%.2f", a+b}')" "$(awk -v a="$r" -v b="$rs" 'BEGIN {printf "%.2f", a+b}')" \
      "$(awk -v a="$r" -v b="$rs" -v c="$s" -v d="$ss" 'BEGIN {printf "%.2f", (a+b)/(c+d)}')"
  fi
  printf "%-7s %-10s CPU user+sys: standin agent %ss + target daemon %ss | rsync client %ss + rsync daemon %ss; load %s\n" \
    "$name" "$kind" "$sa" "$st" "$ra" "$rt" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

bench_tree() {
  local name=$1 tree=$2 src=$work/src-$1
  if [ -n "$loopfs" ]; then
    src=$loopfs.src-$name
    make_fs "$src" 16G
    rmdir "$src/lost+found"
    cp -a "$tree/." "$src/"
  else
    cp -a "$tree" "$src"
  fi
  mkdir -p "$src/etc"; [ -f "$src/etc/os-release" ] || cp "$troot/etc/os-release" "$src/etc/os-release"
  local files bytes
  files=$(find "$src" -type f | wc -l); bytes=$(du -sb "$src" | cut -f1)
  echo "$name: $files files, $((bytes >> 20)) MiB"
  tar -C "$src" -cf - . | cat >/dev/null   # warm the page cache for both
  for i in $(seq 1 "$full_runs"); do
    rm -rf "$work/agent-state"   # a full mirror starts cold on both sides
    start_target
    run_standin "$name-full-standin" "$src"
    rm -rf "$work/rsync-dst"; mkdir -p "$work/rsync-dst"
    run_rsync "$name-full-rsync" "$src"
    if [ -n "${LINK:-}" ]; then
      rm -rf "$work/rsync-dstz"; mkdir -p "$work/rsync-dstz"
      run_rsync "$name-full-rsyncz" "$src" dstz -z
    fi
    if [ -z "${LINK:-}" ]; then run_floor "$name-full-floor" "$src"; fi
  done
  if [[ " $kinds " == *" diff "* ]]; then
    for i in $(seq 1 "$runs"); do
      mutate "$src" "$i"
      run_standin "$name-diff-standin" "$src"
      run_rsync "$name-diff-rsync" "$src"
      if [ -n "${LINK:-}" ]; then run_rsync "$name-diff-rsyncz" "$src" dstz -z; fi
    done
  fi
  [ -n "${BENCH_LOG_DIR:-}" ] && cp "$work/serve.log" "$BENCH_LOG_DIR/$name-serve.log"
  if [ -n "$loopfs" ]; then umount "$src" && rm -f "$src.img" && rmdir "$src"; else rm -rf "$src"; fi
  rm -rf "$work/rsync-dst" "$work/rsync-dstz" "$work/state"; mkdir -p "$work/rsync-dst" "$work/rsync-dstz"
  [[ " $kinds " == *" full "* ]] && report "$name" full
  [[ " $kinds " == *" diff "* ]] && report "$name" diff
  return 0
}

echo "standin protect --once vs rsync -aHAX to an rsync daemon on $addr${LINK:+ over a link shaped to $LINK}; $runs runs, medians; $(nproc) CPUs"
for t in $trees; do
  case $t in
    debian) bench_tree debian "$debian" ;;
    big) bench_tree big "$big" ;;
    *) echo "unknown tree $t (debian, big)"; exit 2 ;;
  esac
done
rm -rf "$work"
