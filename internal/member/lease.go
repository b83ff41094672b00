package member

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Annotations of a host's Lease: the facts its agent reports.
const (
	AnnotationVersion     = "bridge-agent.io/version"
	AnnotationBackend     = "bridge-agent.io/proxy-backend"
	AnnotationServices    = "bridge-agent.io/services"
	AnnotationRules       = "bridge-agent.io/rules"
	AnnotationRoutes      = "bridge-agent.io/routes"
	AnnotationReady       = "bridge-agent.io/ready"
	AnnotationLastError   = "bridge-agent.io/last-error"
	AnnotationTokenExpiry = "bridge-agent.io/token-expiry"
)

// maxErrorLen bounds the last error carried in an annotation.
const maxErrorLen = 1024

// Facts are what a host reports about itself in its Lease.
type Facts struct {
	Version string `json:"version"`
	// Backend is the proxy backend (nftables, iptables) or "none".
	Backend  string `json:"backend"`
	Services int    `json:"services"`
	// Rules counts the proxy's rules, Routes the pod routes installed.
	Rules  int  `json:"rules"`
	Routes int  `json:"routes"`
	Ready  bool `json:"ready"`
	// LastError is the newest sync or API error, "" when none.
	LastError   string    `json:"lastError,omitempty"`
	TokenExpiry time.Time `json:"tokenExpiry,omitzero"`
}

// annotations renders facts as Lease annotations.
func (f Facts) annotations() map[string]string {
	a := map[string]string{
		AnnotationVersion:  f.Version,
		AnnotationBackend:  f.Backend,
		AnnotationServices: strconv.Itoa(f.Services),
		AnnotationRules:    strconv.Itoa(f.Rules),
		AnnotationRoutes:   strconv.Itoa(f.Routes),
		AnnotationReady:    strconv.FormatBool(f.Ready),
		AnnotationLastError: func() string {
			if len(f.LastError) > maxErrorLen {
				return f.LastError[:maxErrorLen] + "..."
			}
			return f.LastError
		}(),
	}
	if !f.TokenExpiry.IsZero() {
		a[AnnotationTokenExpiry] = f.TokenExpiry.UTC().Format(time.RFC3339)
	}
	return a
}

// factsFrom reads the facts back from a Lease's annotations.
func factsFrom(a map[string]string) Facts {
	atoi := func(k string) int { n, _ := strconv.Atoi(a[k]); return n }
	f := Facts{
		Version:   a[AnnotationVersion],
		Backend:   a[AnnotationBackend],
		Services:  atoi(AnnotationServices),
		Rules:     atoi(AnnotationRules),
		Routes:    atoi(AnnotationRoutes),
		Ready:     a[AnnotationReady] == "true",
		LastError: a[AnnotationLastError],
	}
	f.TokenExpiry, _ = time.Parse(time.RFC3339, a[AnnotationTokenExpiry])
	return f
}

// setLease makes l the heartbeat of host at now with facts.
func setLease(l *coordinationv1.Lease, host string, duration time.Duration, now time.Time, f Facts) {
	l.Name, l.Namespace = ObjectName(host), Namespace
	if l.Labels == nil {
		l.Labels = map[string]string{}
	}
	l.Labels[HostLabel] = host
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	for k, v := range f.annotations() {
		l.Annotations[k] = v
	}
	if f.TokenExpiry.IsZero() {
		delete(l.Annotations, AnnotationTokenExpiry)
	}
	holder := host
	secs := int32(duration / time.Second)
	mt := metav1.NewMicroTime(now)
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != holder || l.Spec.AcquireTime == nil {
		l.Spec.AcquireTime = &mt
	}
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &holder, &secs, &mt
}

