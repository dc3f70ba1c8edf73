#!/usr/bin/env bash
# Measures one peer's path from `POST /api/deployments` to the new version
# being served, for a plain HTML site, against a baseline in the same run:
# a shallow `git clone` of the same repository (the floor any deploy pays).
# Also prints the release binary size and the peer's idle RSS.
#
#   scripts/bench/deploy-latency.sh [RUNS]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-10}
cargo build --release --quiet -p node --bin shoal
bin=$PWD/target/release/shoal
work=$(mktemp -d)
peer_pid=
cleanup() { [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms() { awk -v ns="$1" 'BEGIN {printf "%.1f", ns/1e6}'; }

# A plain site of 20 pages and a stylesheet.
repo=$work/site
mkdir -p "$repo/pages"
for i in $(seq 1 20); do echo "<h1>page $i</h1>" > "$repo/pages/$i.html"; done
echo "body{font-family:sans-serif}" > "$repo/site.css"
echo "<h1>v0</h1>" > "$repo/index.html"
git -C "$repo" init -q -b main
git -C "$repo" add -A
git -C "$repo" -c user.name=b -c user.email=b@b commit -qm v0

SHOAL_ADMIN_TOKEN=bench "$bin" node --data "$work/data" --listen 127.0.0.1 --http-port 0 --sites-port 0 \
  --allow-local-repos --name bench > "$work/peer.log" 2>&1 &
peer_pid=$!
for _ in $(seq 1 200); do [ -s "$work/data/endpoints.json" ] && break; sleep 0.05; done
http=$(sed -E 's/.*"http":"([^"]+)".*/\1/' "$work/data/endpoints.json")
sites=$(sed -E 's/.*"sites":"([^"]+)".*/\1/' "$work/data/endpoints.json")
sleep 2
idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$peer_pid/status")

base=()
for i in $(seq 1 "$runs"); do
  t0=$(now)
  git clone -q --depth 1 "file://$repo" "$work/clone-$i"
  cp -r "$work/clone-$i" "$work/copy-$i"
  base+=($(( $(now) - t0 )))
done

lat=()
for i in $(seq 1 "$runs"); do
  echo "<h1>v$i</h1>" > "$repo/index.html"
  git -C "$repo" -c user.name=b -c user.email=b@b commit -qam "v$i"
  t0=$(now)
  curl -fsS -o /dev/null -X POST "http://$http/api/deployments" -H 'authorization: Bearer bench' \
    -H 'content-type: application/json' -d "{\"repo_url\":\"$repo\",\"name\":\"bench\"}"
  until curl -fsS "http://$sites/d/bench/" 2>/dev/null | grep -q "v$i<"; do :; done
  lat+=($(( $(now) - t0 )))
done
busy_rss=$(awk '/VmRSS/ {print $2}' "/proc/$peer_pid/status")

lat_med=$(printf '%s\n' "${lat[@]}" | median)
base_med=$(printf '%s\n' "${base[@]}" | median)
echo "runs:                         $runs"
echo "POST -> served, median:       $(ms "$lat_med") ms   (min $(ms "$(printf '%s\n' "${lat[@]}" | sort -n | head -1)"), max $(ms "$(printf '%s\n' "${lat[@]}" | sort -n | tail -1)"))"
echo "baseline git clone+copy:      $(ms "$base_med") ms"
echo "ratio deploy / baseline:      $(awk -v a="$lat_med" -v b="$base_med" 'BEGIN {printf "%.1f", a/b}')"
echo "release binary:               $(stat -c %s "$bin") bytes"
echo "idle RSS:                     ${idle_rss} KiB"
echo "RSS after $runs deploys:        ${busy_rss} KiB"
