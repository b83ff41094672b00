#!/bin/sh
# bridge-agent preinst (.deb) / %pre (.rpm).
#   deb: install [old-version] | upgrade old-version | abort-upgrade new-version
#   rpm: 1 (install) | 2 (upgrade)
# Tells postinstall whether this is an upgrade of an installed package: a
# .deb reinstalled after `apt remove` also gets an old version, but must be
# set up like a fresh install.
set -e
marker=/run/bridge-agent.pkg-upgrade
case "$1" in
  upgrade | [2-9]) mkdir -p /run && : >"$marker" 2>/dev/null || true ;;
  *) rm -f "$marker" ;;
esac
exit 0
