# Helpers shared by the benchmarks that deploy through a peer's API.
# Sourced, not run. The sourcing script defines `api` (curl with the admin
# token, run wherever the peer can be reached) before calling these.

calc() { awk "BEGIN{printf \"%.2f\", $*}"; }

# Waits until the peer at URL sees N live peers, for at most a minute.
wait_mesh() { # URL N
  local t0; t0=$(date +%s)
  until [ "$(api "$1/api/peers" | python3 -c 'import json,sys; print(sum(p["alive"] for p in json.load(sys.stdin)))' 2>/dev/null)" = "$2" ]; do
    [ $(($(date +%s) - t0)) -lt 60 ] || { echo "peers did not form a mesh" >&2; return 1; }
    sleep 0.3
  done
}

# Deploys REPO as site NAME through the peer at URL; prints the deployment id.
deploy() { # URL REPO NAME
  api -X POST -H 'content-type: application/json' -d "{\"repo_url\":\"$2\",\"name\":\"$3\"}" \
    "$1/api/deployments" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}

# Waits (30 min at most) until deployment ID ends; prints its record, and
# fails unless it ended in `success`. Cheap on purpose (no interpreter per
# poll): the machine is shared with the peers being measured, and the times
# come from the record anyway.
wait_deployed() { # URL ID
  local t0 d status
  t0=$(date +%s)
  while :; do
    d=$(api "$1/api/deployments/$2" || true)
    status='?'
    [[ $d =~ \"status\":\"([A-Za-z]+)\" ]] && status=${BASH_REMATCH[1]}
    case "$status" in success | buildFailed | distributionFailed | canceled) break ;; esac
    [ $(($(date +%s) - t0)) -lt 1800 ] || { echo "timed out in $status" >&2; return 1; }
    sleep 0.5
  done
  d=$(api "$1/api/deployments/$2")
  [ "$status" = success ] || { echo "deployment ended $status: $d" >&2; return 1; }
  echo "$d"
}

# The index K of the peer named hK or pK that built the deployment RECORD.
builder_index() { # RECORD
  python3 -c '
import json,sys; d=json.load(sys.stdin)
print([r["name"] for r in d["replicas"] if r["peer"]==d["builder"]][0][1:])' <<<"$1"
}

# Peak RSS of process PID, in KiB.
peak_rss_kib() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }
