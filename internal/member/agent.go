package member

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bridge-agent/bridge-agent/internal/atomicfile"
)

// Options configure a host's Agent.
type Options struct {
	// Client is a clientset of the host's own credentials, apart from the
	// informers' (its own rate limit: a heartbeat never waits behind a list).
	Client kubernetes.Interface
	Host   string
	// TokenFile is the token the kubeconfig's user reads; the agent
	// replaces it with each renewed token.
	TokenFile     string
	TokenLifetime time.Duration
	// RenewPercent is the share of a token's lifetime after which it is renewed.
	RenewPercent  int
	RenewInterval time.Duration
	LeaseDuration time.Duration
	// Facts returns the host's facts for the Lease; it must be safe to
	// call from another goroutine.
	Facts  func() Facts
	Logger *slog.Logger
}

// Status is the host's membership as `bridge-agent status` shows it.
type Status struct {
	Host           string `json:"host"`
	ServiceAccount string `json:"serviceAccount"`
	TokenFile      string `json:"tokenFile"`
	// TokenIssued and TokenExpiry are the current token's; NextRenewal is
	// when the agent renews it.
	TokenIssued  time.Time `json:"tokenIssued,omitzero"`
	TokenExpiry  time.Time `json:"tokenExpiry,omitzero"`
	NextRenewal  time.Time `json:"nextRenewal,omitzero"`
	LastRenewal  time.Time `json:"lastRenewal,omitzero"`
	Renewals     int       `json:"renewals"`
	RenewError   string    `json:"renewError,omitempty"`
	Lease        string    `json:"lease"`
	LeaseRenewed time.Time `json:"leaseRenewed,omitzero"`
	LeaseError   string    `json:"leaseError,omitempty"`
	// Unauthorized is true while the API server refuses the host's token:
	// the host was removed, or its token expired.
	Unauthorized bool `json:"unauthorized,omitempty"`
	// Expired is true once the token expired without a renewal.
	Expired bool `json:"expired,omitempty"`
}

// Agent renews a host's token and its heartbeat Lease.
type Agent struct {
	o       Options
	log     *slog.Logger
	expiry  prometheus.Gauge
	renews  *prometheus.CounterVec
	beats   *prometheus.CounterVec
	lastHB  prometheus.Gauge
	mu      sync.Mutex
	st      Status
	lease   *coordinationv1.Lease // the last Lease written, for the next update
	lastErr map[string]string     // the last error logged, per loop
}

// NewAgent returns the Agent of host o.Host; Run runs it.
func NewAgent(o Options) *Agent {
	a := &Agent{
		o:   o,
		log: o.Logger,
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_agent_credential_expiry_timestamp_seconds",
			Help: "Unix time at which the host's current token expires.",
		}),
		renews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_credential_renewals_total",
			Help: "Renewals of the host's token through the TokenRequest API, by result.",
		}, []string{"result"}),
		beats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_agent_heartbeats_total",
			Help: "Renewals of the host's Lease, by result.",
		}, []string{"result"}),
		lastHB: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_agent_last_heartbeat_timestamp_seconds",
			Help: "Unix time of the last successful renewal of the host's Lease.",
		}),
		lastErr: map[string]string{},
	}
	for _, r := range []string{"success", "error"} {
		a.renews.WithLabelValues(r)
		a.beats.WithLabelValues(r)
	}
	a.st = Status{
		Host:           o.Host,
		ServiceAccount: Namespace + "/" + ObjectName(o.Host),
		TokenFile:      o.TokenFile,
		Lease:          Namespace + "/" + ObjectName(o.Host),
	}
	if c, err := ReadToken(o.TokenFile); err == nil {
		a.setToken(c)
	}
	return a
}

// Collectors returns the agent's metrics.
func (a *Agent) Collectors() []prometheus.Collector {
	return []prometheus.Collector{a.expiry, a.renews, a.beats, a.lastHB}
}

// MemberStatus returns the host's membership status.
func (a *Agent) MemberStatus() *Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.st
	st.Expired = !st.TokenExpiry.IsZero() && !time.Now().Before(st.TokenExpiry)
	return &st
}

// Run renews the token and the Lease until ctx ends.
func (a *Agent) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { a.runTokens(ctx) })
	wg.Go(func() { a.runLease(ctx) })
	wg.Wait()
}

func (a *Agent) setToken(c *Claims) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.st.TokenIssued, a.st.TokenExpiry = c.IssuedAt, c.Expiry
	a.st.NextRenewal = c.RenewAt(a.o.RenewPercent)
	a.expiry.Set(float64(c.Expiry.Unix()))
}

