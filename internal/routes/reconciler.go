package routes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/hostguard"
)

// Options configure a Reconciler.
type Options struct {
	Spec Spec
	// Protocol marks the agent's routes.
	Protocol int
	// ServiceCIDRs are the configured Service ranges, shown in status when
	// the cluster publishes none.
	ServiceCIDRs []netip.Prefix
	// Resolvers returns the host's DNS resolvers for the host guard (nil:
	// none known).
	Resolvers func() []netip.Addr
	Logger    *slog.Logger
}

// OptionsFromConfig converts a validated configuration.
func OptionsFromConfig(c *config.Config) (Options, error) {
	r := c.Routes
	o := Options{
		Spec: Spec{Mode: r.Mode, Table: r.Table, Device: r.Device,
			MinPrefixLen4: r.MinPrefixLength.IPv4, MinPrefixLen6: r.MinPrefixLength.IPv6},
		Protocol: r.Protocol,
	}
	for _, s := range r.AllowedCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return o, fmt.Errorf("routes.allowedCIDRs: %w", err)
		}
		o.Spec.AllowedCIDRs = append(o.Spec.AllowedCIDRs, p.Masked())
	}
	if err := config.CheckRouteProtocol(r.Protocol); err != nil {
		return o, fmt.Errorf("routes.protocol %d: %w", r.Protocol, err)
	}
	for _, s := range r.CIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return o, fmt.Errorf("routes.cidrs: %w", err)
		}
		o.Spec.CIDRs = append(o.Spec.CIDRs, p.Masked())
	}
	for _, s := range r.Gateways {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return o, fmt.Errorf("routes.gateways: %w", err)
		}
		o.Spec.Gateways = append(o.Spec.Gateways, a.Unmap())
	}
	for _, s := range c.ServiceCIDRs {
		if p, err := netip.ParsePrefix(s); err == nil {
			o.ServiceCIDRs = append(o.ServiceCIDRs, p.Masked())
		}
	}
	return o, nil
}

// Reconciler is the routes consumer: on every sync it makes the host's
// routes of its protocol match the desired routes. It implements
// daemon.Consumer, daemon.StatusReporter and daemon.MetricsProvider.
type Reconciler struct {
	h       netlinkHandle
	o       Options
	log     *slog.Logger
	metrics *metrics
	closer  io.Closer

	syncMu   sync.Mutex         // one sync at a time
	reported map[string]Problem // problems logged, by key

	mu     sync.Mutex // guards status
	status Status
}

// New returns the routes consumer for this host's network namespace;
// resolvers lists the host's DNS resolvers for the host guard (nil: none).
func New(c *config.Config, log *slog.Logger, resolvers func() []netip.Addr) (*Reconciler, error) {
	o, err := OptionsFromConfig(c)
	if err != nil {
		return nil, err
	}
	o.Logger, o.Resolvers = log, resolvers
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("routes: open netlink: %w", err)
	}
	// A netlink request never takes long; a stuck one must not stall syncs.
	if err := h.SetSocketTimeout(10 * time.Second); err != nil {
		h.Close()
		return nil, fmt.Errorf("routes: netlink timeout: %w", err)
	}
	r := newReconciler(h, o)
	r.closer = closerFunc(h.Close)
	return r, nil
}

type closerFunc func()

func (f closerFunc) Close() error { f(); return nil }

// newReconciler returns a Reconciler on h.
func newReconciler(h netlinkHandle, o Options) *Reconciler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Spec.Table == 0 {
		o.Spec.Table = mainTable
	}
	return &Reconciler{
		h:        h,
		o:        o,
		log:      o.Logger,
		metrics:  newMetrics(),
		reported: map[string]Problem{},
		status: Status{
			Mode: o.Spec.Mode, Protocol: o.Protocol, Table: o.Spec.Table,
			Routes: []Route{}, ServiceCIDRs: o.ServiceCIDRs, ServiceCIDRsFrom: fromConfig(o.ServiceCIDRs),
		},
	}
}

// Close releases the netlink socket.
func (r *Reconciler) Close() error {
	if r.closer != nil {
		return r.closer.Close()
	}
	return nil
}

// Name implements daemon.Consumer.
func (r *Reconciler) Name() string { return "routes" }

// Sync implements daemon.Consumer: it computes the desired routes from snap
// and the host's addresses, refuses those that conflict with someone
// else's routes, and adds, replaces and deletes routes of its protocol
// until the host matches. Problems with single routes are reported, not
// returned; kernel errors are returned after every other change was tried.
func (r *Reconciler) Sync(_ context.Context, snap *cluster.Snapshot) error {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	res, err := r.sync(snap)
	if err != nil {
		r.metrics.syncErrors.Inc()
	}
	if res.compared {
		r.report(snap, res)
	}
	return err
}

// result is the outcome of one sync.
type result struct {
	installed []Route // desired routes in place after the sync
	problems  []Problem
	changes   Changes
	// compared is set once the host was read and compared; before that
	// the sync failed without learning anything worth reporting.
	compared bool
}

