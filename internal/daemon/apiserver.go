package daemon

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// apiCheckEvery is how often a ready agent refreshes its STATUS= line and,
// while an API server error is recorded, asks whether it is back;
// apiProbeEvery how often it asks while none is.
const (
	apiCheckEvery = 2 * time.Second
	apiProbeEvery = 10 * time.Second
)

// followAPIServer keeps the STATUS= line (systemctl status) true after the
// first sync: an API server outage shows there, with since when and why,
// while the agent serves the last rules, and its end clears it. The
// informers do not say when their watch cannot reconnect (client-go
// retries a refused connection silently, to resume the watch where it
// ended), so a ready agent asks for the API server's version every
// apiProbeEvery; and a reconnect that brings no change causes no sync that
// would clear a recorded error, so while one is recorded a list of one
// Service asks whether the API server answers the agent again.
func (d *Daemon) followAPIServer(ctx context.Context) {
	t := time.NewTicker(apiCheckEvery)
	defer t.Stop()
	down := false
	var lastProbe time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		ready := d.ready
		d.mu.Unlock()
		if !ready {
			continue // waitForSync reports the start
		}
		err, at := d.watcher.LastError()
		switch {
		case err != nil && d.apiAnswers(ctx):
			d.watcher.ClearError()
			err = nil
		case err == nil && time.Since(lastProbe) >= apiProbeEvery:
			lastProbe = time.Now()
			if perr := d.probeAPI(ctx); perr != nil {
				d.watcher.RecordError(perr)
				err, at = perr, time.Now()
			}
		}
		switch {
		case err != nil && !down:
			down = true
			d.log.Warn("API server unreachable; serving the last rules", "since", at.Format(time.TimeOnly), "err", err)
		case err == nil && down:
			down = false
			d.log.Info("API server reachable again")
		}
		d.updateStatus()
	}
}

// apiAnswers reports whether the API server answers a list of Services
// with the agent's credentials.
func (d *Daemon) apiAnswers(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ns := ""
	if len(d.cfg.Scope.Namespaces) > 0 {
		ns = d.cfg.Scope.Namespaces[0]
	}
	_, err := d.client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{Limit: 1})
	return err == nil
}
