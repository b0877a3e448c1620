#!/usr/bin/env bash
# Benchmark: replication lag of standin's continuous replication against
# lsyncd (Debian package, default settings: rsync to a local directory),
# same steady write load, same run.
#
# A writer creates RATE small files per second for SECONDS seconds, each
# stamped with its write time (ns); a poller on the receiving side records
# when each file appears there (complete content). Prints lag p50/p99/max
# for both, the ratio, and the agent's peak memory (GNU time).
# Goal: standin lag p99 < 1 s.
#
# Usage: bench/replication-lag.sh [RATE] [SECONDS]   (default 200 30)
# Needs root (fanotify), lsyncd, rsync, GNU time, python3, and a release
# build (built here; STANDIN_BENCH_PROFILE=debug uses the debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-200}
secs=${2:-30}
profile=${STANDIN_BENCH_PROFILE:-release}
for t in lsyncd rsync python3; do
  command -v $t >/dev/null || { echo "$t is missing; install it with: apt-get install -y $t"; exit 1; }
done
[ -x /usr/bin/time ] || { echo "GNU time is missing; install it with: apt-get install -y time"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (fanotify needs it)"; exit 1; }
if [ "$profile" = release ]; then
  cargo build --release --quiet --bin standin -p standin -p standin-agent --example replicate
else
  cargo build --quiet --bin standin -p standin -p standin-agent --example replicate
fi
bin=$PWD/target/$profile
work=$(mktemp -d /var/tmp/standin-lag.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; sleep 0.5; rm -rf "$work" || true; }
trap cleanup EXIT

cat > "$work/writer.py" <<'PY'
import os, sys, time
root, rate, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(root, exist_ok=True)
n = rate * secs
start = time.monotonic()
for i in range(n):
    due = start + i / rate
    d = due - time.monotonic()
    if d > 0:
        time.sleep(d)
    with open(os.path.join(root, "f%06d" % i), "w") as f:
        f.write("%d\n" % time.time_ns())
        f.write("x" * 200 + "\n")
PY

cat > "$work/poller.py" <<'PY'
import os, sys, time
dst, n, limit, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
seen = {}
deadline = time.monotonic() + limit
while len(seen) < n and time.monotonic() < deadline:
    try:
        names = os.listdir(dst)
    except FileNotFoundError:
        names = []
    now = time.time_ns()
    for name in names:
        if name in seen or not name.startswith("f"):
            continue
        try:
            with open(os.path.join(dst, name)) as f:
                first = f.readline()
                rest = f.read()
        except OSError:
            continue
        if not first.endswith("\n") or len(rest) < 201:
            continue  # not complete yet
        seen[name] = (now - int(first)) / 1e9
    time.sleep(0.005)
lags = sorted(seen.values())
with open(out, "w") as f:
    f.write("%d %d\n" % (len(lags), n))
    for l in lags:
        f.write("%.6f\n" % l)
PY

pct() { # FILE P -> the P-th percentile of the lag lines (after the header)
  tail -n +2 "$1" | awk -v p="$2" '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} i=int(NR*p/100+0.999); if (i<1) i=1; if (i>NR) i=NR; printf "%.3f\n", a[i]}'
}
n=$((rate * secs))
limit=$((secs + 60))

# ---- standin ----
"$bin/standin" keys init --dir "$work/tid" >"$work/tfp"
"$bin/standin" keys init --dir "$work/aid" >"$work/afp"
mkdir -p "$work/src" "$work/agent"   # w/ is made by the writer, after the agent starts
"$bin/standin" target serve --listen 127.0.0.1:0 --state-dir "$work/state" --identity "$work/tid" \
  --trust "$(cat "$work/afp")" >"$work/serve.out" 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening on //p' "$work/serve.out")
# The agent stops by itself after the load (signals would reach GNU time, not it).
/usr/bin/time -f "%M" -o "$work/agent.maxrss" "$bin/examples/replicate" "$work/src" "$addr" "$work/aid" \
  "$(cat "$work/tfp")" "$work/agent" $((secs + 15)) >"$work/agent.stats" 2>"$work/agent.log" &
apid=$!
pids+=($apid)
sleep 2
python3 "$work/poller.py" "$work/state/staging/bench/root/w" "$n" "$limit" "$work/standin.lags" &
poll=$!
python3 "$work/writer.py" "$work/src/w" "$rate" "$secs"
wait $poll
wait $apid || true

# ---- lsyncd (default settings: -rsync, delay 15 s) ----
mkdir -p "$work/lsrc/w" "$work/ldst"
/usr/bin/time -f "%M" -o "$work/lsyncd.maxrss" timeout -s TERM $((secs + 30)) lsyncd -nodaemon -log scarce -rsync "$work/lsrc" "$work/ldst" \
  >"$work/lsyncd.log" 2>&1 &
lpid=$!
pids+=($lpid)
sleep 3
python3 "$work/poller.py" "$work/ldst/w" "$n" "$limit" "$work/lsyncd.lags" &
poll=$!
python3 "$work/writer.py" "$work/lsrc/w" "$rate" "$secs"
wait $poll
wait $lpid || true

read -r got_s want_s < <(head -1 "$work/standin.lags")
read -r got_l want_l < <(head -1 "$work/lsyncd.lags")
s50=$(pct "$work/standin.lags" 50); s99=$(pct "$work/standin.lags" 99); smax=$(pct "$work/standin.lags" 100)
l50=$(pct "$work/lsyncd.lags" 50); l99=$(pct "$work/lsyncd.lags" 99); lmax=$(pct "$work/lsyncd.lags" 100)
echo "load: $rate files/s for $secs s ($n files of ~220 bytes), build: $profile"
printf "%-8s %10s %10s %10s %12s %14s\n" tool "p50 (s)" "p99 (s)" "max (s)" "arrived" "peak RSS (MiB)"
printf "%-8s %10s %10s %10s %12s %14s\n" standin "$s50" "$s99" "$smax" "$got_s/$want_s" "$(tail -1 "$work/agent.maxrss" | awk '{printf "%.1f", $1/1024}')"
printf "%-8s %10s %10s %10s %12s %14s\n" lsyncd "$l50" "$l99" "$lmax" "$got_l/$want_l" "$(tail -1 "$work/lsyncd.maxrss" | awk '{printf "%.1f", $1/1024}')"
awk -v a="$s99" -v b="$l99" 'BEGIN { if (a > 0) printf "lag p99 ratio lsyncd/standin: %.1fx\n", b/a }'
awk -v a="$s99" 'BEGIN { if (a < 1.0) print "goal p99 < 1 s: met"; else print "goal p99 < 1 s: NOT met" }'
echo "agent counters: $(grep '^{' "$work/agent.log" | tail -1)"
