#!/bin/sh
# bridge-agent postinst (.deb) / %post (.rpm).
#   deb: configure [old-version] | abort-upgrade | abort-remove | abort-deconfigure
#   rpm: 1 (install) | 2 (upgrade)
# Fresh install: enable the unit (.deb, as deb-systemd-helper does) or apply
# the host's presets to it (.rpm, as %systemd_post does; the package's
# preset enables it unless the host's presets disable it); start it when it
# is enabled and the configuration has credentials, else say what to do.
# Upgrade: restart the agent if it runs (its rules and routes stay in place
# while it restarts) and leave enabling to the admin.
set -e
unit=bridge-agent.service
config=/etc/bridge-agent/config.yaml
marker=/run/bridge-agent.pkg-upgrade

case "$1" in
  configure | [1-9]) ;;
  *) exit 0 ;;
esac
upgrade=no
if [ -e "$marker" ]; then
  upgrade=yes
  rm -f "$marker"
fi
systemd=no
[ -d /run/systemd/system ] && systemd=yes

if [ "$systemd" = yes ]; then
  systemctl daemon-reload || true
  systemd-tmpfiles --create bridge-agent.conf || true
fi

if [ "$upgrade" = yes ]; then
  if [ "$systemd" = yes ]; then
    systemctl try-restart "$unit" || echo "bridge-agent: restart failed; see: journalctl -u bridge-agent" >&2
  fi
  exit 0
fi

enabled=yes
if command -v systemctl >/dev/null 2>&1; then
  if [ "$1" = configure ]; then
    systemctl enable "$unit" >/dev/null 2>&1 || true
  else
    systemctl --no-reload preset "$unit" >/dev/null 2>&1 || true
  fi
  systemctl is-enabled --quiet "$unit" 2>/dev/null || enabled=no
fi
if [ "$systemd" != yes ]; then
  echo "bridge-agent: systemd is not running here; start the agent with your init system:"
  echo "  bridge-agent run --config $config"
  exit 0
fi
if [ "$enabled" = no ]; then
  echo "bridge-agent: installed but not enabled (systemctl is-enabled: $(systemctl is-enabled "$unit" 2>/dev/null || true);"
  echo "  on RPM systems the host's systemd presets decide), so not started. To run it:"
  echo "  systemctl enable --now $unit   (after the steps in man bridge-agent)"
  exit 0
fi
if /usr/bin/bridge-agent kubeconfig --check --offline --config "$config" >/dev/null 2>&1; then
  # --no-block: READY=1 waits for the first sync with the API server, which
  # must not hold up the package manager.
  systemctl start --no-block "$unit" || true
  echo "bridge-agent: started; see: systemctl status bridge-agent; bridge-agent status"
  exit 0
fi
cat <<MSG
bridge-agent is installed and enabled, but not started: $config
names no credentials that exist yet ($(/usr/bin/bridge-agent kubeconfig --check --offline --config "$config" 2>&1 | head -n 1 || true)).
Next:
  1. On the cluster, as its admin, once: kubectl apply -f /usr/share/bridge-agent/rbac.yaml \\
       -f /usr/share/bridge-agent/member-policy.yaml
     then per host: bridge-agent host add NAME   (writes NAME.join.yaml; copy it here)
  2. Here: bridge-agent join NAME.join.yaml   (writes the kubeconfig and token 0600)
     (or, with the shared read-only ServiceAccount's token and the cluster's CA:
       (umask 077; kubectl -n bridge-agent create token bridge-agent --duration=8760h > token)
       bridge-agent kubeconfig --server https://API-SERVER:6443 --token-file token \\
         --ca-file ca.crt -o /etc/bridge-agent/kubeconfig    (mode 0600)
       rm token; bridge-agent kubeconfig --check    (contacts the API server))
  3. systemctl start bridge-agent && bridge-agent doctor
See man bridge-agent.
MSG
exit 0
