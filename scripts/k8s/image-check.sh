#!/usr/bin/env bash
# Checks the Dockerfile's image where no Docker daemon runs: builds the
# release binary as stage 1 does (`--locked`), makes the runtime stage's
# base with debootstrap (the suite named by its FROM line), runs stage 2's
# RUN, COPY, USER and ENV instructions as written, then starts the
# image's entrypoint as its USER on a read-only root (a tmpfs /tmp, a
# /data volume, no capabilities) with the StatefulSet's sandbox setting,
# and deploys a Hugo site, an npm site and a probe that looks for the
# peer's data; each must be served.
#
#   sudo scripts/k8s/image-check.sh
#
# Needs root (debootstrap, mounts) and Debian's mirror; takes a few minutes.
# Not part of scripts/test.sh. Cleans up on any exit (KEEP=1 keeps $W).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
W=${W:-/var/tmp/shoal-image-check}
PORT=${PORT:-18080}
SITES=${SITES:-18000}
PY=/usr/bin/python3
[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }

PEER=""
cleanup() {
  [ -n "$PEER" ] && kill "$PEER" 2>/dev/null && wait "$PEER" 2>/dev/null || true
  for m in dev/pts dev proc; do umount -l "$W/rootfs/$m" 2>/dev/null || true; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

say() { echo "# $*"; }

say "stage 1: cargo build --release --locked"
cargo build --release --locked --quiet -p node --bin shoal

# Stage 2, read from the Dockerfile: its base, then its instructions.
mkdir -p "$W"
$PY - "$ROOT/Dockerfile" >"$W/stage2.tsv" <<'EOF'
import sys
lines, cur = [], ""
for raw in open(sys.argv[1]):
    raw = raw.rstrip("\n")
    if not cur and (not raw.strip() or raw.lstrip().startswith("#")):
        continue
    if raw.endswith("\\"):
        cur += raw[:-1] + " "
        continue
    lines.append(cur + raw)
    cur = ""
stages = [i for i, l in enumerate(lines) if l.startswith("FROM ")]
for l in lines[stages[-1]:]:
    op, _, rest = l.partition(" ")
    print(op + "\t" + rest.strip())
EOF
base=$(awk -F'\t' '$1 == "FROM" {print $2}' "$W/stage2.tsv")
case "$base" in debian:*-slim) suite=${base#debian:}; suite=${suite%-slim} ;; *) echo "unexpected base $base" >&2; exit 1 ;; esac
say "stage 2: FROM $base (debootstrap $suite)"
debootstrap --variant=minbase "$suite" "$W/rootfs" http://deb.debian.org/debian >"$W/debootstrap.log" 2>&1 ||
  { tail -5 "$W/debootstrap.log" >&2; exit 1; }
cp /etc/resolv.conf "$W/rootfs/etc/resolv.conf"
mount -t proc proc "$W/rootfs/proc"
mount --bind /dev "$W/rootfs/dev"
user="" ; envs=()
while IFS=$'\t' read -r op arg; do
  case "$op" in
    FROM) ;;
    RUN)
      say "RUN ${arg:0:100}…"
      chroot "$W/rootfs" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive /bin/sh -c "$arg" >"$W/run.log" 2>&1 || { tail -20 "$W/run.log" >&2; exit 1; } ;;
    COPY)
      # COPY --from=build /usr/local/bin/shoal /usr/local/bin/shoal
      set -- $arg
      [ "$1" = "--from=build" ] && [ "$2" = /usr/local/bin/shoal ] || { echo "unexpected COPY $arg" >&2; exit 1; }
      install -m 0755 "$ROOT/target/release/shoal" "$W/rootfs$3" ;;
    USER) user=$arg ;;
    ENV) for kv in $arg; do envs+=("$kv"); done ;;
    EXPOSE | VOLUME | ENTRYPOINT | CMD) ;;
    *) echo "the check does not know $op" >&2; exit 1 ;;
  esac
done <"$W/stage2.tsv"
entry=$(awk -F'\t' '$1 == "ENTRYPOINT" {print $2}' "$W/stage2.tsv" | tr -d '[]",')
cmd=$(awk -F'\t' '$1 == "CMD" {print $2}' "$W/stage2.tsv" | tr -d '[]",')
say "image: USER $user, ENTRYPOINT $entry, CMD $cmd, $(du -sxh "$W/rootfs" | cut -f1)"
for tool in git node npm hugo bwrap; do
  chroot "$W/rootfs" /bin/sh -c "command -v $tool" >/dev/null || { echo "$tool is missing from the image" >&2; exit 1; }
