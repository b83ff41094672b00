package proxy

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
)

// Each trigger time handed to ObserveProgramming is one sample of the
// programming latency, measured to when the sync programmed it.
func TestObserveProgramming(t *testing.T) {
	p := newNFTables(NFTablesOptions{}, nil, nil)
	done := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	p.ObserveProgramming(map[cluster.ServiceKey][]time.Time{
		{Namespace: "shop", Name: "orders"}:  {done.Add(-20 * time.Millisecond), done.Add(-2 * time.Second)},
		{Namespace: "shop", Name: "billing"}: {done.Add(-100 * time.Millisecond)},
	}, done)
	p.ObserveProgramming(nil, done) // a sync that programmed no change
	var m dto.Metric
	if err := p.metrics.programming.Write(&m); err != nil {
		t.Fatal(err)
	}
	h := m.GetHistogram()
	if got, want := h.GetSampleCount(), uint64(3); got != want {
		t.Errorf("samples = %d, want %d", got, want)
	}
	if got, want := h.GetSampleSum(), 2.12; got < want-1e-9 || got > want+1e-9 {
		t.Errorf("sum = %v s, want %v s", got, want)
	}
}
