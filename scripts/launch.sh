#!/usr/bin/env bash
# Starts N shoal peers on 127.0.0.1 and prints their URLs; Ctrl-C stops them all.
#
#   scripts/launch.sh [N] [--demo]
#
# Ports: UI 8080+i, sites 8000+i, p2p 9000+i (override the bases with
# SHOAL_HTTP_BASE, SHOAL_SITES_BASE, SHOAL_P2P_BASE). Data lives under
# .shoal/peer-<i>; every peer shares the admin token in .shoal/admin-token.
# --demo also deploys examples/demo-site (made into a git repo on the fly).
set -euo pipefail
cd "$(dirname "$0")/.."

n=1
demo=0
for arg in "$@"; do
  case "$arg" in
    --demo) demo=1 ;;
    ''|*[!0-9]*) echo "usage: scripts/launch.sh [N] [--demo]" >&2; exit 2 ;;
    *) n=$arg ;;
  esac
done
[ "$n" -ge 1 ] || { echo "N must be at least 1" >&2; exit 2; }

http_base=${SHOAL_HTTP_BASE:-8080}
sites_base=${SHOAL_SITES_BASE:-8000}
p2p_base=${SHOAL_P2P_BASE:-9000}

scripts/install-deps.sh runtime
echo "building shoal (release)…"
cargo build --release --quiet -p node --bin shoal
bin=target/release/shoal

mkdir -p .shoal
if [ ! -s .shoal/admin-token ]; then
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > .shoal/admin-token
  chmod 600 .shoal/admin-token
fi
token=$(cat .shoal/admin-token)

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping ${#pids[@]} peer(s)…"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

for ((i = 0; i < n; i++)); do
  args=(node --data ".shoal/peer-$i" --name "peer-$i" --listen 127.0.0.1
        --http-port $((http_base + i)) --sites-port $((sites_base + i)) --p2p-port $((p2p_base + i))
        --site-domain localhost --allow-local-repos)
  if [ "$i" -gt 0 ]; then args+=(--bootstrap "/ip4/127.0.0.1/tcp/$p2p_base"); fi
  SHOAL_ADMIN_TOKEN=$token "$bin" "${args[@]}" > ".shoal/peer-$i.log" 2>&1 &
  pids+=($!)
done

for ((i = 0; i < n; i++)); do
  url="http://127.0.0.1:$((http_base + i))"
  for _ in $(seq 1 100); do
    curl -fsS "$url/readyz" > /dev/null 2>&1 && break
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "peer-$i failed to start; its log:" >&2
      cat ".shoal/peer-$i.log" >&2
      exit 1
    fi
    sleep 0.1
  done
done

echo
echo "shoal is running with $n peer(s):"
for ((i = 0; i < n; i++)); do
  echo "  peer-$i  UI http://127.0.0.1:$((http_base + i))/   sites http://<name>.localhost:$((sites_base + i))/   log .shoal/peer-$i.log"
done
echo
echo "admin token: $token"
echo "deploy:      SHOAL_TOKEN=$token $bin deploy <git-url> --peer http://127.0.0.1:$http_base --wait"

if [ "$demo" = 1 ]; then
  repo=$PWD/.shoal/demo-site
  rm -rf "$repo" && cp -r examples/demo-site "$repo"
  git -C "$repo" init -q -b main
  git -C "$repo" add -A
  git -C "$repo" -c user.name=shoal -c user.email=demo@shoal.invalid commit -qm "demo site"
  # Waits until the site is live on every peer (the elected peer builds it,
  # the others fetch it from it and from each other).
  SHOAL_TOKEN=$token "$bin" deploy "$repo" --name demo --peer "http://127.0.0.1:$http_base" --wait
  for ((i = 0; i < n; i++)); do
    echo "  peer-$i serves it at http://demo.localhost:$((sites_base + i))/"
  done
fi

echo
echo "Ctrl-C stops every peer."
wait