// runTokens renews the token each time RenewPercent of its lifetime has
// passed, retrying a failure at a tenth of the time left (5 s to 1 min).
func (a *Agent) runTokens(ctx context.Context) {
	for {
		var wait time.Duration
		c, err := ReadToken(a.o.TokenFile)
		if err == nil {
			a.setToken(c)
			wait = time.Until(c.RenewAt(a.o.RenewPercent))
		}
		if err == nil && wait > 0 {
			if !sleep(ctx, wait) {
				return
			}
			// Someone may have replaced the token meanwhile (a new join).
			continue
		}
		if err == nil {
			err = a.renew(ctx, c)
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			continue
		}
		retry := time.Minute
		if c != nil {
			retry = min(max(time.Until(c.Expiry)/10, 5*time.Second), time.Minute)
		}
		a.report("token", err, "cannot renew the host's token; retrying", "retry", retry)
		if !sleep(ctx, retry) {
			return
		}
	}
}

// renew requests a new token and replaces the token file with it.
func (a *Agent) renew(ctx context.Context, old *Claims) error {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	token, c, err := requestToken(rctx, a.o.Client, a.o.Host, a.o.TokenLifetime)
	if err == nil {
		err = atomicfile.WriteFile(a.o.TokenFile, []byte(token), 0o600)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		err = explainAPIError(err, a.o.Host)
		if !time.Now().Before(old.Expiry) {
			err = fmt.Errorf("%w; %w", err, &ExpiredError{Host: a.o.Host, Expiry: old.Expiry, Now: time.Now()})
		}
		a.renews.WithLabelValues("error").Inc()
		a.st.RenewError = err.Error()
		a.st.Unauthorized = errors.Is(err, ErrUnauthorized)
		return err
	}
	a.renews.WithLabelValues("success").Inc()
	a.st.RenewError, a.st.Unauthorized = "", false
	a.st.LastRenewal = time.Now()
	a.st.Renewals++
	a.st.TokenIssued, a.st.TokenExpiry, a.st.NextRenewal = c.IssuedAt, c.Expiry, c.RenewAt(a.o.RenewPercent)
	a.expiry.Set(float64(c.Expiry.Unix()))
	a.log.Info("host token renewed", "host", a.o.Host, "expires", c.Expiry.UTC().Format(time.RFC3339), "nextRenewal", a.st.NextRenewal.UTC().Format(time.RFC3339))
	a.lastErr["token"] = ""
	return nil
}

// runLease renews the Lease every RenewInterval.
func (a *Agent) runLease(ctx context.Context) {
	t := time.NewTicker(a.o.RenewInterval)
	defer t.Stop()
	for {
		err := a.heartbeat(ctx)
		if ctx.Err() != nil {
			return
		}
		a.mu.Lock()
		if err != nil {
			a.beats.WithLabelValues("error").Inc()
			err = explainAPIError(err, a.o.Host)
			a.st.LeaseError = err.Error()
			if errors.Is(err, ErrUnauthorized) {
				a.st.Unauthorized = true
			}
		} else {
			a.beats.WithLabelValues("success").Inc()
			a.st.LeaseError = ""
			a.st.LeaseRenewed = time.Now()
			a.lastHB.Set(float64(a.st.LeaseRenewed.UnixNano()) / 1e9)
			if a.st.RenewError == "" {
				a.st.Unauthorized = false
			}
		}
		a.mu.Unlock()
		a.report("lease", err, "cannot renew the host's Lease; retrying", "every", a.o.RenewInterval)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// heartbeat writes the Lease: an update of the last one written, or a get
// (or create) when there is none or it changed under the agent.
func (a *Agent) heartbeat(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, max(a.o.RenewInterval, 5*time.Second))
	defer cancel()
	facts := a.o.Facts()
	a.mu.Lock()
	facts.TokenExpiry = a.st.TokenExpiry
	l := a.lease
	a.mu.Unlock()
	leases := a.o.Client.CoordinationV1().Leases(Namespace)
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if l == nil {
			l, err = leases.Get(ctx, ObjectName(a.o.Host), metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				l = &coordinationv1.Lease{}
				setLease(l, a.o.Host, a.o.LeaseDuration, time.Now(), facts)
				l, err = leases.Create(ctx, l, metav1.CreateOptions{})
				if err == nil {
					break
				}
			}
			if err != nil {
				l = nil
				break
			}
		}
		l = l.DeepCopy()
		setLease(l, a.o.Host, a.o.LeaseDuration, time.Now(), facts)
		l, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		if err == nil {
			break
		}
		l = nil
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			break
		}
	}
	a.mu.Lock()
	a.lease = l
	a.mu.Unlock()
	return err
}

// report logs err once while it stays the same, and once when it is gone.
func (a *Agent) report(loop string, err error, msg string, args ...any) {
	a.mu.Lock()
	prev := a.lastErr[loop]
	cur := ""
	if err != nil {
		cur = err.Error()
	}
	a.lastErr[loop] = cur
	a.mu.Unlock()
	switch {
	case cur != "" && cur != prev:
		a.log.Warn(msg, append(args, "host", a.o.Host, "err", err)...)
	case cur == "" && prev != "":
		a.log.Info("host "+loop+" renewed again", "host", a.o.Host)
	}
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
