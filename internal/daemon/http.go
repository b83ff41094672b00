package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

func (d *Daemon) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	ok, msg := d.healthy()
	if !ok {
		http.Error(w, msg, http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, msg)
}

func (d *Daemon) serveReadyz(w http.ResponseWriter, _ *http.Request) {
	d.mu.Lock()
	ready, last := d.ready, d.lastSync
	d.mu.Unlock()
	if !ready {
		reason := "waiting for the API server"
		if d.watcher.HasSynced() {
			reason = "first sync not done"
			if last.Error != "" {
				reason += ": " + last.Error
			}
		} else if err, _ := d.watcher.LastError(); err != nil {
			reason += ": " + err.Error()
		}
		http.Error(w, "not ready: "+reason, http.StatusServiceUnavailable)
		return
	}
	d.mu.Lock()
	restored := d.snap != nil && !d.snap.Restored.IsZero()
	var savedAt time.Time
	if restored {
		savedAt = d.snap.Restored
	}
	d.mu.Unlock()
	if restored {
		reason := "API server unreachable"
		if err, _ := d.watcher.LastError(); err != nil {
			reason += ": " + err.Error()
		}
		fmt.Fprintf(w, "degraded: serving the last snapshot known good, saved %s ago (%s)\n", time.Since(savedAt).Round(time.Second), reason)
		return
	}
	fmt.Fprintf(w, "ready (snapshot %d, synced %s ago)\n", last.SnapshotVersion, time.Since(last.Time).Round(time.Millisecond))
}

func (d *Daemon) serveStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(d.Status())
}
