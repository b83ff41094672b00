#!/bin/sh
# bridge-agent postrm (.deb) / %postun (.rpm).
#   deb: remove | purge | upgrade new-version | disappear | abort-install | abort-upgrade
#   rpm: 0 (erase) | 1 (upgrade)
# Removal: forget the unit. Purge (.deb): also remove what the admin added
# under /etc/bridge-agent (kubeconfig, tokens) and any state left behind.
set -e
case "$1" in
  remove | 0 | purge | abort-install)
    rm -f /run/bridge-agent.pkg-upgrade
    if [ -d /run/systemd/system ]; then
      systemctl daemon-reload || true
      systemctl reset-failed bridge-agent.service >/dev/null 2>&1 || true
    fi
    ;;
esac
case "$1" in
  purge | 0)
    rm -rf /var/lib/bridge-agent /run/bridge-agent
    ;;
esac
if [ "$1" = purge ]; then
  rm -rf /etc/bridge-agent
fi
exit 0
