//go:build tools

// Package tools pins the CoreDNS binary the sandbox builds.
package tools

import _ "github.com/coredns/coredns"
