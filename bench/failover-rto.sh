#!/usr/bin/env bash
# RTO: the time from the source's death to the target booted as the source.
#
# The demo source (busybox, hostname demo-source) is protected from one
# network namespace to a target daemon in another (veth pair, 198.18.0.0/24,
# no default route). The agent sends a heartbeat every second; the target is
# configured with a SHORT heartbeat silence (SILENCE, 5 s by default; the
# product's default is 35 s, which adds 30 s to the first phase). Then:
#
#   kill -9 the agent and cut the link  (t0)
#   1. failover condition met           (the daemon's --on-failover-condition hook writes the time)
#   2. failover swap                     (`standin failover --no-reboot --yes`)
#   3. disk build                        (`standin image disk --root TARGET_ROOT`)
#   4. qemu (TCG) boot until the serial console shows the source's hostname
#
# and prints each phase and the total. Needs root, iproute2, qemu-system-x86,
# e2fsprogs, dosfstools, mtools, linux-image-amd64 (as the tests).
#
#   bench/failover-rto.sh            # target/release/standin if built, else target/debug
#   STANDIN=path/to/standin SILENCE=5 RUNS=3 bench/failover-rto.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-1}
SILENCE=${SILENCE:-5}
if [ -z "${STANDIN:-}" ]; then
  if [ -x target/release/standin ]; then STANDIN=target/release/standin; else STANDIN=target/debug/standin; fi
fi
STANDIN=$(realpath "$STANDIN")
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, ownership)"; exit 1; }
for t in ip:iproute2 qemu-system-x86_64:qemu-system-x86 mke2fs:e2fsprogs mkfs.vfat:dosfstools mcopy:mtools; do
  command -v "${t%%:*}" >/dev/null || { echo "${t%%:*} is missing: apt-get install -y ${t#*:}"; exit 1; }
