package hostdns

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Check says whether a cluster name resolves through the host's own
// resolver path, the C library's getaddrinfo (getent ahosts) with the
// host's nsswitch.conf, to what the stub answers: the proof that the
// wiring works, beyond the files and settings being in place.
type Check struct {
	// Name is the name checked, e.g. kubernetes.default.svc.cluster.local.
	Name string `json:"name"`
	// Stub is what the stub answers for it (A and AAAA).
	Stub []netip.Addr `json:"stub,omitempty"`
	// Host is what getent ahosts returned.
	Host []netip.Addr `json:"host,omitempty"`
	// OK: the host resolved the name, and only to addresses the stub
	// answers.
	OK bool `json:"ok"`
	// Problem says what is wrong and what to do, when not OK.
	Problem string `json:"problem,omitempty"`
	// Skipped says why the check could not be made (then OK is false and
	// Problem empty).
	Skipped string `json:"skipped,omitempty"`
	// At is when the check ran.
	At time.Time `json:"at"`
}

// VerifyOptions say what Verify checks.
type VerifyOptions struct {
	// HostRoot is the host root; the check runs only when it is "/", since
	// getent asks this machine's resolver.
	HostRoot string
	// Mode is the concrete mode applied (Result.Mode).
	Mode Mode
	// Stub is the stub's address.
	Stub netip.AddrPort
	// Name is the cluster name to resolve.
	Name string

	// Seams for tests.
	askStub func(ctx context.Context, stub netip.AddrPort, name string) ([]netip.Addr, error)
	getent  func(ctx context.Context, name string) ([]netip.Addr, error)
}

// Verify resolves o.Name through the stub and through the host's resolver
// (getent ahosts, which goes through nsswitch.conf and the C library, as
// every program on the host does; the agent itself is built without cgo
// and could not) and compares. It never fails: what went wrong is in the
// Check.
func Verify(ctx context.Context, o VerifyOptions) *Check {
	if o.askStub == nil {
		o.askStub = AskStub
	}
	if o.getent == nil {
		o.getent = getentAhosts
	}
	name := strings.TrimSuffix(o.Name, ".")
	if filepath.Clean(o.HostRoot) != "/" {
		return &Check{Name: name, At: time.Now(), Skipped: "the host root is not /: getent would ask this machine's resolver, not the host's"}
	}
	if o.Mode != ModeResolved && o.Mode != ModeResolvConf {
		return &Check{Name: name, At: time.Now(), Skipped: "mode " + string(o.Mode) + ": the host's resolver is not wired to the stub"}
	}
	stub, stubErr := o.askStub(ctx, o.Stub, name)
	var host []netip.Addr
	var hostErr error
	if stubErr == nil && len(stub) > 0 {
		host, hostErr = o.getent(ctx, name)
	}
	c := judge(name, o.Mode, o.Stub, stub, stubErr, host, hostErr)
	if errors.Is(hostErr, exec.ErrNotFound) {
		c = &Check{Name: name, Stub: stub, Skipped: "getent is not installed (the C library's tools), so the host's resolver cannot be asked"}
	}
	c.At = time.Now()
	return c
}

// judge compares the stub's answer with the host's; pure.
func judge(name string, mode Mode, stubAddr netip.AddrPort, stub []netip.Addr, stubErr error, host []netip.Addr, hostErr error) *Check {
	c := &Check{Name: name, Stub: stub, Host: host}
	switch {
	case stubErr != nil:
		c.Skipped = fmt.Sprintf("the stub did not answer for %s: %v", name, stubErr)
		return c
	case len(stub) == 0:
		c.Skipped = fmt.Sprintf("the stub has no address for %s (no such Service in the cluster?)", name)
		return c
	}
	fix := "check that /etc/resolv.conf names " + stubAddr.Addr().String() + " and that the hosts: line of /etc/nsswitch.conf has dns"
	if mode == ModeResolved {
		fix = fmt.Sprintf("check that `resolvectl status %s` shows DNS server %s and the cluster's ~domains, that programs reach resolved (/etc/resolv.conf names 127.0.0.53, or the hosts: line of /etc/nsswitch.conf has resolve), and that no other link claims these domains (`resolvectl domain`)", LinkName, netip.AddrPortFrom(LinkAddr, stubAddr.Port()))
	}
	switch {
	case hostErr != nil:
		c.Problem = fmt.Sprintf("%s does not resolve through the host's resolver (%v), though the stub answers %v: %s", name, hostErr, stub, fix)
	case len(host) == 0:
		c.Problem = fmt.Sprintf("%s does not resolve through the host's resolver, though the stub answers %v: %s", name, stub, fix)
	default:
		for _, a := range host {
			if !slices.Contains(stub, a) {
				c.Problem = fmt.Sprintf("%s resolves through the host's resolver to %v, but the stub answers %v: another resolver answers the cluster's names; %s", name, host, stub, fix)
				return c
			}
		}
		c.OK = true
	}
	return c
}

// AskStub asks the stub for the name's A and AAAA records over UDP. A
// name the stub does not know is no address and no error; another failure
// (SERVFAIL, REFUSED) is an error.
func AskStub(ctx context.Context, stub netip.AddrPort, name string) ([]netip.Addr, error) {
	c := &dns.Client{Timeout: 2 * time.Second}
	var out []netip.Addr
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qt)
		r, _, err := c.ExchangeContext(ctx, m, stub.String())
		if err != nil {
			return nil, err
		}
		if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
			return nil, fmt.Errorf("%s", dns.RcodeToString[r.Rcode])
		}
		for _, rr := range r.Answer {
			switch v := rr.(type) {
			case *dns.A:
				if a, ok := netip.AddrFromSlice(v.A.To4()); ok {
					out = append(out, a)
				}
			case *dns.AAAA:
				if a, ok := netip.AddrFromSlice(v.AAAA); ok {
					out = append(out, a)
				}
			}
		}
	}
	return out, nil
}

// getentAhosts runs `getent ahosts name` and returns the addresses, once
// each, in its order. Exit status 2 (not found) is no addresses and no
// error.
func getentAhosts(ctx context.Context, name string) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "getent", "ahosts", name)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("getent ahosts %s: %w: %s", name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return parseAhosts(out), nil
}

// parseAhosts reads getent ahosts's lines, "addr SOCKTYPE [name]".
func parseAhosts(out []byte) []netip.Addr {
	var addrs []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if a, err := netip.ParseAddr(f[0]); err == nil && !slices.Contains(addrs, a.Unmap()) {
			addrs = append(addrs, a.Unmap())
		}
	}
	return addrs
}
