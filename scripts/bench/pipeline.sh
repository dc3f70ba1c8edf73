#!/usr/bin/env bash
# The whole artifact path at growing sizes, on loopback with no link limits:
# build output -> pack -> cut into blocks -> fetch by every other peer ->
# unpack beside the served version -> served. The build step itself writes
# the big random file, so no git object holds it: what the builder's peak
# RSS shows is packing and chunking, not the clone. A fresh mesh of PEERS
# peers per size; the smallest size is the baseline for the RSS ratios
# (peak RSS should stay flat as the artifact grows).
#
#   scripts/bench/pipeline.sh [SIZES_MIB] [PEERS]   (default "256 2048" 2)
#
# Peers keep their data in TMPDIR (default /dev/shm): about 4 x the size for
# the builder (output, zip, blocks, unpacked site) and 2 x for each other.
# SHOAL_BIN runs that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=${1:-256 2048}
peers=${2:-2}
export TMPDIR=${TMPDIR:-/dev/shm}
if [ -n "${SHOAL_BIN:-}" ]; then
  bin=$SHOAL_BIN # a binary built beforehand
else
  cargo build --release --quiet -p node --bin shoal
  bin=$PWD/target/release/shoal
fi
work=$(mktemp -d)
pids=()
stop_peers() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
cleanup() { stop_peers; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
api() { curl -fsS --max-time 10 -H 'authorization: Bearer bench' "$@"; }
endpoint() { # PEER FIELD -> its address (the first, for p2p)
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(v[0] if isinstance(v, list) else v)' \
    "$work/d$1/endpoints.json" "$2"
}

run() { # SIZE_MIB -> key=value lines
  local size=$1 repo=$work/repo k
  rm -rf "$repo"; mkdir -p "$repo"
  echo "<h1>pipeline $size MiB</h1>" >"$repo/index.html"
  cat >"$repo/shoal.toml" <<EOF
[build]
command = "mkdir -p out && cp index.html out/ && head -c $((size * 1048576)) /dev/urandom > out/big.bin"
output = "out"
EOF
  git -C "$repo" init -q
  git -C "$repo" add .
  git -C "$repo" -c user.name=bench -c user.email=bench@localhost commit -qm site
  local boot=()
  for ((k = 0; k < peers; k++)); do
    SHOAL_ADMIN_TOKEN=bench "$bin" node --data "$work/d$k" --name "p$k" --listen 127.0.0.1 \
      --http-port 0 --sites-port 0 --p2p-port 0 "${boot[@]}" --allow-local-repos --unsafe-no-sandbox \
      --max-site-mb 16384 --distribution-timeout 30m >"$work/p$k.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 200); do [ -s "$work/d$k/endpoints.json" ] && break; sleep 0.05; done
    [ -s "$work/d$k/endpoints.json" ] || { echo "peer p$k did not start; see its log:" >&2; tail -5 "$work/p$k.log" >&2; exit 1; }
    [ "$k" = 0 ] && boot=(--bootstrap "$(endpoint 0 p2p)")
  done
  local http; http=$(endpoint 0 http)
  wait_mesh "http://$http" "$peers"
  local id d
  id=$(deploy "http://$http" "$repo" bench)
  d=$(wait_deployed "http://$http" "$id") || { echo "see $work/p0.log" >&2; exit 1; }
  # Every peer serves the same bytes.
  local want="" got
  for ((k = 0; k < peers; k++)); do
    got=$(curl -fsS -H 'host: bench.localhost' "http://$(endpoint "$k" sites)/big.bin" | sha256sum | cut -d' ' -f1)
    want=${want:-$got}
    [ "$got" = "$want" ] || { echo "peer p$k serves different bytes" >&2; exit 1; }
  done
  local builder rss="" rss_builder=0 hwm
  builder=$(builder_index "$d")
  for ((k = 0; k < peers; k++)); do
    hwm=$(peak_rss_kib "${pids[$k]}")
    if [ "$k" = "$builder" ]; then rss_builder=$hwm; else rss="$rss $hwm"; fi
  done
  echo "$d" | python3 -c '
import json, sys, datetime
d = json.load(sys.stdin)
ts = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
print("build_s=%.2f" % (ts(d["built_at"]) - ts(d["created_at"])))
print("distribute_s=%.2f" % (ts(d["updated_at"]) - ts(d["built_at"])))
print("artifact_bytes=%d" % d["replicas"][0]["total"])
'
  echo "rss_builder_kib=$rss_builder"
  echo "rss_kib=$(echo "$rss" | tr ' ' '\n' | sort -n | tail -1)"
  stop_peers
  rm -rf "$work"/d* "$repo"
}

val() { grep "^$2=" <<<"$1" | cut -d= -f2; }
echo "# artifact pipeline on loopback: $peers peers, TMPDIR=$TMPDIR, $(nproc) cores"
printf '%-9s %-14s %-9s %-13s %-19s %-19s\n' size_MiB artifact_bytes build_s distribute_s builder_rss_KiB fetcher_rss_KiB
base_b="" base_f=""
for s in $sizes; do
  out=$(run "$s")
  b=$(val "$out" rss_builder_kib); f=$(val "$out" rss_kib)
  base_b=${base_b:-$b}; base_f=${base_f:-$f}
  printf '%-9s %-14s %-9s %-13s %-19s %-19s\n' "$s" "$(val "$out" artifact_bytes)" "$(val "$out" build_s)" \
    "$(val "$out" distribute_s)" "$b (x$(calc "$b/$base_b"))" "$f (x$(calc "$f/$base_f"))"
done
