package config

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Member configures what a host with its own identity does (credentials
// written by `bridge-agent join`, a ServiceAccount bridge-agent-<host>):
// the heartbeat Lease it renews and the renewal of its token. A host on the
// shared read-only ServiceAccount ignores it.
type Member struct {
	// RenewInterval is how often the host renews its Lease (default 10s,
	// kubelet's nodeLease renew interval).
	RenewInterval metav1.Duration `json:"renewInterval,omitempty"`
	// LeaseDuration is how long the Lease says the host is alive after a
	// renewal (default 40s, kubelet's nodeLeaseDurationSeconds): `bridge-agent
	// hosts` marks a host expired once that passed without a renewal.
	LeaseDuration metav1.Duration `json:"leaseDuration,omitempty"`
	// TokenLifetime is the lifetime the agent asks for each new token of
	// its own (default 24h; the API server's minimum is 10m, and it may cap
	// it with --service-account-max-token-expiration).
	TokenLifetime metav1.Duration `json:"tokenLifetime,omitempty"`
	// TokenRenewPercent is the share of a token's lifetime after which the
	// agent renews it (default 80, at most 80: client-go re-reads the token
	// file every minute, so a token renewed then still has a fifth of its
	// life, at least 2 minutes, to be replaced in every client).
	TokenRenewPercent int `json:"tokenRenewPercent,omitempty"`
}

// Bounds of the member settings.
const (
	minMemberRenewInterval = time.Second
	maxMemberRenewInterval = 5 * time.Minute
	maxLeaseDuration       = time.Hour
	// MinTokenLifetime is the shortest token the TokenRequest API issues.
	MinTokenLifetime = 10 * time.Minute
	maxTokenLifetime = 365 * 24 * time.Hour
	minRenewPercent  = 10
	maxRenewPercent  = 80
)

// defaultMember returns the member defaults, kubelet's for the Lease.
func defaultMember() Member {
	return Member{
		RenewInterval:     metav1.Duration{Duration: 10 * time.Second},
		LeaseDuration:     metav1.Duration{Duration: 40 * time.Second},
		TokenLifetime:     metav1.Duration{Duration: 24 * time.Hour},
		TokenRenewPercent: 80,
	}
}

func (c *Config) validateMember(bad func(field string, value any, reason string)) {
	m := &c.Member
	ivOK := checkDuration(bad, "member.renewInterval", m.RenewInterval.Duration, minMemberRenewInterval, maxMemberRenewInterval)
	ld := m.LeaseDuration.Duration
	switch {
	case ld%time.Second != 0 || ld < 2*time.Second || ld > maxLeaseDuration:
		bad("member.leaseDuration", ld, "must be whole seconds between 2s and 1h")
	case ivOK && ld < 2*m.RenewInterval.Duration:
		bad("member.leaseDuration", ld, "must be at least twice member.renewInterval, so one lost renewal does not expire the host")
	}
	tl := m.TokenLifetime.Duration
	if tl%time.Second != 0 || tl < MinTokenLifetime || tl > maxTokenLifetime {
		bad("member.tokenLifetime", tl, "must be whole seconds between 10m and 8760h")
	}
	checkInt(bad, "member.tokenRenewPercent", m.TokenRenewPercent, minRenewPercent, maxRenewPercent)
}
