#!/usr/bin/env bash
# Builds a Debian root file system (debootstrap) that boots under
# systemd-nspawn, once, into a cache keyed by this script's recipe version,
# the suite and the package list. The package tests copy it for every run.
# Usage: hack/debian-root.sh   (root; installs debootstrap and
# systemd-container when missing)
# Prints the root's directory on its last line.
set -euo pipefail

suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
recipe=2 # bump when the steps below change
# What the package test needs inside: an init to boot, what the package
# depends on, the tools it runs (curl, dig), and systemd-resolved, which
# the tests turn on (with systemd-networkd managing the uplink, as Ubuntu
# has it) or mask (a legacy VM with a plain /etc/resolv.conf) per run.
packages=systemd,systemd-sysv,systemd-resolved,dbus,iptables,nftables,iproute2,curl,dnsutils,ca-certificates,procps

cache_root=${BRIDGE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bridge-agent}
key=$(printf '%s\n' "$recipe" "$suite" "$mirror" "$packages" "$(uname -m)" | sha256sum | cut -c1-16)
dir="$cache_root/debian-$suite-$key"

if [ -f "$dir/.complete" ]; then
  echo "$dir"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "debian-root: building $dir needs root" >&2
  exit 1
fi

need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
if [ ${#need[@]} -gt 0 ]; then
  echo "debian-root: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "debian-root: debootstrap $suite into $dir (cold builds take minutes)" >&2
start=$(date +%s)
tmp="$dir.tmp"
rm -rf "$tmp"
mkdir -p "$cache_root"
debootstrap --variant=minbase --include="$packages" "$suite" "$tmp" "$mirror" >&2

# A root that boots straight to multi-user without questions: no first-boot
# prompts (each copy gets its own machine id), no getty on a console nobody
# reads. systemd-networkd and systemd-resolved are installed but left for
# each test to enable (networkd, with a .network file for the uplink only)
# or mask; networkd's wait-online is never wanted.
rm -f "$tmp/etc/machine-id" "$tmp/var/lib/dbus/machine-id"
: >"$tmp/etc/machine-id"
for unit in systemd-firstboot.service console-getty.service getty@.service \
  systemd-networkd-wait-online.service systemd-timesyncd.service; do
  ln -sfn /dev/null "$tmp/etc/systemd/system/$unit"
done
echo "bridge-agent-test" >"$tmp/etc/hostname"
rm -f "$tmp/etc/resolv.conf"
chroot "$tmp" apt-get clean
rm -rf "$tmp/var/lib/apt/lists/"* "$tmp/var/log/"*.log
touch "$tmp/.complete"
rm -rf "$dir"
mv "$tmp" "$dir"
echo "debian-root: built in $(( $(date +%s) - start ))s" >&2
echo "$dir"
