package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// SharedNodesOptions configure the shared node route table.
type SharedNodesOptions struct {
	// Namespace and Name of the ConfigMap holding the table and of the
	// Lease that elects its publisher (both have the same name).
	Namespace string
	Name      string
	// Publish makes this agent a candidate: while it holds the Lease it
	// watches Nodes and writes the table. It needs write access to those
	// two objects (deploy/node-routes-writer.yaml).
	Publish bool
	// Identity is this agent's name in the Lease (default: the host name
	// and a random suffix, unique per run).
	Identity string
	// LeaseDuration is how long a publisher's Lease lasts without renewal
	// (default 60s). A reader checks the Lease as often; it takes the table
	// as stale after one and a half such periods without a renewal (or
	// with the Lease released or held by an agent that has not written
	// the table) plus a grace of one to two periods (see freshLocked).
	LeaseDuration time.Duration
	// Logger logs the source switches and the publisher's writes.
	Logger *slog.Logger
}

// Node sources a SharedNodes reports (Source).
const (
	SourceTable = "table"
	SourceNodes = "nodes"
)

// SharedNodes feeds a Tracker's Nodes from the shared node route table
// (see nodetable.go) while that table is fresh, and from a Node informer
// while it is absent, invalid or stale, or while this agent is the elected
// publisher. Fresh means: a valid table, written by the agent that holds
// the Lease, whose renewals this reader saw lately (by its own clock: no
// clock skew matters); see freshLocked for the grace a good table keeps.
type SharedNodes struct {
	client   kubernetes.Interface
	t        *Tracker
	o        SharedNodesOptions
	log      *slog.Logger
	watchErr cache.WatchErrorHandlerWithContext

	cmF      informers.SharedInformerFactory
	cmSynced cache.InformerSynced
	poke     chan struct{}
	started  time.Time

	mu         sync.Mutex
	table      *nodeTable // the last valid table, nil when absent
	tableNodes []*Node
	tableErr   string
	cmFailed   bool      // reading the table failed at least once
	holder     string    // the Lease's holder when last read
	leaseRV    string    // its resource version then
	leaseSeen  time.Time // when a renewal was last seen (local clock)
	leaseRead  bool      // the Lease was read (or found absent) once
	leaseErr   string
	goodAt     time.Time     // when the table was last known good
	grace      time.Duration // how long it stays usable after (see freshLocked)
	leading    bool
	direct     *directNodes
	applied    *nodeTable // the table whose Nodes the Tracker holds
	synced     bool
	source     string
	why        string
	published  []*Node // the Nodes of the last table this agent wrote
	generation uint64
	writes     uint64
	writeErr   string
}

// directNodes is a running Node informer.
type directNodes struct {
	stop     context.CancelFunc
	f        informers.SharedInformerFactory
	synced   cache.InformerSynced
	active   atomic.Bool
	replaced bool // the Tracker's Nodes were replaced with its list
}

// NewSharedNodes sets up the table's reader (and, with Publish, its
// publisher) for t; Run runs it.
func NewSharedNodes(client kubernetes.Interface, t *Tracker, o SharedNodesOptions, watchErr cache.WatchErrorHandlerWithContext) (*SharedNodes, error) {
	if o.Namespace == "" || o.Name == "" {
		return nil, fmt.Errorf("shared node routes: namespace and name are required")
	}
	if o.LeaseDuration <= 0 {
		o.LeaseDuration = 60 * time.Second
	}
	if o.Identity == "" {
		host, _ := os.Hostname()
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		o.Identity = host + "_" + hex.EncodeToString(b)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &SharedNodes{client: client, t: t, o: o, log: o.Logger, watchErr: watchErr, poke: make(chan struct{}, 1),
		grace: o.LeaseDuration + time.Duration(mrand.Int64N(int64(o.LeaseDuration)))}
	s.cmF = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(o.Namespace),
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
			lo.FieldSelector = fields.OneTermEqualSelector("metadata.name", o.Name).String()
		}))
	inf := s.cmF.Core().V1().ConfigMaps().Informer()
	if err := inf.SetWatchErrorHandlerWithContext(s.tableWatchError); err != nil {
		return nil, fmt.Errorf("shared node routes: set error handler: %w", err)
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.setTable(obj) },
		UpdateFunc: func(_, obj any) { s.setTable(obj) },
		DeleteFunc: func(any) { s.setTable(nil) },
	})
	if err != nil {
		return nil, fmt.Errorf("shared node routes: add handler: %w", err)
	}
	s.cmSynced = reg.HasSynced
	if o.Publish {
		t.OnNodes(s.wake)
	}
	return s, nil
}

