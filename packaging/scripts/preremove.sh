#!/bin/sh
# bridge-agent prerm (.deb) / %preun (.rpm).
#   deb: remove | upgrade new-version | deconfigure | failed-upgrade
#   rpm: 0 (erase) | 1 (upgrade)
# Removal: stop and disable the unit, then remove every rule, route,
# resolver change and state file the agent made, while the binary is still
# here. An upgrade changes nothing: postinstall of the new version restarts.
set -e
unit=bridge-agent.service
config=/etc/bridge-agent/config.yaml

case "$1" in
  remove | 0) ;;
  *) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
  systemctl stop "$unit" || true
fi
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable "$unit" >/dev/null 2>&1 || true
fi
if [ -e "$config" ]; then
  /usr/bin/bridge-agent cleanup --config "$config" || echo "bridge-agent: cleanup incomplete; see above" >&2
else
  /usr/bin/bridge-agent cleanup || echo "bridge-agent: cleanup incomplete; see above" >&2
fi
exit 0
