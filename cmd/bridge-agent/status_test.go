package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/proxy"
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

func TestPrintStatusShowsWhyModeAuto(t *testing.T) {
	now := time.Now()
	reason := "nftables unavailable: nftables v0.9.8 (E.D.S.) or the kernel rejects the nftables backend's rules: nft: exit status 1: Error: Could not process rule: Invalid argument"
	details, err := json.Marshal(proxy.ProxyStatus{Mode: "iptables", Backend: "iptables", Variant: "nft", ModeReason: reason})
	if err != nil {
		t.Fatal(err)
	}
	st := &daemon.Status{Version: "test", StartTime: now, Ready: true, Consumers: []daemon.ConsumerState{{Name: "proxy", LastSync: now, Details: details}}}
	var out bytes.Buffer
	printStatus(&out, st, now)
	if want := "Proxy: iptables (nft)\n  chosen by proxy.mode auto: " + reason + "\n"; !strings.Contains(out.String(), want) {
		t.Errorf("status text lacks %q:\n%s", want, out.String())
	}
}

func TestCleaningProxyStatusAddsModeReason(t *testing.T) {
	c := &cleaningProxy{proxyBackend: fixedStatus{proxy.ProxyStatus{Mode: "nftables", Backend: "nftables"}}, modeReason: "nftables supported"}
	if got := c.Status().(proxy.ProxyStatus); got.ModeReason != "nftables supported" || got.Backend != "nftables" {
		t.Errorf("status: %+v", got)
	}
	c.modeReason = ""
	if got := c.Status().(proxy.ProxyStatus); got.ModeReason != "" {
		t.Errorf("explicit mode got a reason: %+v", got)
	}
}

// fixedStatus is a proxyBackend that only reports a status.
type fixedStatus struct{ st proxy.ProxyStatus }

func (f fixedStatus) Name() string                                                     { return "proxy" }
func (f fixedStatus) Sync(context.Context, *cluster.Snapshot) error                    { return nil }
func (f fixedStatus) Status() any                                                      { return f.st }
func (f fixedStatus) Collectors() []prometheus.Collector                               { return nil }
func (f fixedStatus) ObserveProgramming(map[cluster.ServiceKey][]time.Time, time.Time) {}

// The status lists the Service ports used, most connections first, from
// the proxy's "connections"; a reading error is said.
func TestPrintStatusShowsConnections(t *testing.T) {
	now := time.Now()
	details := []byte(`{"mode":"nftables","backend":"nftables","families":{},"connections":[
		{"namespace":"shop","service":"db","port":"","protocol":"TCP","connections":3},
		{"namespace":"shop","service":"idle","port":"http","protocol":"TCP","connections":0},
		{"namespace":"shop","service":"web","port":"http","protocol":"TCP","connections":12}]}`)
	st := &daemon.Status{Version: "test", StartTime: now, Ready: true, Consumers: []daemon.ConsumerState{{Name: "proxy", LastSync: now, Details: details}}}
	var out bytes.Buffer
	printStatus(&out, st, now)
	text := out.String()
	web := strings.Index(text, "    shop/web:http")
	db := strings.Index(text, "    shop/db ")
	if !strings.Contains(text, "  connections by Service (2 of 3 ports used):\n") || web < 0 || db < web || strings.Contains(text, "shop/idle") ||
		!strings.Contains(text, " TCP  12\n") || !strings.Contains(text, " TCP  3\n") {
		t.Errorf("status text lacks the connections, most used first:\n%s", text)
	}
	details = []byte(`{"mode":"nftables","backend":"nftables","families":{},"connectionsError":"read nftables counters of IPv4: nft: exit status 1"}`)
	st.Consumers[0].Details = details
	out.Reset()
	printStatus(&out, st, now)
	if want := "  connections by Service: cannot read: read nftables counters of IPv4: nft: exit status 1\n"; !strings.Contains(out.String(), want) {
		t.Errorf("status text lacks %q:\n%s", want, out.String())
	}
}
