package daemon

import (
	"encoding/json"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/hostguard"
	"github.com/bridge-agent/bridge-agent/internal/member"
)

// Status is what `bridge-agent status` shows: the running agent's view of the
// cluster and of its own health. It is served as JSON on the status socket.
type Status struct {
	Version   string    `json:"version"`
	PID       int       `json:"pid"`
	StartTime time.Time `json:"startTime"`
	// Ready is true once the first full sync completed.
	Ready bool `json:"ready"`
	// Synced is true once Services, EndpointSlices and (routes.mode nodes)
	// the Nodes were all listed.
	Synced bool `json:"synced"`
	// NodeRoutes says where the Nodes come from when they come from the
	// shared node route table or, while it is stale, a Node watch.
	NodeRoutes *cluster.SharedNodesStatus `json:"nodeRoutes,omitempty"`
	// Degraded is true while the agent serves the last snapshot known good
	// from its state directory because the API server cannot be reached.
	Degraded  bool      `json:"degraded,omitempty"`
	APIServer APIStatus `json:"apiServer"`
	LastSync  SyncInfo  `json:"lastSync"`
	// LastSuccess is when every consumer last synced without error.
	LastSuccess time.Time       `json:"lastSuccess,omitzero"`
	Consumers   []ConsumerState `json:"consumers,omitempty"`
	Snapshot    SnapshotStatus  `json:"snapshot"`
	// Guard is what the host guard knows of this host and refused of the
	// cluster's Service ranges and ClusterIPs (refused routes are in the
	// routes consumer's details).
	Guard *hostguard.Status `json:"guard,omitempty"`
	// Member is the host's own identity, its token and its heartbeat
	// Lease, when it has one (see `bridge-agent join`).
	Member *member.Status `json:"member,omitempty"`
}

// APIStatus tells how the agent's watch on the API server fares.
type APIStatus struct {
	Host string `json:"host"`
	// LastError is the most recent list/watch error, if any since the last
	// successful sync of the informers.
	LastError     string    `json:"lastError,omitempty"`
	LastErrorTime time.Time `json:"lastErrorTime,omitzero"`
}

// SyncInfo describes one sync.
type SyncInfo struct {
	Time            time.Time     `json:"time,omitzero"`
	Duration        time.Duration `json:"duration"`
	SnapshotVersion uint64        `json:"snapshotVersion"`
	Error           string        `json:"error,omitempty"`
	Count           uint64        `json:"count"`
}

// ConsumerState is the last result of one consumer (proxy, routes, dns, ...).
type ConsumerState struct {
	Name      string    `json:"name"`
	LastSync  time.Time `json:"lastSync,omitzero"`
	LastError string    `json:"lastError,omitempty"`
	// Details is what a consumer implementing StatusReporter says about
	// itself, in its own JSON shape.
	Details json.RawMessage `json:"details,omitempty"`
}

// SnapshotStatus is the snapshot as shown to users.
type SnapshotStatus struct {
	Version   uint64             `json:"version"`
	Time      time.Time          `json:"time,omitzero"`
	Services  []*cluster.Service `json:"services"`
	Nodes     []*cluster.Node    `json:"nodes"`
	Endpoints int                `json:"endpoints"`
	// Restored is when the snapshot being served was saved, when it was read
	// back from disk (Status.Degraded); Age is how old it is.
	Restored time.Time `json:"restored,omitzero"`
	Age      string    `json:"age,omitempty"`
	// Path is the file of the last snapshot known good; SavedVersion and
	// SavedAt tell what was last written there by this run.
	Path         string    `json:"path"`
	SavedVersion uint64    `json:"savedVersion,omitempty"`
	SavedAt      time.Time `json:"savedAt,omitzero"`
	// RestoreError says why a saved snapshot could not be used.
	RestoreError string `json:"restoreError,omitempty"`
}
