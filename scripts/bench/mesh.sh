#!/usr/bin/env bash
# Mesh benchmarks with real release-built peers on loopback. Prints:
#   - propagation: time until a state change made on one peer is visible on
#     every other peer (p50/p99), at N=10 and N=50;
#   - failover: time from kill -9 of a builder until another peer claims
#     its build (median of 10);
#   - idle: per-peer RSS, CPU and loopback bytes/s of an idle mesh of 10.
#
#   scripts/bench/mesh.sh [propagation|failover|idle|all]
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
cargo build --release --quiet -p node --bin shoal -p tests --bin mesh-bench
bench=target/release/mesh-bench
case "$what" in
  propagation|all) "$bench" propagation 10 40; "$bench" propagation 50 20 ;;&
  failover|all) "$bench" failover 10 ;;&
  idle|all) "$bench" idle 10 30 ;;
  propagation|failover) ;;
  *) echo "usage: scripts/bench/mesh.sh [propagation|failover|idle|all]" >&2; exit 2 ;;
esac
