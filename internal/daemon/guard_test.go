package daemon

import (
	"context"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/hostguard"
)

// TestPublishGuarded: consumers get the guarded snapshot: a ClusterIP
// outside the configured Service ranges or in a special range never
// reaches them, the others do, and status names each refusal.
func TestPublishGuarded(t *testing.T) {
	cons := &recordingConsumer{}
	d, client, stop := newTestDaemonOpts(t, []Consumer{cons}, func(o *Options) {
		o.Config.ServiceCIDRs = []string{"10.96.0.0/12", "127.0.0.0/8"}
	})
	defer stop()
	ctx := context.Background()
	for name, ip := range map[string]string{"ok": "10.96.0.20", "outside": "10.200.0.1", "loop": "127.0.0.5"} {
		if _, err := client.CoreV1().Services("shop").Create(ctx, &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec:       v1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Ports: []v1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 5*time.Second, func() bool {
		s := cons.lastSnapshot()
		return s != nil && len(d.Status().Guard.RefusedClusterIPs) == 2 && s.Services[cluster.ServiceKey{Namespace: "shop", Name: "ok"}] != nil
	})
	if s := cons.lastSnapshot(); len(s.Services) != 1 {
		t.Errorf("consumer got %d Services, want only shop/ok", len(s.Services))
	}
	g := d.Status().Guard
	got := map[string]hostguard.Reason{}
	for _, r := range g.RefusedClusterIPs {
		got[r.Service.Name] = r.Reason
	}
	if got["outside"] != hostguard.ReasonOutsideServiceCIDRs || got["loop"] != hostguard.ReasonSpecial {
		t.Errorf("refusals %+v", g.RefusedClusterIPs)
	}
	if len(g.RefusedServiceCIDRs) != 1 || g.RefusedServiceCIDRs[0].CIDR.String() != "127.0.0.0/8" || g.ServiceCIDRsFrom != "config" {
		t.Errorf("ranges: %+v", g)
	}
}
