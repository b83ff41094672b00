#!/bin/bash
# Runs inside a booted guest (hack/guest.sh): the kernel tests of each
# package listed in tests.txt ("<package> <-test.run pattern>"), then the
# agent check. The guest has two vCPUs: the first package (the longest)
# runs beside the others, which run one after the other, then the agent
# check. Each part's output is printed whole at the end, between markers
# the host test reads:
#   === GUEST-BEGIN <part> uptime=<s>
#   === GUEST-END <part> rc=<status> uptime=<s>
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
uptime() { read -r up _ </proc/uptime; echo "$up"; }

part() { # name command...: runs one part into $out/name
  local name=$1 begin rc
  shift
  begin=$(uptime)
  "$@" >"$out/$name" 2>&1
  rc=$?
  echo "=== GUEST-BEGIN $name uptime=$begin" >"$out/$name.begin"
  echo "=== GUEST-END $name rc=$rc uptime=$(uptime)" >"$out/$name.end"
}

gotest() { # package pattern: its test binary, in its directory (testdata/)
  cd "$here/$1" && "./$1.test" -test.run "$2" -test.v -test.count 1 -test.timeout 10m
}

parts=()
while read -r pkg pattern; do
  [ -n "$pkg" ] && parts+=("$pkg") && patterns+=("$pattern")
done <"$here/tests.txt"
[ -x "$here/bridge-agent" ] && parts+=(agent)

first=
if [ ${#parts[@]} -gt 0 ] && [ "${parts[0]}" != agent ]; then
  first=${parts[0]}
  part "$first" gotest "$first" "${patterns[0]}" &
fi
for i in "${!parts[@]}"; do
  name=${parts[$i]}
  [ "$name" = "$first" ] && continue
  if [ "$name" = agent ]; then
    part agent bash "$here/agent.sh"
  else
    part "$name" gotest "$name" "${patterns[$i]}"
  fi
done
wait
for name in "${parts[@]}"; do
  cat "$out/$name.begin" "$out/$name" "$out/$name.end"
done
