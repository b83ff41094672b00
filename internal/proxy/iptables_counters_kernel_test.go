package proxy

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

func (x *netnsXtables) saveNATCounters(ctx context.Context, fam Family, parse func(io.Reader) error) error {
	out, err := x.run(ctx, nil, toolName(fam, x.variant, "-save"), "-c", "-t", "nat")
	if err != nil {
		return err
	}
	return parse(bytes.NewReader(out))
}

// The kernel counts each connection to a Service port with endpoints once
// on its counter chain, through partial and full restores and changes of
// the Service's endpoints (a refused connection, to a port without
// endpoints, is not counted); cleanup removes the counter chains.
func TestIPTablesCountersKernel(t *testing.T) {
	for _, v := range []Variant{VariantNFT, VariantLegacy} {
		t.Run(string(v), func(t *testing.T) {
			ctx := context.Background()
			x := iptNetns(t, v)
			ns := strings.TrimPrefix(x.prefix[1], "--net=/run/netns/")
			p := newIPTables(IPTablesOptions{Variant: v, Families: []Family{IPv4}, Masquerade: true, FullSyncPeriod: time.Hour}, x, nil)
			clock := time.Unix(1000, 0)
			p.now = func() time.Time { return clock }
			if err := p.Sync(ctx, snapshot(testServices()...)); err != nil {
				t.Fatal(err)
			}
			inNetns(t, ns, "ip", "link", "set", "lo", "up")
			podLink(t, ns)

			count := func(step string, https uint64) {
				t.Helper()
				got, err := p.ServiceCounters(ctx)
				if err != nil {
					t.Fatalf("%s: %v", step, err)
				}
				seen := false
				for _, c := range got {
					var want uint64
					if c.Namespace == "ns1" && c.Service == "web" && c.Port == "https" && c.Protocol == "TCP" {
						want, seen = https, true
					}
					if c.Connections != want {
						t.Errorf("%s: %s/%s:%s/%s counted %d connections, want %d", step, c.Namespace, c.Service, c.Port, c.Protocol, c.Connections, want)
					}
				}
				if !seen {
					t.Errorf("%s: no counter of ns1/web:https in %+v", step, got)
				}
			}
			count("before any connection", 0)
			connectInNetns(t, ns, "172.30.0.10:443", "10.244.1.5:8443", "172.30.0.80:80", 3)
			count("3 connections", 3)

			// A partial restore changing web's endpoints (its chains are
			// rewritten), then a full one: the count stays.
			svcs := testServices()
			svcs[0].Ports[0] = svcPort("http", 80, "TCP", ready("10.244.1.9", 8080))
			s2 := snapshot(svcs...)
			s2.Version = 2
			if err := p.Sync(ctx, s2); err != nil {
				t.Fatal(err)
			}
			svcs = testServices()
			svcs[0].Ports[1] = svcPort("https", 443, "TCP", ready("10.244.1.5", 8443), ready("10.244.1.5", 8443))
			s3 := snapshot(svcs...)
			s3.Version = 3
			if err := p.Sync(ctx, s3); err != nil {
				t.Fatal(err)
			}
			clock = clock.Add(2 * time.Hour)
			if err := p.Sync(ctx, s3); err != nil {
				t.Fatal(err)
			}
			connectInNetns(t, ns, "172.30.0.10:443", "10.244.1.5:8443", "172.30.0.80:80", 2)
			count("after partial and full restores, 2 more", 5)

			if err := cleanupFamily(ctx, x, IPv4); err != nil {
				t.Fatal(err)
			}
			if save := x.save(t, IPv4); strings.Contains(save, cntChainPrefix) {
				t.Errorf("counter chains left after cleanup:\n%s", save)
			}
		})
	}
}
