#!/usr/bin/env bash
# Make the benchmark tree (>= 1 GiB, >= 100k files) once:
# a copy of /usr/share, /usr/include and /usr/bin plus 50k generated small files.
# Usage: bench/make-big-tree.sh [DIR]   (default /var/tmp/standin-bench/big)
set -euo pipefail
dir=${1:-/var/tmp/standin-bench/big}
if [ -e "$dir/.complete" ]; then echo "$dir exists"; exit 0; fi
rm -rf "$dir.tmp"; mkdir -p "$dir.tmp/usr"
for d in share include bin; do cp -a "/usr/$d" "$dir.tmp/usr/"; done
gen="$dir.tmp/generated"
for i in $(seq 0 499); do
  mkdir -p "$gen/d$i"
  for j in $(seq 0 99); do
    # 1-8 KiB of semi-compressible text per file
    head -c $(( (i * 100 + j) % 8 * 1024 + 1024 )) /usr/share/common-licenses/GPL-3 > "$gen/d$i/f$j.txt" 2>/dev/null \
      || head -c 4096 /dev/urandom > "$gen/d$i/f$j.txt"
  done
done
touch "$dir.tmp/.complete"
rm -rf "$dir"; mv "$dir.tmp" "$dir"
echo "made $dir: $(du -sh "$dir" | cut -f1), $(find "$dir" | wc -l) entries"
