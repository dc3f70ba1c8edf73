#!/usr/bin/env bash
# Artifact distribution benchmark. N hosts in network namespaces (the
# netbench testbed in scripts/bench/netbench: one bridge, every host shaped
# to RATE up and RATE down, DELAY one-way), one `shoal` peer per host. One
# deployment of a site holding a SIZE_MB random file; timed from `built` to
# `success`, with the p50 and last peer's completion, the bytes on the wire,
# the builder's upload and each peer's peak RSS. In the same testbed and the
# same run: the bound S/B, nginx central fan-out and aria2c BitTorrent.
#
#   sudo scripts/bench/distribution.sh [N=8] [SIZE_MB=200] [RATE=100mbit] [DELAY=10ms]
#
# Env: SKIP_BASELINES=1 runs shoal only; SMALL_MB (20) is the size of a
# first, small run whose peak RSS is compared with the big one's; API_HOST
# (0) is the host whose peer takes the deployment and is polled; BOOT_HOST
# (0) the one every other peer bootstraps from; SHOAL_LOG
# (info) is the peers' log filter (their logs are kept in $LOGS); SHOAL_BIN
# runs that binary instead of building one; REGIONS (1) splits the hosts
# into that many `--region`s, in order (h0.. in r0), and counts the block
# bytes that crossed between them; REGION_DELAY (say 50ms) is then the
# one-way delay between hosts of different regions instead of DELAY (the
# baselines run with it too). TCP_CC (say cubic) is the TCP congestion
# control of every host, shoal's and the baselines' alike, instead of the
# machine's default (set as the default while the script runs, since
# namespaces take it when they are made; put back on exit). TRANSPORT=tcp
# runs the peers with --no-quic (TCP + noise + yamux only) instead of the
# default, QUIC beside TCP.
# Needs root (namespaces, tc, iptables); installs its packages with apt.
# Cleans up its namespaces, processes and files on any exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${1:-8}
SIZE=${2:-200}
RATE=${3:-100mbit}
DELAY=${4:-10ms}
SMALL=${SMALL_MB:-20}
# The peer the script deploys on and polls.
API=${API_HOST:-0}
# The peer every other one bootstraps from.
BOOT=${BOOT_HOST:-0}
REGIONS=${REGIONS:-1}
TRANSPORT=${TRANSPORT:-quic}
case $TRANSPORT in
  quic) TRANSPORT_ARGS=() ;;
  tcp) TRANSPORT_ARGS=(--no-quic) ;;
  *) echo "TRANSPORT must be quic or tcp" >&2; exit 1 ;;
esac
export NB_PREFIX=${NB_PREFIX:-shb}
export NB_NET=${NB_NET:-10.78.0}
NB=$ROOT/scripts/bench/netbench/netbench.sh
W=/dev/shm/shoal-distribution-bench
# Peer logs of the last run are kept here.
LOGS=${LOGS:-/tmp/shoal-distribution-logs}
PIDS=()

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
for c in iperf3 nginx aria2c mktorrent iptables; do
  command -v "$c" >/dev/null || { "$NB" deps >/dev/null; break; }
done
if [ -n "${SHOAL_BIN:-}" ]; then
  SHOAL=$SHOAL_BIN # a binary built beforehand (to compare two builds)
else
  cargo build --release --quiet -p node --bin shoal
  SHOAL=$ROOT/target/release/shoal
fi

ns() { echo "$NB_PREFIX-h$1"; }
hip() { echo "$NB_NET.$(($1 + 1))"; }
inns() { local n=$1; shift; ip netns exec "$n" "$@"; }
api() { inns "$(ns "$API")" curl -sf --max-time 5 -H "authorization: Bearer bench" "$@"; }
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh

stop_peers() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
REGION_DELAY_PID=""
CC_BEFORE=""
cleanup() {
  stop_peers
  [ -n "$REGION_DELAY_PID" ] && kill "$REGION_DELAY_PID" 2>/dev/null
  "$NB" teardown >/dev/null 2>&1 || true
  [ -n "$CC_BEFORE" ] && sysctl -qw net.ipv4.tcp_congestion_control="$CC_BEFORE"
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

if [ -n "${TCP_CC:-}" ]; then
  grep -qw "$TCP_CC" /proc/sys/net/ipv4/tcp_available_congestion_control || modprobe "tcp_$TCP_CC" 2>/dev/null ||
    { echo "TCP congestion control '$TCP_CC' is not available here" >&2; exit 1; }
  CC_BEFORE=$(sysctl -n net.ipv4.tcp_congestion_control)
  sysctl -qw net.ipv4.tcp_congestion_control="$TCP_CC"
fi
echo "# shoal distribution benchmark: N=$N size=${SIZE}MiB rate=$RATE delay=$DELAY ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores)"
"$NB" setup "$N" "$RATE" "$DELAY"
CC=$(inns "$(ns 0)" sysctl -n net.ipv4.tcp_congestion_control)
STATE=/dev/shm/netbench-$NB_PREFIX
if [ -n "${REGION_DELAY:-}" ] && [ "$REGIONS" -gt 1 ]; then
  # Packets between regions wait in a second user-space queue instead.
  grep -q DELAY_MODE=nfqueue "$STATE/env" || { echo "REGION_DELAY needs netbench's nfqueue delay" >&2; exit 1; }
  rdus=$(awk -v s="$REGION_DELAY" 'BEGIN{ if (s ~ /^[0-9.]+ms$/) printf "%d", s * 1000; else exit 1 }') ||
    { echo "bad REGION_DELAY '$REGION_DELAY' (say 50ms)" >&2; exit 1; }
  for ((r = 0; r < REGIONS; r++)); do
    first=-1 last=-1
    for ((k = 0; k < N; k++)); do
      [ $((k * REGIONS / N)) = "$r" ] && { [ "$first" -lt 0 ] && first=$k; last=$k; }
    done
    inns "$NB_PREFIX-sw" iptables -I FORWARD 1 -m iprange --src-range "$(hip "$first")-$(hip "$last")" \
      ! --dst-range "$(hip "$first")-$(hip "$last")" -j NFQUEUE --queue-num 1 --queue-bypass
  done
  ip netns exec "$NB_PREFIX-sw" "$STATE/nbdelay" 1 "$rdus" >"$STATE/nbdelay-regions.log" 2>&1 &
  REGION_DELAY_PID=$!
  echo "# between regions: $REGION_DELAY one-way; ping h0 -> h$((N - 1)): $(inns "$(ns 0)" ping -c 3 -i 0.2 -q "$(hip $((N - 1)))" | awk -F/ '/^rtt/{print $5}') ms RTT"
fi
BOUND=$("$NB" bound "$N" "$SIZE" "$RATE" | awk '/^bound/{print $4}')
CENTRAL=- BT=-
if [ "${SKIP_BASELINES:-0}" != 1 ]; then
  CENTRAL=$("$NB" central "$N" "$SIZE" | tee /dev/stderr | awk '/^central/{for(i=1;i<=NF;i++) if($i=="after") print $(i+1)}')
  BT=$("$NB" bittorrent "$N" "$SIZE" | tee /dev/stderr | awk '/^bittorrent/{for(i=1;i<=NF;i++) if($i=="after") print $(i+1)}')
fi

# A git repository holding the site: an index page and the random file.
make_repo() { # SIZE_MB -> repo dir
  local size=$1 repo=$W/repo-$1
  rm -rf "$repo"; mkdir -p "$repo"
  head -c "$((size * 1048576))" /dev/urandom >"$repo/big.bin"
  echo "<h1>bench $size MiB</h1>" >"$repo/index.html"
  git -C "$repo" init -q
  git -C "$repo" add .
  git -C "$repo" -c user.name=bench -c user.email=bench@localhost commit -qm site
  echo "$repo"
}

tx_total() { # bytes sent by every host's eth0 so far, and by each; then packets (skbs)
  local k t sum=0 each="" pkts=0
  for ((k = 0; k < N; k++)); do
    t=$(inns "$(ns "$k")" cat /sys/class/net/eth0/statistics/tx_bytes)
    sum=$((sum + t)); each="$each $t"
    pkts=$((pkts + $(inns "$(ns "$k")" cat /sys/class/net/eth0/statistics/tx_packets)))
  done
  echo "$sum$each $pkts"
}

cpu_sample() { awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }
cpu_busy() { awk -v a="$1" -v b="$2" 'BEGIN{split(a,x," ");split(b,y," ");t=y[1]-x[1];i=y[2]-x[2];printf "%.0f", (t > 0 ? 100 * (t - i) / t : 0)}'; }
metric() { # host name -> value
  inns "$(ns "$1")" curl -sf --max-time 5 "http://$(hip "$1"):8080/metrics" | awk -v n="$2" '$1==n{print $2}'
}

run_shoal() { # SIZE_MB -> prints key=value lines
  local size=$1 repo k id d url
  repo=$(make_repo "$size")
  for ((k = 0; k < N; k++)); do
    local boot=()
    [ "$k" != "$BOOT" ] && boot=(--bootstrap "/ip4/$(hip "$BOOT")/tcp/9000")
    mkdir -p "$W/d$k"
    ip netns exec "$(ns "$k")" env SHOAL_ADMIN_TOKEN=bench SHOAL_LOG=${SHOAL_LOG:-info} "$SHOAL" node \
      --data "$W/d$k" --name "h$k" --listen "$(hip "$k")" --http-port 8080 --sites-port 8000 \
      --p2p-port 9000 "${boot[@]}" "${TRANSPORT_ARGS[@]}" --region "r$((k * REGIONS / N))" --allow-local-repos --unsafe-no-sandbox \
      --max-site-mb 8192 --max-repo-mb 8192 --distribution-timeout 30m >"$W/h$k.log" 2>&1 &
    PIDS+=($!)
  done
  url="http://$(hip "$API"):8080"
  wait_mesh "$url" "$N" || { echo "see $W/h0.log" >&2; tail -5 "$W/h0.log" >&2; exit 1; }
  local before cpu0; before=$(tx_total); cpu0=$(cpu_sample)
  id=$(deploy "$url" "$repo" bench)
  d=$(wait_deployed "$url" "$id")
  local after cpu1; after=$(tx_total); cpu1=$(cpu_sample)
  # Every peer serves the same bytes.
  local want; want=$(sha256sum "$repo/big.bin" | cut -d' ' -f1)
  for ((k = 0; k < N; k++)); do
    local got; got=$(inns "$(ns "$k")" curl -sf -H 'host: bench.localhost' "http://$(hip "$k"):8000/big.bin" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "peer h$k serves different bytes" >&2; exit 1; }
  done
  local builder_host served fetched=0 far=0 rss="" rss_builder=0
  builder_host=$(builder_index "$d")
  served=$(metric "$builder_host" shoal_blocks_served_bytes_total)
  for ((k = 0; k < N; k++)); do
    fetched=$((fetched + $(metric "$k" shoal_blocks_fetched_bytes_total | cut -d. -f1)))
    local f; f=$(metric "$k" shoal_blocks_fetched_far_bytes_total | cut -d. -f1)
    far=$((far + ${f:-0}))
    local hwm; hwm=$(peak_rss_kib "${PIDS[$k]}")
    if [ "$k" = "$builder_host" ]; then rss_builder=$hwm; else rss="$rss $hwm"; fi
  done
  echo "$d" | python3 -c '
import json, sys, datetime
d = json.load(sys.stdin)
ts = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
built = ts(d["built_at"])
done = sorted(ts(r["updated_at"]) - built for r in d["replicas"] if r["peer"] != d["builder"])
print("total=%.2f" % (ts(d["updated_at"]) - built))
print("p50=%.2f" % done[len(done) // 2])
print("last=%.2f" % done[-1])
print("first=%.2f" % done[0])
print("artifact_bytes=%d" % d["replicas"][0]["total"])
'
  local b a; b=($before); a=($after)
  echo "builder_host=$builder_host"
  echo "wire=$((a[0] - b[0]))"
  echo "packets=$((a[N + 1] - b[N + 1]))"
  echo "builder_wire=$((a[builder_host + 1] - b[builder_host + 1]))"
  echo "builder_served=${served%.*}"
  echo "fetched=$fetched"
  echo "far=$far"
  echo "rss_kib=$(echo "$rss" | tr ' ' '\n' | sort -n | tail -1)"
  echo "rss_builder_kib=$rss_builder"
  echo "cpu_busy=$(cpu_busy "$cpu0" "$cpu1")"
  local ticks=0 t each=""
  for ((k = 0; k < N; k++)); do
    t=$(awk '{print $14 + $15}' "/proc/${PIDS[$k]}/stat"); ticks=$((ticks + t))
    each="$each h$k=$(calc "$t/$(getconf CLK_TCK)")"
  done
  local quic=0 tcp=0 v
  for ((k = 0; k < N; k++)); do
    v=$(metric "$k" 'shoal_p2p_connections{transport="quic"}'); quic=$((quic + ${v:-0}))
    v=$(metric "$k" 'shoal_p2p_connections{transport="tcp"}'); tcp=$((tcp + ${v:-0}))
  done
  echo "conns=quic $quic, tcp $tcp"
  echo "shoal_cpu_s=$(calc "$ticks/$(getconf CLK_TCK)")"
  echo "shoal_cpu_each=${each# }"
  mkdir -p "$LOGS/$size"; cp "$W"/h*.log "$LOGS/$size/"
  api "http://$(hip "$API"):8080/api/deployments/$id/logs" >"$LOGS/$size/deployment.json" || true
  stop_peers
  rm -rf "$W"/d* "$repo"
}

mkdir -p "$W"
echo "# shoal, small run (${SMALL} MiB) for the RSS comparison"
run_shoal "$SMALL" >"$W/small.out"
echo "# shoal, ${SIZE} MiB"
run_shoal "$SIZE" >"$W/big.out"
val() { sed -n "s/^$2=//p" "$1"; }
S=$(val "$W/big.out" artifact_bytes)
T=$(val "$W/big.out" total)
ratio() { [[ "$1" =~ ^[0-9.]+$ ]] && calc "$1/$BOUND" || echo -; }
faster() { [[ "$1" =~ ^[0-9.]+$ ]] && calc "$1/$T" || echo -; }

echo
echo "N=$N  S=${SIZE} MiB  B=$RATE per host each way  delay=$DELAY one-way${REGION_DELAY:+ ($REGION_DELAY between regions)}  regions=$REGIONS  cores=$(nproc)  tcp=$CC  shoal=$TRANSPORT"
echo "link check: $(cat "$STATE/check" 2>/dev/null || echo -)"
printf '%-40s %9s %12s %14s\n' method seconds "ratio_to_S/B" "shoal_faster_x"
printf '%-40s %9s %12s %14s\n' "bound S/B" "$BOUND" 1.00 -
printf '%-40s %9s %12s %14s\n' "central: nginx -> $((N - 1)) curl" "$CENTRAL" "$(ratio "$CENTRAL")" "$(faster "$CENTRAL")"
printf '%-40s %9s %12s %14s\n' "bittorrent: aria2c 1 seed, $((N - 1)) leech" "$BT" "$(ratio "$BT")" "$(faster "$BT")"
printf '%-40s %9s %12s %14s\n' "shoal: built -> success" "$T" "$(ratio "$T")" 1.00
printf '%-40s %9s %12s\n' "shoal: first peer complete" "$(val "$W/big.out" first)" "$(ratio "$(val "$W/big.out" first)")"
printf '%-40s %9s %12s\n' "shoal: p50 peer complete" "$(val "$W/big.out" p50)" "$(ratio "$(val "$W/big.out" p50)")"
printf '%-40s %9s %12s\n' "shoal: last peer complete" "$(val "$W/big.out" last)" "$(ratio "$(val "$W/big.out" last)")"
echo
echo "artifact S = $S bytes (the zip of the site)"
echo "block bytes received, all peers  = $(val "$W/big.out" fetched)  ($(calc "$(val "$W/big.out" fetched)/(($N-1)*$S)") x (N-1)*S)"
echo "wire bytes (eth0 tx, all hosts)  = $(val "$W/big.out" wire)  ($(calc "$(val "$W/big.out" wire)/(($N-1)*$S)") x (N-1)*S; TCP/IP framing alone is ~1.046 x)"
echo "packets sent (skbs)              = $(val "$W/big.out" packets)  ($(calc "$(val "$W/big.out" wire)/$(val "$W/big.out" packets)") bytes each on average)"
[ "$REGIONS" -gt 1 ] && echo "block bytes across $REGIONS regions = $(val "$W/big.out" far)  ($(calc "$(val "$W/big.out" far)/$S") x S; one copy into each other region is $((REGIONS - 1)) x S)"
echo "peer connections (both ends)     = $(val "$W/big.out" conns)"
echo "builder upload (blocks)          = $(val "$W/big.out" builder_served)  ($(calc "$(val "$W/big.out" builder_served)/$S") x S)"
echo "builder upload (eth0 tx)         = $(val "$W/big.out" builder_wire)  ($(calc "$(val "$W/big.out" builder_wire)/$S") x S)"
echo "CPU: both cores $(val "$W/big.out" cpu_busy) % busy from POST to success; shoal peers used $(val "$W/big.out" shoal_cpu_s) CPU-seconds in all (clone, build and pack included)"
echo "CPU-seconds per peer: $(val "$W/big.out" shoal_cpu_each) (builder h$(val "$W/big.out" builder_host))"
echo "peak RSS, largest fetching peer = $(val "$W/small.out" rss_kib) KiB at ${SMALL} MiB, $(val "$W/big.out" rss_kib) KiB at ${SIZE} MiB (ratio $(calc "$(val "$W/big.out" rss_kib)/$(val "$W/small.out" rss_kib)"))"
echo "peak RSS, builder                = $(val "$W/small.out" rss_builder_kib) KiB at ${SMALL} MiB, $(val "$W/big.out" rss_builder_kib) KiB at ${SIZE} MiB (clone and pack included)"
