// Package packaging holds the files the .deb and .rpm install (see
// nfpm.yaml) that the binary also needs: `bridge-agent install` writes the
// same default configuration on hosts that take the bare binary.
package packaging

import _ "embed"

// Config is /etc/bridge-agent/config.yaml as the packages install it.
//
//go:embed config.yaml
var Config []byte
