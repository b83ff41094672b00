// Package systemd holds bridge-agent's systemd unit, the one file that both
// the packages (packaging/nfpm.yaml) and `bridge-agent install` put on a
// host.
package systemd

import _ "embed"

// Unit is bridge-agent.service as the packages install it.
//
//go:embed bridge-agent.service
var Unit string

// Tmpfiles is the tmpfiles.d entry the unit relies on.
//
//go:embed bridge-agent.tmpfiles
var Tmpfiles string

// ExecStart is the unit's command line as the packages install it.
const ExecStart = "/usr/bin/bridge-agent run --config /etc/bridge-agent/config.yaml"
