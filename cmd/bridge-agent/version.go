package main

import (
	"fmt"
	"io"
	"runtime"

	"github.com/bridge-agent/bridge-agent/internal/version"
)

func versionCmd(stdout io.Writer) int {
	fmt.Fprintf(stdout, "bridge-agent %s (%s, %s/%s)\n", version.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return 0
}
