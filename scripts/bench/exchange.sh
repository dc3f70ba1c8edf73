#!/usr/bin/env bash
# Block exchange on loopback, with no link limits: how its CPU cost grows
# with the artifact's size. One seed and FETCHERS peers in one process, each
# fetching from all the others at once; the store lives in TMPDIR (a tmpfs
# such as /dev/shm keeps the disk out of the figures). The smallest size is
# the baseline: CPU-seconds per GiB fetched should stay flat as the
# artifact grows (a pick costs about what it picks, not the artifact's size).
#
#   scripts/bench/exchange.sh [SIZES_MIB] [FETCHERS] [DIR]   (default "256 1024 2048" 3)
#
# EXCHANGE_TRANSPORT=tcp runs the peers over TCP only instead of QUIC.
#
# Needs about (FETCHERS + 2) x the largest size free in TMPDIR. With DIR,
# the seed's store stays in TMPDIR and the artifact and the fetchers' stores
# go to DIR: 1 x the size in TMPDIR, FETCHERS x the size in DIR (a 10 GiB
# artifact, say, with the seed in /dev/shm and one fetcher on disk).
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=${1:-256 1024 2048}
fetchers=${2:-3}
dir=${3:-}
cargo build --release --quiet -p p2p --example exchange_bench
bin=target/release/examples/exchange_bench
echo "# exchange on loopback: seed + $fetchers fetchers, TMPDIR=${TMPDIR:-/tmp}${dir:+, fetchers in $dir}, $(nproc) cores"
base=
for s in $sizes; do
  line=$("$bin" "$s" "$fetchers" $dir)
  per=$(sed -E 's/.*cpu_s_per_GiB_fetched=([0-9.]+).*/\1/' <<<"$line")
  base=${base:-$per}
  printf '%s  ratio_to_first=%.2f\n' "$line" "$(awk -v a="$per" -v b="$base" 'BEGIN {print a/b}')"
done
