#!/usr/bin/env bash
# Boots Debian guests with their own kernel and userland under qemu (TCG, no
# KVM) and runs one command in them, so that kernel- and distro-dependent
# behaviour (nftables, iptables, netlink) is proven on the kernels users run:
#   bookworm  Debian 12, linux-image-6.1.0-*-amd64, its nft and iptables
#   bullseye  Debian 11, linux-image-5.10.0-*-amd64, nft 0.9.8, iptables 1.8.7
# Each guest is built once into a cache keyed by this script's recipe, the
# suite, its packages, its kernel package and the architecture:
#   ~/.cache/bridge-agent/guest-<suite>-<key>/{vmlinuz,vmlinux,root.cpio,info}
# root.cpio is an initramfs: a debootstrapped root of the suite with the
# kernel's network, netfilter and virtio modules. Each run appends a small
# second initramfs with the files passed in and an /init that mounts
# proc/sys/dev/tmp/run, runs the command, prints
#   BRIDGE-AGENT-GUEST-EXIT=<status> uptime=<seconds>
# on the serial console and powers off.
#
# Usage:
#   hack/guest.sh build SUITE
#       build (or find) the guest; prints its directory on the last line
#   hack/guest.sh run SUITE [--file SRC:DST]... [--timeout SEC] [--mem SIZE]
#                 [--modules "MOD..."] [--verbose] -- CMD [ARG...]
#       boot SUITE, copy each SRC (file or directory) to DST inside it, load
#       the modules, run CMD as root there (bash, cwd /root, stdin
#       /dev/null), print its output and exit with its status (124 on
#       timeout, 125 when the guest did not report one). --verbose also
#       shows the kernel's messages and the markers.
#   hack/guest.sh dir SUITE
#       the guest's cache directory (built when it holds .complete)
#   hack/guest.sh list
#       the supported suites
# Environment: BRIDGE_AGENT_CACHE (cache root), DEBIAN_MIRROR,
#   DEBIAN_SECURITY_MIRROR, GUEST_KERNEL_bookworm / GUEST_KERNEL_bullseye
#   (kernel package to use instead of the default).
# Building needs root (debootstrap); it installs qemu-system-x86,
# debootstrap and cpio when missing. Running needs only qemu.
set -euo pipefail

recipe=2 # bump when the steps of build() change
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
cache_root=${BRIDGE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bridge-agent}
exit_marker=BRIDGE-AGENT-GUEST-EXIT
start_marker=BRIDGE-AGENT-GUEST-START

# The guest's own userland: the rule tools of the suite, what the tests and
# a person debugging need (ip, nc, socat, curl, dig, conntrack, modprobe).
packages=nftables,iptables,iproute2,kmod,busybox,socat,netcat-openbsd,curl,dnsutils,conntrack,procps,ca-certificates

suites=(bookworm bullseye)
declare -A kernel_pkg=(
  [bookworm]=${GUEST_KERNEL_bookworm:-linux-image-6.1.0-57-amd64}
  [bullseye]=${GUEST_KERNEL_bullseye:-linux-image-5.10.0-32-amd64}
)
# Kernel options: no reboot loop, no mitigations (costly under TCG and
# pointless in a throwaway guest), no probing of absent legacy devices.
cmdline="panic=-1 rdinit=/init random.trust_cpu=on mitigations=off i8042.noaux=1 i8042.nomux=1 i8042.nopnp=1 i8042.nokbd=1 8250.nr_uarts=1 cryptomgr.notests"
# Modules loaded at boot (--modules adds more). The kernel loads the rest
# on demand: nft, iptables and ip ask for theirs through /sbin/modprobe,
# and every module loaded under TCG costs boot time.
boot_modules=""

die() { echo "guest: $*" >&2; exit 2; }

