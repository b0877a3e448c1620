#!/usr/bin/env bash
# Benchmark: `standin image build --level 1` against the pipeline a user
# would otherwise run: `tar -I 'zstd -1 -T0' -cf` plus sha256sum of every
# file (find | xargs -P). Same data, same run, page cache warm for both.
# Prints medians of several runs, the ratio (standin / pipeline; goal <= 1.0)
# and peak memory (goal < 100 MiB for 150k files).
#
# Usage: bench/image-build.sh [RUNS]     (default 3)
# Trees: the cached Debian root (tests make it) and a >= 1 GiB, >= 100k file
# tree made once by bench/make-big-tree.sh in /var/tmp/standin-bench/big.
# Needs: GNU time (apt-get install -y time), zstd, a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
debian=${STANDIN_TEST_CACHE:-/var/cache/standin-test}/debian-bookworm
big=/var/tmp/standin-bench/big
out=/var/tmp/standin-bench/out
[ -x /usr/bin/time ] || { echo "GNU time is missing; install it with: apt-get install -y time"; exit 1; }
command -v zstd >/dev/null || { echo "zstd is missing; install it with: apt-get install -y zstd"; exit 1; }
[ -d "$debian/etc" ] || { echo "no Debian root at $debian; run: cargo test --test image_roundtrip debian (as root)"; exit 1; }
bench/make-big-tree.sh "$big" >/dev/null
cargo build --release --quiet
standin=$PWD/target/release/standin
mkdir -p "$out"
cpus=$(nproc)

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }

# run LABEL CMD... : appends "seconds maxrss_kib" to $out/LABEL.times
run() {
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$out/time.tmp" "$@" >/dev/null 2>"$out/$label.stderr" \
    || { echo "$label failed:"; cat "$out/$label.stderr"; exit 1; }
  cat "$out/time.tmp" >> "$out/$label.times"
}

bench_tree() {
  local name=$1 tree=$2
  local files entries bytes
  files=$(find "$tree" -type f | wc -l); entries=$(find "$tree" | wc -l)
  bytes=$(du -sb "$tree" | cut -f1)
  rm -f "$out/$name-standin.times" "$out/$name-pipeline.times"
  # Warm the page cache for both tools alike.
  tar -C "$tree" -cf - . | cat >/dev/null
  for i in $(seq 1 "$runs"); do
    rm -f "$out/s.tar.zst" "$out/s.manifest.json" "$out/s.tar.zst.sha256" "$out/p.tar.zst" "$out/p.sums"
    run "$name-standin" "$standin" image build --root "$tree" -o "$out/s.tar.zst" --level 1 --progress none
    run "$name-pipeline" bash -c "tar -C '$tree' -I 'zstd -1 -T0' -cf '$out/p.tar.zst' . && cd '$tree' && find . -type f -print0 | xargs -0 -r -P$cpus -n 512 sha256sum > '$out/p.sums'"
  done
  local s p sm pm ratio
  s=$(cut -d' ' -f1 "$out/$name-standin.times" | median)
  p=$(cut -d' ' -f1 "$out/$name-pipeline.times" | median)
  sm=$(cut -d' ' -f2 "$out/$name-standin.times" | sort -n | tail -1)
  pm=$(cut -d' ' -f2 "$out/$name-pipeline.times" | sort -n | tail -1)
  ratio=$(awk -v a="$s" -v b="$p" 'BEGIN {printf "%.2f", a/b}')
  printf "%-8s %8s files %8s entries %7s MiB | standin %6.2fs %5d MiB peak | tar+zstd+sha256sum %6.2fs %5d MiB peak | ratio %s | archive %s MiB vs %s MiB\n" \
    "$name" "$files" "$entries" "$((bytes >> 20))" "$s" "$((sm / 1024))" "$p" "$((pm / 1024))" "$ratio" \
    "$(( $(stat -c %s "$out/s.tar.zst") >> 20 ))" "$(( $(stat -c %s "$out/p.tar.zst") >> 20 ))"
}

echo "standin image build --level 1 vs tar -I 'zstd -1 -T0' + sha256sum (xargs -P$cpus); $runs runs, medians; $cpus CPUs"
bench_tree debian "$debian"
bench_tree big "$big"