func (s *SharedNodes) wake() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// tableWatchError notes that the table cannot be read (an older
// deploy/rbac.yaml without the reader Role, an API server down), so that
// the agent watches Nodes at once instead of waiting; the reflector
// retries by itself.
func (s *SharedNodes) tableWatchError(ctx context.Context, r *cache.Reflector, err error) {
	msg := fmt.Sprintf("cannot read configmap %s/%s: %v", s.o.Namespace, s.o.Name, err)
	s.mu.Lock()
	first := !s.cmFailed
	s.cmFailed = true
	if s.table == nil {
		s.tableErr = msg
	}
	s.mu.Unlock()
	if first && apierrors.IsForbidden(err) {
		s.log.Warn("node routes: cannot read the shared node route table; watching Nodes instead (apply this version's deploy/rbac.yaml)", "err", err)
	}
	s.wake()
	if !apierrors.IsForbidden(err) && s.watchErr != nil {
		s.watchErr(ctx, r, err)
	}
}

// setTable records the ConfigMap as the informer delivered it (nil:
// deleted).
func (s *SharedNodes) setTable(obj any) {
	cm, _ := obj.(*v1.ConfigMap)
	s.mu.Lock()
	prevHolder := s.holder
	switch {
	case cm == nil || cm.Data[NodeTableKey] == "":
		// Absent, or created empty (deploy/node-routes-writer.yaml).
		s.table, s.tableNodes, s.tableErr = nil, nil, ""
	default:
		t, nodes, err := decodeNodeTable(cm.Data[NodeTableKey])
		if err != nil {
			s.table, s.tableNodes, s.tableErr = nil, nil, fmt.Sprintf("configmap %s/%s: %v", cm.Namespace, cm.Name, err)
		} else {
			s.table, s.tableNodes, s.tableErr = t, nodes, ""
		}
	}
	recheck := s.table != nil && s.table.Publisher != prevHolder
	s.mu.Unlock()
	if recheck {
		// A new publisher: read the Lease now rather than at the next
		// period, so a change of leader does not look like a stale table.
		go s.readLease(context.Background())
	}
	s.wake()
}

// Run reads the table and the Lease, switches between the table and a Node
// informer, and, with Publish, stands for election; until ctx ends.
func (s *SharedNodes) Run(ctx context.Context) {
	s.started = time.Now()
	s.cmF.Start(ctx.Done())
	var wg sync.WaitGroup
	wg.Go(func() { s.leaseLoop(ctx) })
	if s.o.Publish {
		wg.Go(func() { s.elect(ctx) })
	}
	var lastWrite time.Time
	due := false // something changed that the table may need to follow
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-s.poke:
			due = true
		case <-tick.C:
		}
		s.evaluate(ctx)
		if s.o.Publish && due && time.Now().After(lastWrite) {
			// At most one write a second; after a failure, one in ten.
			switch wrote, err := s.publish(ctx); {
			case err != nil:
				lastWrite = time.Now().Add(10 * time.Second)
			case wrote:
				lastWrite = time.Now().Add(time.Second)
			default:
				due = false
			}
		}
	}
	s.mu.Lock()
	if s.direct != nil {
		s.direct.active.Store(false)
		s.direct.stop()
		d := s.direct
		s.direct = nil
		s.mu.Unlock()
		d.f.Shutdown()
	} else {
		s.mu.Unlock()
	}
	s.cmF.Shutdown()
	wg.Wait()
}

// leaseLoop reads the Lease every lease duration.
func (s *SharedNodes) leaseLoop(ctx context.Context) {
	for {
		s.readLease(ctx)
		s.wake()
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.o.LeaseDuration):
		}
	}
}

