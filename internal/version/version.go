// Package version holds the build's version, set at link time with
// -ldflags "-X github.com/bridge-agent/bridge-agent/internal/version.Version=v1.2.3".
package version

// Version of this build.
var Version = "dev"