func (r *Reconciler) sync(snap *cluster.Snapshot) (result, error) {
	var res result
	addrs, err := hostguard.ListAddrs(r.h)
	if err != nil {
		return res, err
	}
	var nodes []*cluster.Node
	if snap != nil {
		nodes = snap.SortedNodes()
	}
	all, err := listRoutes(r.h)
	if err != nil {
		return res, err
	}
	var resolvers []netip.Addr
	if r.o.Resolvers != nil {
		resolvers = r.o.Resolvers()
	}
	want, problems := Desired(r.o.Spec, nodes, *hostguard.FromNetlink(addrs, all, resolvers))
	links := map[string]int{}
	if dev := r.o.Spec.Device; dev != "" && len(want) > 0 {
		l, err := r.h.LinkByName(dev)
		switch {
		case isLinkNotFound(err):
			for _, w := range want {
				problems = append(problems, Problem{Reason: ReasonNoDevice, Node: w.Node, CIDR: w.Dst, Detail: "device " + dev + " does not exist"})
			}
			want = nil
		case err != nil:
			return res, fmt.Errorf("find device %s: %w", dev, err)
		default:
			links[dev] = l.Attrs().Index
		}
	}
	names := listLinkNames(r.h)
	var ours []netlink.Route
	var foreign []Foreign
	for i := range all {
		kr := &all[i]
		switch {
		case int(kr.Protocol) == r.o.Protocol:
			ours = append(ours, *kr)
		case tableOf(kr) == r.o.Spec.Table:
			foreign = append(foreign, Foreign{Dst: dstOf(kr), Table: tableOf(kr), Desc: describe(kr, names)})
		}
	}
	want, conflicts := Refuse(want, foreign)
	res.problems = append(problems, conflicts...)
	sortProblems(res.problems)

	p := makePlan(want, ours, r.o.Protocol, links)
	res.compared = true
	failed := map[routeKey]bool{}
	var errs []error
	apply := func(op string, nr *netlink.Route, fn func(*netlink.Route) error, count *int) {
		if err := fn(nr); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", op, describe(nr, names), err))
			failed[routeKey{tableOf(nr), dstOf(nr)}] = true
			return
		}
		*count++
		r.log.Debug("route "+op, "route", describe(nr, names), "table", tableName(tableOf(nr)))
	}
	// Adds and replaces first, deletes last: a destination moving between
	// tables or metrics is never without a route.
	for _, nr := range p.add {
		apply("add", nr, r.h.RouteAdd, &res.changes.Added)
	}
	for _, nr := range p.replace {
		apply("replace", nr, r.h.RouteReplace, &res.changes.Replaced)
	}
	for _, nr := range p.del {
		apply("delete", nr, r.h.RouteDel, &res.changes.Deleted)
	}
	for _, w := range want {
		if !failed[routeKey{w.Table, w.Dst}] {
			res.installed = append(res.installed, w)
		}
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("routes: %w", errors.Join(errs...))
	}
	return res, nil
}

// isLinkNotFound reports whether err says a link does not exist.
func isLinkNotFound(err error) bool {
	var notFound netlink.LinkNotFoundError
	return errors.As(err, &notFound) || errors.Is(err, unix.ENODEV)
}

// report updates status and metrics, and logs problems when they appear
// and when they go away.
func (r *Reconciler) report(snap *cluster.Snapshot, res result) {
	current := map[string]Problem{}
	for _, p := range res.problems {
		current[p.key()] = p
		if old, ok := r.reported[p.key()]; !ok || old.Detail != p.Detail {
			r.log.Warn("route not installed", "reason", p.Reason, "node", p.Node, "cidr", cidrString(p.CIDR), "detail", p.Detail)
		}
	}
	for k, p := range r.reported {
		if _, ok := current[k]; !ok {
			r.log.Info("route problem resolved", "reason", p.Reason, "node", p.Node, "cidr", cidrString(p.CIDR))
		}
	}
	r.reported = current
	if c := res.changes; c.Added+c.Replaced+c.Deleted > 0 {
		r.log.Info("routes changed", "added", c.Added, "replaced", c.Replaced, "deleted", c.Deleted,
			"installed", len(res.installed), "problems", len(res.problems))
	}
	r.metrics.observe(res)

	podCIDRs, serviceCIDRs, from := clusterRanges(snap, r.o.ServiceCIDRs)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.Routes = res.installed
	if r.status.Routes == nil {
		r.status.Routes = []Route{}
	}
	r.status.Problems = res.problems
	r.status.LastChanges = res.changes
	r.status.PodCIDRs, r.status.ServiceCIDRs, r.status.ServiceCIDRsFrom = podCIDRs, serviceCIDRs, from
	r.status.LastSync = time.Now()
}

// clusterRanges returns the cluster's pod ranges (every Node's pod CIDRs)
// and Service ranges (from the cluster's ServiceCIDRs, else from the
// configuration) and where the latter came from.
func clusterRanges(snap *cluster.Snapshot, configured []netip.Prefix) (pods, services []netip.Prefix, from string) {
	pods = []netip.Prefix{}
	if snap != nil {
		for _, n := range snap.Nodes {
			pods = append(pods, n.PodCIDRs...)
		}
	}
	slices.SortFunc(pods, comparePrefix)
	pods = slices.Compact(pods)
	if snap != nil && len(snap.ServiceCIDRs) > 0 {
		return pods, snap.ServiceCIDRs, "cluster"
	}
	return pods, configured, fromConfig(configured)
}

func fromConfig(p []netip.Prefix) string {
	if len(p) == 0 {
		return ""
	}
	return "config"
}

func cidrString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

// Status implements daemon.StatusReporter.
func (r *Reconciler) Status() any {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.status
	return &st
}

// Collectors implements daemon.MetricsProvider.
func (r *Reconciler) Collectors() []prometheus.Collector { return r.metrics.collectors() }