// readLease reads the Lease: its holder, and whether it was renewed.
func (s *SharedNodes) readLease(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	l, err := s.client.CoordinationV1().Leases(s.o.Namespace).Get(ctx, s.o.Name, metav1.GetOptions{})
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.leaseRead = true
	switch {
	case apierrors.IsNotFound(err):
		s.holder, s.leaseRV, s.leaseErr = "", "", ""
	case err != nil:
		s.holder, s.leaseRV, s.leaseErr = "", "", err.Error()
	default:
		s.leaseErr = ""
		holder := ""
		if l.Spec.HolderIdentity != nil {
			holder = *l.Spec.HolderIdentity
		}
		if l.ResourceVersion != s.leaseRV {
			if s.leaseRV == "" {
				// First sight: trust the renewal time if it is recent by
				// this clock, give or take a lease duration.
				if l.Spec.RenewTime != nil && now.Sub(l.Spec.RenewTime.Time) < 2*s.o.LeaseDuration {
					s.leaseSeen = now
				}
			} else {
				s.leaseSeen = now
			}
		}
		s.holder, s.leaseRV = holder, l.ResourceVersion
	}
}

// freshLocked reports whether the table may be used, and why not. A table
// that was good stays usable for a grace period while its Lease says
// otherwise: a publisher restarting or handing over (the Lease released,
// another holder not yet written), an API server hiccup. Without it every
// reader of a fleet would list the Nodes at the same moment; the grace
// has a random part, so that when a publisher is gone for good the readers
// fall back one after the other.
func (s *SharedNodes) freshLocked(now time.Time) (bool, string) {
	var why string
	switch {
	case s.table == nil && s.tableErr != "":
		return false, s.tableErr
	case s.table == nil:
		return false, "the node route table is absent"
	case s.leaseErr != "":
		why = "cannot read the publisher's lease: " + s.leaseErr
	case s.holder == "":
		why = "no agent holds the publisher's lease"
	case s.table.Publisher != s.holder:
		why = fmt.Sprintf("the table was written by %s, the lease is held by %s", s.table.Publisher, s.holder)
	case now.Sub(s.leaseSeen) > s.o.LeaseDuration*3/2:
		why = "the publisher's lease has not been renewed for " + now.Sub(s.leaseSeen).Round(time.Second).String()
	}
	if why == "" {
		s.goodAt = now
		return true, ""
	}
	if !s.goodAt.IsZero() && now.Sub(s.goodAt) < s.grace {
		return true, ""
	}
	return false, why
}

// evaluate picks the source and feeds the Tracker from it.
func (s *SharedNodes) evaluate(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	decided := (s.cmSynced() || s.cmFailed) && s.leaseRead
	if !decided && time.Since(s.started) < 10*time.Second {
		return
	}
	fresh, why := s.freshLocked(time.Now())
	if s.leading {
		why = "this agent publishes the table"
	}
	if s.leading || !fresh {
		if s.direct == nil {
			s.startDirectLocked(ctx)
			s.log.Info("node routes: watching Nodes", "reason", why)
		}
		s.source, s.why = SourceNodes, why
		if !s.direct.replaced && s.direct.synced() {
			var nodes []*Node
			for _, obj := range s.direct.f.Core().V1().Nodes().Informer().GetStore().List() {
				if n, ok := obj.(*v1.Node); ok {
					nodes = append(nodes, convertNode(n))
				}
			}
			s.t.ReplaceNodes(nodes, "Nodes (listed)")
			s.direct.replaced, s.applied, s.synced = true, nil, true
			s.wake() // a publisher may write now
		}
		return
	}
	if s.direct != nil {
		d := s.direct
		d.active.Store(false)
		d.stop()
		s.direct = nil
		go d.f.Shutdown()
		s.log.Info("node routes: using the shared table; stopped watching Nodes", "publisher", s.table.Publisher, "generation", s.table.Generation)
	}
	s.source, s.why = SourceTable, ""
	if s.applied != s.table {
		s.t.ReplaceNodes(s.tableNodes, fmt.Sprintf("node route table (generation %d)", s.table.Generation))
		s.applied, s.synced = s.table, true
	}
}

// startDirectLocked starts a Node informer feeding the Tracker.
func (s *SharedNodes) startDirectLocked(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	d := &directNodes{stop: cancel, f: newNodeFactory(s.client)}
	d.active.Store(true)
	inf := d.f.Core().V1().Nodes().Informer()
	if s.watchErr != nil {
		_ = inf.SetWatchErrorHandlerWithContext(s.watchErr)
	}
	reg, err := inf.AddEventHandler(nodeHandler(s.t, d.active.Load))
	if err != nil { // only when the informer was started already: never here
		d.synced = func() bool { return false }
	} else {
		d.synced = reg.HasSynced
	}
	d.f.Start(ctx.Done())
	s.direct = d
}

