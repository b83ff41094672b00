package daemon

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"
)

// reportingConsumer has status details of its own.
type reportingConsumer struct{ recordingConsumer }

func (c *reportingConsumer) Status() any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return map[string]int{"calls": c.calls}
}

func TestConsumerStatusDetails(t *testing.T) {
	cons := &reportingConsumer{}
	d, _, stop := newTestDaemon(t, cons)
	defer stop()
	waitUntil(t, 5*time.Second, func() bool { return d.Status().Ready })

	rec := httptest.NewRecorder()
	d.serveStatus(rec, httptest.NewRequest("GET", "/status", nil))
	var st Status
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	var got map[string]int
	if len(st.Consumers) != 1 || json.Unmarshal(st.Consumers[0].Details, &got) != nil || got["calls"] < 1 {
		t.Errorf("details over the status socket: %+v", st.Consumers)
	}

	// A consumer without the hook has no details.
	plain, _, stop2 := newTestDaemon(t, &recordingConsumer{})
	defer stop2()
	if dt := plain.Status().Consumers[0].Details; dt != nil {
		t.Errorf("details of a consumer without StatusReporter: %s", dt)
	}
}
