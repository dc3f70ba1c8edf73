#!/usr/bin/env bash
# Measures what the per-project build cache saves on a redeploy of the Vite
# + React + TypeScript fixture (tests/fixtures/vite-react-ts), one peer,
# against the same steps outside shoal in the same run: `npm ci && npm run
# build` in a fresh clone, with an empty npm cache (cold) and with the cache
# the previous run filled (warm, --prefer-offline). Cold and warm alternate;
# before every cold shoal run the project's cache is cleared through the API.
#
#   scripts/bench/build-cache.sh [RUNS]     (default 3)
#   SHOAL_BIN=target/debug/shoal scripts/bench/build-cache.sh   (no release build)
#
# Needs the npm registry (the install step downloads the packages).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
if [ -n "${SHOAL_BIN:-}" ]; then
  bin=$(realpath "$SHOAL_BIN")
else
  cargo build --release --quiet -p node --bin shoal
  bin=$PWD/target/release/shoal
fi
work=$(mktemp -d)
peer_pid=
cleanup() { [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

api() { curl -fsS -H 'authorization: Bearer bench' "$@"; }
# shellcheck source=lib.sh
. scripts/bench/lib.sh
now() { date +%s%N; }
secs() { awk -v ns="$1" 'BEGIN {printf "%.1f", ns/1e9}'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

repo=$work/site
cp -r tests/fixtures/vite-react-ts "$repo"
git -C "$repo" init -q -b main
git -C "$repo" add -A
git -C "$repo" -c user.name=b -c user.email=b@b commit -qm site

flags=()
[ -n "${SHOAL_COREPACK_NO_SIGNATURES:-}" ] && flags+=(--corepack-no-signatures)
SHOAL_ADMIN_TOKEN=bench "$bin" node --data "$work/data" --listen 127.0.0.1 --http-port 0 --sites-port 0 \
  --p2p-port 0 --allow-local-repos --name bench "${flags[@]}" > "$work/peer.log" 2>&1 &
peer_pid=$!
for _ in $(seq 1 200); do [ -s "$work/data/endpoints.json" ] && break; sleep 0.05; done
url=http://$(sed -E 's/.*"http":"([^"]+)".*/\1/' "$work/data/endpoints.json")
wait_mesh "$url" 1

# The "<step> finished in X s" figure of deployment ID's log.
step_secs() { # ID STEP
  api "$url/api/deployments/$1/logs" | python3 -c '
import json, sys
step = sys.argv[1]
lines = [l["message"] for l in json.load(sys.stdin) if l["step"] == step and l["message"].startswith(step + " finished in ")]
print(lines[-1].split()[3] if lines else "?")' "$2"
}

# One shoal deployment: prints "total install build" in seconds.
shoal_run() {
  local t0 id
  t0=$(now)
  id=$(deploy "$url" "$repo" vite)
  wait_deployed "$url" "$id" > /dev/null
  echo "$(secs $(($(now) - t0))) $(step_secs "$id" install) $(step_secs "$id" build)"
}

# The same steps by hand: prints "total install build" in seconds.
plain_run() { # NPM_CACHE EXTRA_FLAGS
  local dir t0 t1 t2
  dir=$(mktemp -d -p "$work")
  git clone -q "file://$repo" "$dir"
  t0=$(now)
  (cd "$dir" && CI=true npm ci --include=dev --no-audit --no-fund --cache "$1" $2 > /dev/null 2>&1)
  t1=$(now)
  (cd "$dir" && NODE_ENV=production npm run build > /dev/null 2>&1)
  t2=$(now)
  rm -rf "$dir"
  echo "$(secs $((t2 - t0))) $(secs $((t1 - t0))) $(secs $((t2 - t1)))"
}

declare -a sc sw pc pw
for i in $(seq 1 "$runs"); do
  api -X DELETE "$url/api/projects/vite/cache" > /dev/null 2>&1 || true
  sc+=("$(shoal_run)")
  sw+=("$(shoal_run)")
  rm -rf "$work/npm-cache"
  pc+=("$(plain_run "$work/npm-cache" "")")
  pw+=("$(plain_run "$work/npm-cache" --prefer-offline)")
  echo "run $i: shoal cold ${sc[-1]}, warm ${sw[-1]}; npm cold ${pc[-1]}, warm ${pw[-1]} (total install build, s)"
done

col() { for r in "$@"; do echo "$r"; done | awk -v k="$K" '{print $k}' | median; }
printf '\n%-28s %8s %8s %8s\n' "median of $runs runs (s)" total install build
for row in "shoal, cache cleared:sc" "shoal, same lockfile again:sw" "npm by hand, empty cache:pc" "npm by hand, warm cache:pw"; do
  name=${row%%:*}
  eval "set -- \"\${${row##*:}[@]}\""
  printf '%-28s %8s %8s %8s\n' "$name" "$(K=1 col "$@")" "$(K=2 col "$@")" "$(K=3 col "$@")"
done