done
ls /boot/vmlinuz-* >/dev/null 2>&1 || { echo "no kernel in /boot: apt-get install -y linux-image-amd64"; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/standin-bench-rto.XXXXXX")
NS=rto$$
DAEMON=""
AGENT=""
cleanup() {
  [ -n "$AGENT" ] && kill -9 "$AGENT" 2>/dev/null || true
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns del "$NS-s" 2>/dev/null || true
  ip netns del "$NS-t" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ms_now() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
fmt_s() { awk -v ms="$1" 'BEGIN {printf "%.1f s", ms / 1000}'; }

# The demo builds the source and the standby's own system (and checks the
# whole story once); its trees and identities are reused here.
echo "preparing: standin demo --no-boot --keep (builds the demo source and the standby's system)"
"$STANDIN" demo --dir "$WORK/demo" --keep --no-boot >"$WORK/demo.log" 2>&1 || {
  echo "standin demo failed:"; tail -30 "$WORK/demo.log"; exit 1; }
KS=$WORK/demo/keys/source; KT=$WORK/demo/keys/target
FS=$("$STANDIN" keys show --dir "$KS" 2>/dev/null || cat "$KS/fingerprint" 2>/dev/null || true)
FT=$("$STANDIN" keys show --dir "$KT" 2>/dev/null || cat "$KT/fingerprint" 2>/dev/null || true)
[ -n "$FS" ] && [ -n "$FT" ] || { echo "could not read the demo's fingerprints (standin keys show --dir $KS)"; exit 1; }

ip netns add "$NS-s"; ip netns add "$NS-t"
ip link add "${NS}a" type veth peer name "${NS}b"
ip link set "${NS}a" netns "$NS-s"; ip link set "${NS}b" netns "$NS-t"
ip -n "$NS-s" addr add 198.18.0.1/24 dev "${NS}a"
ip -n "$NS-t" addr add 198.18.0.2/24 dev "${NS}b"
for ns in "$NS-s" "$NS-t"; do ip -n "$ns" link set lo up; done
ip -n "$NS-s" link set "${NS}a" up; ip -n "$NS-t" link set "${NS}b" up

declare -a P1 P2 P3 P4 TOT
for run in $(seq "$RUNS"); do
  R=$WORK/run$run
  mkdir -p "$R"
  cp -a "$WORK/demo/source-root" "$R/source"
  cp -a "$WORK/demo/target-root" "$R/target"
  ST=$R/target/var/lib/standin
  rm -rf "$ST"; mkdir -p "$ST"
  ip -n "$NS-s" link set "${NS}a" up
  STANDIN_LOG=info ip netns exec "$NS-t" "$STANDIN" target serve --listen 198.18.0.2:6320 \
    --state-dir "$ST" --identity "$KT" --trust "$FS" --target-root "$R/target" \
    --heartbeat-silence "$SILENCE" --snapshot-every 0 \
    --on-failover-condition "date +%s%3N > $R/met" >"$R/daemon.out" 2>"$R/daemon.log" &
  DAEMON=$!
  for _ in $(seq 300); do grep -q "listening on" "$R/daemon.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "listening on" "$R/daemon.out" || { echo "the target daemon did not start:"; tail -20 "$R/daemon.log"; exit 1; }
  STANDIN_LOG=info ip netns exec "$NS-s" "$STANDIN" protect --target 198.18.0.2 --identity "$KS" \
    --trust "$FT" --root "$R/source" --state-dir "$R/agent" --source-id demo-source \
    --heartbeat-interval 1 >"$R/agent.out" 2>"$R/agent.log" &
  AGENT=$!
  st() { "$STANDIN" status --json --heartbeat-silence "$SILENCE" --state-dir "$ST" 2>/dev/null || true; }
  for _ in $(seq 600); do
    st | grep -q '"state": "protected"' && break
    kill -0 "$AGENT" 2>/dev/null || { echo "protect ended:"; tail -20 "$R/agent.log"; exit 1; }
    sleep 0.2
  done
  st | grep -q '"state": "protected"' || { echo "not protected after 120 s"; tail -20 "$R/agent.log"; exit 1; }
  # Change data; wait until it is applied.
  echo "written before the failure, run $run: $(date -u +%FT%T.%NZ)" >>"$R/source/srv/data/data.txt"
  WANT=$(sha256sum "$R/source/srv/data/data.txt" | cut -d' ' -f1)
  for _ in $(seq 600); do
    [ "$(sha256sum "$ST/staging/demo-source/root/srv/data/data.txt" 2>/dev/null | cut -d' ' -f1)" = "$WANT" ] && break
    sleep 0.1
  done

  # The source dies: kill -9 the agent and cut its link.
  t0=$(ms_now)
  kill -9 "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=""
  ip -n "$NS-s" link set "${NS}a" down
  for _ in $(seq 1200); do [ -s "$R/met" ] && break; sleep 0.05; done
  [ -s "$R/met" ] || { echo "the failover condition was not met within 60 s"; tail -20 "$R/daemon.log"; exit 1; }
  t1=$(cat "$R/met")
  st | grep -q '"failover_condition_met": true' || { echo "status does not say the condition is met"; st; exit 1; }
  kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=""

  "$STANDIN" failover --state-dir "$ST" --target-root "$R/target" --heartbeat-silence "$SILENCE" \
    --no-reboot --yes --json >"$R/failover.json" 2>"$R/failover.log"
  t2=$(ms_now)
  swap_ms=$(grep -o '"swap_ms": [0-9]*' "$R/failover.json" | grep -o '[0-9]*$' || echo "?")
  "$STANDIN" image disk --root "$R/target" -o "$R/rto.img" --progress none >"$R/disk.log" 2>&1
  t3=$(ms_now)
  "$STANDIN" image boot "$R/rto.img" --expect "host=demo-source" --timeout 600 >"$R/boot.log" 2>&1 || {
    echo "boot failed:"; tail -20 "$R/boot.log"; exit 1; }
  t4=$(ms_now)
  grep -q "data=$WANT" "$R/boot.log" || { echo "the console does not show the source's latest data digest $WANT"; grep -a STANDIN "$R/boot.log"; exit 1; }
  rm -f "$R/rto.img"

  P1+=($((t1 - t0))); P2+=($((t2 - t1))); P3+=($((t3 - t2))); P4+=($((t4 - t3))); TOT+=($((t4 - t0)))
  printf 'run %d: condition %s, failover %s (swap %s ms), disk %s, boot %s, RTO %s\n' "$run" \
    "$(fmt_s $((t1 - t0)))" "$(fmt_s $((t2 - t1)))" "$swap_ms" "$(fmt_s $((t3 - t2)))" "$(fmt_s $((t4 - t3)))" "$(fmt_s $((t4 - t0)))"
  rm -rf "$R"
done

m() { printf '%s\n' "$@" | median; }
echo
echo "RTO of the demo source (median of $RUNS run(s); heartbeat every 1 s, silence $SILENCE s):"
printf '  1. failover condition met after the kill  %s   (silence %s s + up to 1 s monitor tick)\n' "$(fmt_s "$(m "${P1[@]}")")" "$SILENCE"
printf '  2. failover (swap, --no-reboot)           %s\n' "$(fmt_s "$(m "${P2[@]}")")"
printf '  3. disk build (image disk --root)         %s\n' "$(fmt_s "$(m "${P3[@]}")")"
printf '  4. qemu TCG boot to the source hostname   %s\n' "$(fmt_s "$(m "${P4[@]}")")"
printf '  total RTO                                 %s\n' "$(fmt_s "$(m "${TOT[@]}")")"
printf '  with the default 35 s silence             about %s\n' "$(fmt_s $(( $(m "${TOT[@]}") + (35 - SILENCE) * 1000 )))"
