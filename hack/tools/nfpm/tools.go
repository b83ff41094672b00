//go:build tools

// Package tools pins the nfpm packager that builds the .deb and .rpm.
package tools

import _ "github.com/goreleaser/nfpm/v2/cmd/nfpm"
