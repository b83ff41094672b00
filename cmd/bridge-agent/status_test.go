package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/daemon"
)

func TestPrintStatusShowsRoutes(t *testing.T) {
	now := time.Now()
	st := &daemon.Status{Version: "test", StartTime: now, Ready: true, Consumers: []daemon.ConsumerState{{
		Name: "routes", LastSync: now,
		Details: []byte(`{"mode":"nodes","protocol":98,"table":254,
			"routes":[{"dst":"10.244.1.0/24","table":254,"nexthops":[{"gw":"10.250.0.21"}],"node":"node-1"}],
			"problems":[{"reason":"notOnLink","node":"far","cidr":"10.244.7.0/24","detail":"InternalIP 192.168.7.5 is in no subnet this host is connected to"}],
			"podCIDRs":["10.244.1.0/24","10.244.7.0/24"],"serviceCIDRs":["10.96.0.0/16"],"serviceCIDRsFrom":"cluster"}`),
	}}}
	var out bytes.Buffer
	printStatus(&out, st, now)
	for _, want := range []string{
		"Routes:\n  mode nodes, protocol 98, table main: 1 routes installed, 1 not installed (0 conflicts)\n",
		"    10.244.1.0/24  via 10.250.0.21  node-1\n",
		"    ! node far 10.244.7.0/24: notOnLink: InternalIP 192.168.7.5",
		"  cluster pod ranges: 10.244.1.0/24, 10.244.7.0/24\n",
		"  cluster service ranges: 10.96.0.0/16 (from the cluster)\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, out.String())
		}
	}
}
