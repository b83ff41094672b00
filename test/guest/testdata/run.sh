#!/bin/bash
# Runs inside a booted guest (hack/guest.sh): the kernel tests of each
# package listed in tests.txt ("<package> <-test.run pattern>"), then the
# agent check. The host test reads the markers:
#   === GUEST-BEGIN <part> uptime=<s>
#   === GUEST-END <part> rc=<status> uptime=<s>
set -u
here=$(cd "$(dirname "$0")" && pwd)
uptime() { read -r up _ </proc/uptime; echo "$up"; }

while read -r pkg pattern; do
  [ -n "$pkg" ] || continue
  echo "=== GUEST-BEGIN $pkg uptime=$(uptime)"
  # A test binary runs in its package's directory (testdata/).
  (cd "$here/$pkg" && "./$pkg.test" -test.run "$pattern" -test.v -test.count 1 -test.timeout 10m 2>&1)
  echo "=== GUEST-END $pkg rc=$? uptime=$(uptime)"
done <"$here/tests.txt"

if [ -x "$here/bridge-agent" ]; then
  echo "=== GUEST-BEGIN agent uptime=$(uptime)"
  bash "$here/agent.sh" 2>&1
  echo "=== GUEST-END agent rc=$? uptime=$(uptime)"
fi