usage() {
  sed -n '/^# Usage:/,/^# Building/{/^# Building/!p}' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

check_suite() {
  local s
  for s in "${suites[@]}"; do [ "$s" = "$1" ] && return 0; done
  die "unknown suite $1 (supported: ${suites[*]})"
}

guest_dir() { # the cache directory of suite $1
  local key
  key=$(printf '%s\n' "$recipe" "$1" "$mirror" "$security_mirror" "$packages" "${kernel_pkg[$1]}" "$(uname -m)" |
    sha256sum | cut -c1-16)
  echo "$cache_root/guest-$1-$key"
}

install_missing() { # COMMAND=PACKAGE...
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || need+=("${pair#*=}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing ${need[*]}; run as root or install them"
  echo "guest: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

write_init() { # the guest's /init into directory $1
  cat >"$1/init" <<'EOF'
#!/bin/bash
# bridge-agent guest init: set up the basics, run /guest/cmd, report its
# status on the console, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
# What systemd or udev makes on a real host (nft 0.9.8 reads -f /dev/stdin).
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mkdir -p /run/netns /run/lock /var/run
echo /sbin/modprobe >/proc/sys/kernel/modprobe
hostname guest
[ -s /guest/modules ] && modprobe -qa $(cat /guest/modules)
ip link set lo up
# Files passed in: /guest/files/N goes to the Nth path in /guest/manifest;
# a directory passed onto an existing one is merged into it.
if [ -f /guest/manifest ]; then
  n=0
  while IFS= read -r dst; do
    src=/guest/files/$n
    mkdir -p "$(dirname "$dst")"
    if [ -d "$src" ] && [ -d "$dst" ]; then
      cp -a "$src/." "$dst/"
    else
      rm -f "$dst"
      mv "$src" "$dst"
    fi
    n=$((n + 1))
  done </guest/manifest
fi
read -r up _ </proc/uptime
echo "BRIDGE-AGENT-GUEST-START uptime=$up kernel=$(uname -r)"
cd /root
if [ -f /guest/cmd ]; then
  bash /guest/cmd </dev/null
  rc=$?
else
  echo "guest: no command given" >&2
  rc=125
fi
read -r up _ </proc/uptime
echo "BRIDGE-AGENT-GUEST-EXIT=$rc uptime=$up"
sync
echo o >/proc/sysrq-trigger
sleep 10
EOF
  chmod 755 "$1/init"
}

# extract_vmlinux writes the ELF kernel inside bzImage $1 to $2. qemu boots
# it through its PVH entry point, which spares the guest decompressing its
# own kernel: under TCG that takes longer than the rest of the boot.
extract_vmlinux() {
  local off
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$1" | head -n 1 | cut -d: -f1)
  [ -n "$off" ] || { echo "guest: no xz payload in $1; booting it compressed" >&2; return 0; }
  tail -c +$((off + 1)) "$1" | xz -dc 2>/dev/null >"$2.tmp" || true
  if [ "$(head -c 4 "$2.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
    mv "$2.tmp" "$2"
  else
    rm -f "$2.tmp"
    echo "guest: could not unpack the kernel in $1; booting it compressed" >&2
  fi
}

build() { # suite
  local suite=$1 dir tmp root start kdeb kver
  dir=$(guest_dir "$suite")
  if [ -f "$dir/.complete" ]; then
    echo "$dir"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "building $dir needs root (debootstrap)"
  # One build per guest at a time; whoever waited finds it built.
  mkdir -p "$cache_root"
  local lock
  exec {lock}>"$dir.lock"
  flock "$lock"
  if [ -f "$dir/.complete" ]; then
    echo "$dir"
    return 0
  fi
  install_missing debootstrap=debootstrap cpio=cpio qemu-system-x86_64=qemu-system-x86
  echo "guest: building $suite with ${kernel_pkg[$suite]} into $dir (cold builds take minutes)" >&2
  start=$(date +%s)
  tmp="$dir.tmp"
  root="$tmp/root"
  # A finished debootstrap of an interrupted build is reused.
  if [ ! -f "$tmp/.debootstrapped" ]; then
    rm -rf "$tmp"
    mkdir -p "$tmp"
    debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
      { tail -n 30 "$tmp/debootstrap.log" >&2; die "debootstrap $suite failed (log: $tmp/debootstrap.log)"; }
    touch "$tmp/.debootstrapped"
  fi
  rm -rf "$tmp/kernel" "$root/lib/modules" "$root"/tmp/linux-image-*.deb

  # The kernel: downloaded with the suite's own apt (main and security),
  # unpacked beside the root; its vmlinuz boots the guest, its modules
  # (all but the hardware drivers, sound, media and wireless) go inside.
  cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security_mirror $suite-security main
EOF
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  chroot "$root" apt-get update -qq >&2
  chroot "$root" sh -c "cd /tmp && apt-get download -qq ${kernel_pkg[$suite]}" >&2
  kdeb=$(ls "$root"/tmp/linux-image-*.deb)
  dpkg-deb -x "$kdeb" "$tmp/kernel"
  kver=$(ls "$tmp/kernel/lib/modules")
  cp "$tmp/kernel/boot/vmlinuz-$kver" "$tmp/vmlinuz"
  extract_vmlinux "$tmp/vmlinuz" "$tmp/vmlinux"
  local mods="$tmp/kernel/lib/modules/$kver" kmods="$root/lib/modules/$kver/kernel"
  mkdir -p "$kmods"
  cp -a "$mods"/modules.order "$mods"/modules.builtin* "$root/lib/modules/$kver/"
  (cd "$mods/kernel" && cp -a --parents lib crypto arch/x86/crypto \
    net/{netfilter,ipv4,ipv6,bridge,8021q,802,llc,sched,core,packet,xfrm,key,sctp,netlink,unix,vmw_vsock} \
    drivers/virtio drivers/char/hw_random drivers/net/{veth,dummy,virtio_net,net_failover,macvlan,tun,ifb}.ko* \
    drivers/net/{ipvlan,vxlan,wireguard,bonding} "$kmods/" 2>/dev/null) || true
  rm -f "$kmods"/lib/test_*.ko*
  chroot "$root" depmod "$kver"
  echo guest >"$root/etc/hostname"
  printf '127.0.0.1 localhost guest\n::1 localhost\n' >"$root/etc/hosts"
  : >"$root/etc/resolv.conf"
  chroot "$root" apt-get clean
  rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/var/log/"*.log \
    "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/locale" \
    "$root/usr/lib/x86_64-linux-gnu/gconv"
  {
    echo "suite=$suite"
    echo "kernel_package=${kernel_pkg[$suite]}"
    echo "kernel_version=$(dpkg-deb -f "$kdeb" Version 2>/dev/null || true)"
    echo "kernel_release=$kver"
    echo "nft=$(chroot "$root" dpkg-query -W -f='${Version}' nftables)"
    echo "iptables=$(chroot "$root" dpkg-query -W -f='${Version}' iptables)"
    echo "iproute2=$(chroot "$root" dpkg-query -W -f='${Version}' iproute2)"
  } >"$tmp/info" 2>/dev/null
  rm -f "$kdeb"
  (cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet >"$tmp/root.cpio")
  rm -rf "$root" "$tmp/kernel"
  touch "$tmp/.complete"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  echo "guest: built $suite in $(($(date +%s) - start))s ($(du -sh "$dir/root.cpio" | cut -f1) initramfs)" >&2
  echo "$dir"
}

run() { # suite, options, -- command
  local suite=$1
  shift
  local files=() timeout=900 mem=2G verbose=0 modules=$boot_modules
  while [ $# -gt 0 ]; do
    case $1 in
    --file) files+=("$2"); shift 2 ;;
    --file=*) files+=("${1#--file=}"); shift ;;
    --timeout) timeout=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --modules) modules="$modules $2"; shift 2 ;;
    --verbose|-v) verbose=1; shift ;;
    --) shift; break ;;
    *) die "run: unknown option $1 (want --file SRC:DST, --timeout SEC, --mem SIZE, --modules 'M...', --verbose, then -- CMD)" ;;
    esac
  done
  [ $# -gt 0 ] || die "run: no command (usage: hack/guest.sh run SUITE [--file SRC:DST]... -- CMD [ARG...])"
  local dir
  if [ "$(id -u)" -eq 0 ]; then
    dir=$(build "$suite" | tail -n 1)
  else
    dir=$(guest_dir "$suite")
    [ -f "$dir/.complete" ] || die "guest $suite is not built and building needs root: sudo hack/guest.sh build $suite"
  fi
  command -v qemu-system-x86_64 >/dev/null 2>&1 || install_missing qemu-system-x86_64=qemu-system-x86
  command -v cpio >/dev/null 2>&1 || install_missing cpio=cpio

  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/guest-run.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  mkdir -p "$work/x/guest/files"
  local i=0 f src dst
  : >"$work/x/guest/manifest"
  for f in "${files[@]}"; do
    src=${f%%:*}
    dst=${f#*:}
    [ "$src" != "$f" ] && [ -n "$dst" ] || die "run: --file $f: want SRC:DST"
    case $dst in /*) ;; *) die "run: --file $f: DST must be an absolute path in the guest" ;; esac
    [ -e "$src" ] || die "run: --file $f: $src does not exist"
    cp -a "$src" "$work/x/guest/files/$i"
    echo "$dst" >>"$work/x/guest/manifest"
    i=$((i + 1))
  done
  {
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
  } >"$work/x/guest/cmd"
  echo $modules >"$work/x/guest/modules"
  write_init "$work/x"
  (cd "$work/x" && find init guest -print0 | cpio --null -o -H newc --quiet -R 0:0 >"$work/extra.cpio")
  cat "$dir/root.cpio" "$work/extra.cpio" >"$work/initrd"

  local kernel="$dir/vmlinuz"
  [ -f "$dir/vmlinux" ] && kernel="$dir/vmlinux"
  local log="$work/console.log" rc=0 klog="quiet loglevel=4"
  [ "$verbose" -eq 0 ] || klog="loglevel=7"
  timeout --kill-after=10 "$timeout" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m "$mem" \
    -nodefaults -no-user-config -display none -serial stdio -monitor none -net none -no-reboot \
    -kernel "$kernel" -initrd "$work/initrd" \
    -append "console=ttyS0 $klog $cmdline" </dev/null 2>"$work/qemu.err" |
    awk -v verbose="$verbose" -v start="$start_marker" -v stop="$exit_marker" -v logfile="$log" '
      { sub(/\r$/, ""); print >logfile; fflush(logfile) }
      index($0, start) == 1 { on = 1; if (verbose) print; fflush(); next }
      index($0, stop "=") == 1 { on = 0; if (verbose) print; fflush(); next }
      on || verbose { print; fflush() }' || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "guest: $suite timed out after ${timeout}s" >&2
    return 124
  fi
  local line
  line=$(grep -a "^$exit_marker=" "$log" | tail -n 1 || true)
  if [ -z "$line" ]; then
    echo "guest: $suite did not report a status; console:" >&2
    tail -n 40 "$log" >&2
    cat "$work/qemu.err" >&2
    return 125
  fi
  line=${line#"$exit_marker="}
  local rc_guest=${line%% *} up_start up_end
  up_end=${line##*uptime=}
  up_start=$(grep -a "^$start_marker " "$log" | tail -n 1 | sed 's/.*uptime=\([0-9.]*\).*/\1/')
  echo "guest: $suite: user space after ${up_start}s, command ran $(awk -v a="$up_start" -v b="$up_end" 'BEGIN { printf "%.2f", b - a }')s, exit $rc_guest" >&2
  return "$rc_guest"
}

main() {
  [ $# -ge 1 ] || usage
  case $1 in
  build)
    [ $# -eq 2 ] || usage
    check_suite "$2"
    build "$2"
    ;;
  run)
    [ $# -ge 2 ] || usage
    check_suite "$2"
    suite=$2
    shift 2
    rc=0
    run "$suite" "$@" || rc=$?
    exit "$rc"
    ;;
  dir)
    [ $# -eq 2 ] || usage
    check_suite "$2"
    guest_dir "$2"
    ;;
  list)
    printf '%s\n' "${suites[@]}"
    ;;
  *) usage ;;
  esac
}

# One line, read whole before it runs: editing this file while a build runs
# cannot make bash execute a half-read line.
main "$@"; exit $?
