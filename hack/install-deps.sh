#!/usr/bin/env bash
# Installs the system tools the sandbox and the tests use, when missing:
# iproute2 (ip netns, veth, bridges), iptables and nftables (rule backends),
# dnsutils (dig), conntrack, curl, and those named as COMMAND=PACKAGE
# arguments (hack/bench.sh adds dnsperf, taskset, stdbuf). Needs root and
# Debian/Ubuntu's apt.
# Usage: hack/install-deps.sh [COMMAND=PACKAGE...]
set -euo pipefail

declare -A pkg_for=(
  [ip]=iproute2 [iptables]=iptables [nft]=nftables [dig]=dnsutils [conntrack]=conntrack [curl]=curl
)
for extra in "$@"; do
  pkg_for[${extra%%=*}]=${extra#*=}
done
missing=()
for cmd in "${!pkg_for[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_for[$cmd]}")
done
command -v go >/dev/null 2>&1 || { echo "install-deps: Go is required (https://go.dev/dl); not found in PATH" >&2; exit 1; }
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root or install them" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