// HostInfo is one host as `bridge-agent hosts` shows it.
type HostInfo struct {
	Name string `json:"name"`
	// State is "alive", "expired" (the Lease was not renewed within its
	// duration), "not joined" (no Lease yet) or "removed" (a Lease without
	// its ServiceAccount).
	State         string        `json:"state"`
	LastHeartbeat time.Time     `json:"lastHeartbeat,omitzero"`
	LeaseDuration time.Duration `json:"leaseDuration,omitempty"`
	Facts
}

// Host states.
const (
	StateAlive     = "alive"
	StateExpired   = "expired"
	StateNotJoined = "not joined"
	StateRemoved   = "removed"
)

// ListHosts returns every host of the cluster, from the ServiceAccounts and
// Leases labelled with a host name, sorted by name.
func ListHosts(ctx context.Context, cs kubernetes.Interface, now time.Time) ([]HostInfo, error) {
	opts := metav1.ListOptions{LabelSelector: HostLabel}
	sas, err := cs.CoreV1().ServiceAccounts(Namespace).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	leases, err := cs.CoordinationV1().Leases(Namespace).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	hosts := map[string]*HostInfo{}
	for _, sa := range sas.Items {
		h := sa.Labels[HostLabel]
		if sa.Name == ObjectName(h) {
			hosts[h] = &HostInfo{Name: h, State: StateNotJoined}
		}
	}
	for i := range leases.Items {
		l := &leases.Items[i]
		h := l.Labels[HostLabel]
		if l.Name != ObjectName(h) {
			continue
		}
		hi := hosts[h]
		if hi == nil {
			hi = &HostInfo{Name: h, State: StateRemoved}
			hosts[h] = hi
		}
		hi.Facts = factsFrom(l.Annotations)
		if l.Spec.RenewTime != nil {
			hi.LastHeartbeat = l.Spec.RenewTime.Time
		}
		if l.Spec.LeaseDurationSeconds != nil {
			hi.LeaseDuration = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
		}
		if hi.State != StateRemoved {
			hi.State = leaseState(hi.LastHeartbeat, hi.LeaseDuration, now)
		}
	}
	out := make([]HostInfo, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, *h)
	}
	slices.SortFunc(out, func(a, b HostInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// leaseState is alive while renewed+duration lies ahead of now.
func leaseState(renewed time.Time, duration time.Duration, now time.Time) string {
	if renewed.IsZero() || !now.Before(renewed.Add(duration)) {
		return StateExpired
	}
	return StateAlive
}

// WriteHosts prints hosts as a table; expired hosts are marked in capitals.
func WriteHosts(w io.Writer, hosts []HostInfo, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tVERSION\tLAST HEARTBEAT\tREADY\tBACKEND\tSERVICES\tRULES\tROUTES\tTOKEN EXPIRES\tLAST ERROR")
	for _, h := range hosts {
		state := h.State
		if state == StateExpired {
			state = "EXPIRED"
		}
		dash := func(s string) string {
			if s == "" {
				return "-"
			}
			return s
		}
		hb, ready, svc, rules, routes := "-", "-", "-", "-", "-"
		if !h.LastHeartbeat.IsZero() {
			hb = ago(now.Sub(h.LastHeartbeat)) + " ago"
			ready = strconv.FormatBool(h.Ready)
			svc, rules, routes = strconv.Itoa(h.Services), strconv.Itoa(h.Rules), strconv.Itoa(h.Routes)
		}
		tok := "-"
		if !h.TokenExpiry.IsZero() {
			if d := h.TokenExpiry.Sub(now); d > 0 {
				tok = "in " + ago(d)
			} else {
				tok = "EXPIRED " + ago(-d) + " ago"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Name, state, dash(h.Version), hb, ready,
			dash(h.Backend), svc, rules, routes, tok, dash(oneLine(h.LastError, 60)))
	}
	return tw.Flush()
}

// ago rounds d for a human: seconds under two minutes, then minutes, hours, days.
func ago(d time.Duration) string {
	switch {
	case d < 2*time.Minute:
		return d.Round(time.Second).String()
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

// oneLine shortens s to one line of at most n characters.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}