done

# Three repositories, on a read-only mount.
mkdir -p "$W/repos"
repo() {
  local d="$W/repos/$1"; shift
  mkdir -p "$d"
  (cd "$d" && "$@" && git init -q -b main && git add -A &&
    git -c user.name=check -c user.email=check@localhost commit -qm "$(basename "$d")")
}
repo hugo sh -c 'printf "title = \"hugo in the image\"\n" > hugo.toml && mkdir -p layouts content &&
  printf "<h1>{{ .Site.Title }}</h1>\n" > layouts/index.html'
repo npm sh -c 'printf "{\"name\":\"npm-site\",\"version\":\"1.0.0\",\"scripts\":{\"build\":\"node build.js\"}}\n" > package.json &&
  printf "require(\"fs\").mkdirSync(\"dist\",{recursive:true});require(\"fs\").writeFileSync(\"dist/index.html\",\"<h1>npm in the image</h1>\");\n" > build.js'
repo probe sh -c 'printf "[build]\ncommand = \"mkdir -p out && (ls /data >/dev/null 2>&1 && echo visible || echo hidden) > out/index.html\"\noutput = \"out\"\n" > shoal.toml'

# The pod: read-only root, tmpfs /tmp, a /data volume owned by the user,
# the repositories read-only (and the user's: git refuses others'), no
# capabilities, the entrypoint as USER.
mkdir -p "$W/data"
chown -R "$user" "$W/data" "$W/repos"
say "starting the entrypoint as $user on a read-only root"
export USER_ID=$user
unshare -m --propagation private /bin/sh -c '
  set -e
  R=$1; W=$2; shift 2
  mount --bind "$R" "$R"
  mount -o remount,bind,ro "$R"
  mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
  mount --bind "$W/data" "$R/data"
  mkdir -p "$R/tmp/repos"
  mount --bind "$W/repos" "$R/tmp/repos"
  mount -o remount,bind,ro "$R/tmp/repos"
  exec chroot "$R" setpriv --reuid="${USER_ID%%:*}" --regid="${USER_ID##*:}" --clear-groups \
    --inh-caps=-all --bounding-set=-all -- "$@"
' check "$W/rootfs" "$W" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/data "${envs[@]}" SHOAL_HTTP_PORT="$PORT" SHOAL_SITES_PORT="$SITES" SHOAL_ADMIN_TOKEN=check \
  SHOAL_ALLOW_LOCAL_REPOS=true SHOAL_SANDBOX=landlock \
  "$entry" $cmd >"$W/peer.log" 2>&1 &
PEER=$!
api() { curl -sf --max-time 5 -H 'authorization: Bearer check' "$@"; }
for _ in $(seq 1 100); do api "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
api "http://127.0.0.1:$PORT/healthz" >/dev/null || { tail -20 "$W/peer.log" >&2; exit 1; }
grep -o 'isolation=.*' "$W/peer.log" | head -1 | sed 's/^/# /'
status() { api "http://127.0.0.1:$PORT/api/deployments/$1" | $PY -c 'import json,sys; print(json.load(sys.stdin)["status"])'; }
for site in hugo npm probe; do
  id=$(api -X POST -H 'content-type: application/json' \
    -d "{\"repo_url\":\"/tmp/repos/$site\",\"name\":\"$site\"}" "http://127.0.0.1:$PORT/api/deployments" |
    $PY -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  s=queued
  for _ in $(seq 1 600); do
    s=$(status "$id" || echo "?")
    case "$s" in success | buildFailed | distributionFailed | canceled) break ;; esac
    sleep 0.5
  done
  body=$(curl -sf --max-time 5 -H "host: $site.localhost" "http://127.0.0.1:$SITES/" || true)
  say "$site: $s; serves: $(echo "$body" | tr -d '\n' | cut -c1-60)"
  if [ "$s" != success ]; then
    api "http://127.0.0.1:$PORT/api/deployments/$id/logs" | $PY -c 'import json,sys; [print("#   " + l["message"]) for l in json.load(sys.stdin)[-8:]]' >&2
    exit 1
  fi
done
curl -sf -H 'host: probe.localhost' "http://127.0.0.1:$SITES/" | grep -q hidden ||
  { echo "a build saw the peer's data" >&2; exit 1; }
say "image check passed"
