package daemon

import "encoding/json"

// StatusReporter is implemented by consumers with more to show than their
// last error: Status returns a JSON-encodable value, shown as the
// consumer's Details in `bridge-agent status`. It is called from the status
// handler, concurrently with Sync.
type StatusReporter interface {
	Status() any
}

// details encodes a consumer's status details, or returns nil when it has
// none.
func details(c Consumer) json.RawMessage {
	sr, ok := c.(StatusReporter)
	if !ok {
		return nil
	}
	b, err := json.Marshal(sr.Status())
	if err != nil {
		b, _ = json.Marshal(map[string]string{"error": "encode status: " + err.Error()})
	}
	return b
}

// Summarizer is implemented by consumers that add a few words to the
// agent's one-line state for systemd (STATUS=, `systemctl status`), such as
// "proxy nftables".
type Summarizer interface {
	Summary() string
}
