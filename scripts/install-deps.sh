#!/usr/bin/env bash
# Installs what shoal needs on Debian/Ubuntu when it is missing.
#   runtime: git and bubblewrap (the build sandbox), curl
#   test:    the runtime set plus what the build needs (pkg-config, libssl-dev)
#            and the browser tests' Chromium and ChromeDriver, openssl and
#            iproute2, and the generators the build tests run (Hugo, Jekyll
#            with bundler; Node and npm, whose corepack brings yarn and pnpm)
set -euo pipefail
what=${1:-runtime}
pkgs=()
command -v git > /dev/null || pkgs+=(git)
command -v bwrap > /dev/null || pkgs+=(bubblewrap)
command -v curl > /dev/null || pkgs+=(curl)
if [ "$what" = test ]; then
  command -v pkg-config > /dev/null || pkgs+=(pkg-config)
  [ -e /usr/include/openssl/ssl.h ] || pkgs+=(libssl-dev)
  command -v npm > /dev/null || pkgs+=(nodejs npm)   # the JavaScript framework tests
  command -v hugo > /dev/null || pkgs+=(hugo)          # the generator tests
  command -v jekyll > /dev/null || pkgs+=(jekyll)
  command -v bundle > /dev/null || pkgs+=(ruby-bundler)
  command -v openssl > /dev/null || pkgs+=(openssl)    # the fake GitHub App's key
  command -v ip > /dev/null || pkgs+=(iproute2)        # the Kubernetes emulation's namespaces
  command -v chromium > /dev/null || pkgs+=(chromium)  # the browser tests
  command -v chromedriver > /dev/null || pkgs+=(chromium-driver)
fi
[ ${#pkgs[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null; then
  echo "missing: ${pkgs[*]}; please install them (shoal builds need bubblewrap as their sandbox)" >&2
  exit 1
fi
echo "installing ${pkgs[*]}…"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${pkgs[@]}" > /dev/null
