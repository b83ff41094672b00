package doctor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/hostdns"
)

// hostsLine returns the services of the hosts: line of an nsswitch.conf.
func hostsLine(nsswitch []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(nsswitch))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "hosts:"); ok {
			return strings.TrimSpace(rest)
		}
	}
	return ""
}

// localTrapCheck judges the .local trap: under a cluster domain in .local
// (the default cluster.local), an nsswitch hosts: line that asks mDNS
// (nss-mdns) before DNS sends the cluster's names to multicast DNS, and
// with [NOTFOUND=return] stops there; pure. mode is the resolver wiring.
func localTrapCheck(domain, hosts string, mode hostdns.Mode) Check {
	ch := Check{Name: ".local and mDNS"}
	d := strings.TrimSuffix(domain, ".")
	if d != "local" && !strings.HasSuffix(d, ".local") {
		ch.Verdict, ch.Detail = OK, fmt.Sprintf("cluster domain %s is outside .local, which mDNS claims", d)
		return ch
	}
	if hosts == "" {
		ch.Verdict, ch.Detail = OK, "no hosts: line in nsswitch.conf (the C library asks files, then DNS)"
		return ch
	}
	fields := strings.Fields(hosts)
	dnsAt := slices.IndexFunc(fields, func(f string) bool { return f == "dns" || f == "resolve" })
	for i, f := range fields {
		if !strings.HasPrefix(f, "mdns") {
			continue
		}
		if dnsAt >= 0 && dnsAt < i {
			break
		}
		stops := i+1 < len(fields) && strings.HasPrefix(fields[i+1], "[") && strings.Contains(strings.ToUpper(fields[i+1]), "NOTFOUND=RETURN")
		if stops {
			ch.Verdict = Fail
			ch.Detail = fmt.Sprintf("nsswitch.conf's hosts: line (%s) gives names under .local to mDNS (%s [NOTFOUND=return]) and stops: %s names never reach the stub", hosts, f, d)
		} else {
			ch.Verdict = Warn
			ch.Detail = fmt.Sprintf("nsswitch.conf's hosts: line (%s) asks mDNS (%s) before DNS: every %s name first waits for multicast DNS", hosts, f, d)
		}
		ch.Fix = fmt.Sprintf("in /etc/nsswitch.conf put dns (or resolve) before %s on the hosts: line, or remove its [NOTFOUND=return]", f)
		return ch
	}
	ch.Verdict = OK
	ch.Detail = fmt.Sprintf("cluster domain %s is under .local, but nsswitch.conf's hosts: line (%s) asks DNS before any mDNS", d, hosts)
	if mode == hostdns.ModeResolved {
		ch.Detail += "; systemd-resolved sends it to the stub's link, which claims ~" + d
	}
	return ch
}

// resolverCheck turns hostdns's check of the host's real resolver into a
// doctor check.
func resolverCheck(c *hostdns.Check) Check {
	ch := Check{Name: "host resolver (getent ahosts " + c.Name + ")"}
	switch {
	case c.OK:
		ch.Verdict, ch.Detail = OK, fmt.Sprintf("resolves to %v, as the stub answers", c.Host)
	case c.Skipped != "":
		ch.Verdict, ch.Detail = Skip, c.Skipped
	default:
		ch.Verdict = Fail
		ch.Detail, ch.Fix = c.Problem, "wire the host's resolver to the stub: dns.hostResolver auto, and restart the agent"
		if i := strings.Index(c.Problem, "check that"); i > 0 {
			ch.Detail, ch.Fix = strings.TrimRight(c.Problem[:i], ":; "), c.Problem[i:]
		}
	}
	return ch
}

// parseResolvectl reads the addresses of `resolvectl query --legend=no`'s
// answer, "name: addr [-- link: x]" lines with more addresses on indented
// continuation lines.
func parseResolvectl(out []byte) []netip.Addr {
	var addrs []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "--"); i >= 0 {
			line = line[:i]
		}
		if i := strings.Index(line, ": "); i >= 0 {
			line = line[i+2:]
		}
		for _, f := range strings.Fields(line) {
			if a, err := netip.ParseAddr(strings.TrimRight(f, ",;")); err == nil && !slices.Contains(addrs, a.Unmap()) {
				addrs = append(addrs, a.Unmap())
			}
		}
	}
	return addrs
}

// resolvectlCheck asks systemd-resolved (resolvectl query) for name and
// compares with the stub's answer.
func resolvectlCheck(ctx context.Context, name string, stub []netip.Addr) Check {
	ch := Check{Name: "systemd-resolved (resolvectl query " + name + ")"}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "resolvectl", "query", "--legend=no", name).CombinedOutput()
	if errors.Is(err, exec.ErrNotFound) {
		ch.Verdict, ch.Detail = Skip, "resolvectl is not installed"
		return ch
	}
	return judgeResolvectl(ch, name, stub, out, err)
}

func judgeResolvectl(ch Check, name string, stub []netip.Addr, out []byte, err error) Check {
	fix := fmt.Sprintf("check `resolvectl status %s` (DNS server %s, domain ~%s) and `resolvectl domain` (no other link claiming the cluster's domains); restarting the agent rewires it", hostdns.LinkName, hostdns.LinkAddr, strings.SplitN(name, ".svc.", 2)[len(strings.SplitN(name, ".svc.", 2))-1])
	got := parseResolvectl(out)
	switch {
	case err != nil:
		ch.Verdict, ch.Detail, ch.Fix = Fail, fmt.Sprintf("systemd-resolved does not resolve it: %v: %s", err, oneLine(string(out))), fix
	case len(got) == 0:
		ch.Verdict, ch.Detail, ch.Fix = Fail, "systemd-resolved answers no address: "+oneLine(string(out)), fix
	case slices.ContainsFunc(got, func(a netip.Addr) bool { return !slices.Contains(stub, a) }):
		ch.Verdict, ch.Detail, ch.Fix = Fail, fmt.Sprintf("systemd-resolved answers %v, the stub %v: another DNS server answers the cluster's names", got, stub), fix
	default:
		ch.Verdict, ch.Detail = OK, fmt.Sprintf("resolves to %v, as the stub answers", got)
	}
	return ch
}