// HasSynced reports whether the Tracker holds a whole set of Nodes, from
// the table or from a Node informer.
func (s *SharedNodes) HasSynced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// SharedNodesStatus is what status and metrics show of the node source.
type SharedNodesStatus struct {
	// Source is SourceTable or SourceNodes ("" until decided).
	Source string `json:"source"`
	// Reason says why the Nodes are watched rather than read from the table.
	Reason     string `json:"reason,omitempty"`
	Publisher  string `json:"publisher,omitempty"`
	Generation uint64 `json:"generation,omitempty"`
	// Leading is true while this agent publishes the table; Writes counts
	// its writes of it, WriteError is the last one's failure.
	Leading    bool   `json:"leading,omitempty"`
	Writes     uint64 `json:"writes,omitempty"`
	WriteError string `json:"writeError,omitempty"`
}

// Status returns the node source's state.
func (s *SharedNodes) Status() SharedNodesStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SharedNodesStatus{Source: s.source, Reason: s.why, Leading: s.leading, Writes: s.writes, WriteError: s.writeErr}
	if s.table != nil {
		st.Publisher, st.Generation = s.table.Publisher, s.table.Generation
	}
	return st
}

// elect stands for election on the Lease until ctx ends.
func (s *SharedNodes) elect(ctx context.Context) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: s.o.Namespace, Name: s.o.Name},
		Client:     s.client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: s.o.Identity},
	}
	d := s.o.LeaseDuration
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   d,
			RenewDeadline:   d * 2 / 3,
			RetryPeriod:     d / 4,
			ReleaseOnCancel: true,
			Name:            s.o.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) {
					s.mu.Lock()
					s.leading = true
					s.mu.Unlock()
					s.log.Info("node routes: elected; watching Nodes and publishing the table", "identity", s.o.Identity)
					s.wake()
				},
				OnStoppedLeading: func() {
					s.mu.Lock()
					was := s.leading
					s.leading = false
					s.mu.Unlock()
					if was {
						s.log.Info("node routes: no longer publishing the table", "identity", s.o.Identity)
					}
					s.wake()
				},
			},
		})
		if err != nil {
			s.log.Error("node routes: cannot stand for election", "err", err)
			return
		}
		le.Run(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(d / 4):
		}
	}
}

// publish writes the table when this agent leads, its Node informer has
// listed, and the Nodes differ from the table's; it reports whether it
// wrote.
func (s *SharedNodes) publish(ctx context.Context) (bool, error) {
	s.mu.Lock()
	ready := s.leading && s.direct != nil && s.direct.replaced
	cur, curNodes, published := s.table, s.tableNodes, s.published
	s.mu.Unlock()
	if !ready {
		return false, nil
	}
	nodes := s.t.Nodes()
	if cur != nil && cur.Publisher == s.o.Identity && sameNodes(curNodes, nodes) {
		return false, nil
	}
	if published != nil && sameNodes(published, nodes) && (cur == nil || cur.Generation < s.generation) {
		return false, nil // written; the watch has not delivered it yet
	}
	gen := s.generation
	if cur != nil && cur.Generation > gen {
		gen = cur.Generation
	}
	gen++
	data, err := encodeNodeTable(s.o.Identity, gen, nodes)
	if err == nil {
		err = s.write(ctx, data)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if s.writeErr != err.Error() {
			s.log.Error("node routes: cannot publish the table; retrying", "err", err)
		}
		s.writeErr = err.Error()
		return false, err
	}
	s.writeErr, s.generation, s.published = "", gen, nodes
	s.writes++
	s.log.Info("node routes: table published", "generation", gen, "nodes", len(nodes), "bytes", len(data))
	return true, nil
}

// write stores data in the ConfigMap, creating it when absent.
func (s *SharedNodes) write(ctx context.Context, data string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cms := s.client.CoreV1().ConfigMaps(s.o.Namespace)
	cm, err := cms.Get(ctx, s.o.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm = &v1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: s.o.Namespace, Name: s.o.Name}, Data: map[string]string{NodeTableKey: data}}
		if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("publish node route table: create configmap %s/%s: %w (apply deploy/node-routes-writer.yaml)", s.o.Namespace, s.o.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("publish node route table: get configmap %s/%s: %w", s.o.Namespace, s.o.Name, err)
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[NodeTableKey] = data
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("publish node route table: update configmap %s/%s: %w", s.o.Namespace, s.o.Name, err)
	}
	return nil
}
