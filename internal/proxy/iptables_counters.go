package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
)

// Connection counters (iptables). Every Service port has a chain
// BRIDGE-CNT-<hash> (the hash of its BRIDGE-SVC- chain) holding one rule
// that matches everything and has no target:
//
//	BRIDGE-SVC-<hash>  -j BRIDGE-CNT-<hash>, first
//	BRIDGE-CNT-<hash>  -m comment --comment "NAME PROTO" -j RETURN
//
// NAT chains see only the first packet of a connection, so the rule's
// packet counter counts the connections to the Service port; those to a
// port without endpoints are rejected in filter and not counted. The
// chain is declared (so created, or emptied) only when the tables do not
// hold it yet: the payloads rewrite BRIDGE-SERVICES and a Service's chains
// when it changes, which would reset a counter kept there. It is deleted
// with its Service port, so a count resets only when the Service port goes
// and comes back. The counters are read with "iptables-save -c -t nat",
// when the metrics or the status ask.

// declareCounters declares the counter chains the tables lack.
func (r *iptRenderer) declareCounters(w *writer) {
	for i := range r.plans {
		if pp := &r.plans[i]; !pp.unchanged && !pp.cntExists {
			w.declare(cntChainPrefix, &pp.svcHash)
		}
	}
}

// writeCounters writes the rule of each counter chain declared.
func (r *iptRenderer) writeCounters(w *writer) {
	for i := range r.plans {
		pp := &r.plans[i]
		if pp.unchanged || pp.cntExists {
			continue
		}
		// -A BRIDGE-CNT-X -m comment --comment "NAME PROTO" -j RETURN
		w.rule(cntChainPrefix, &pp.svcHash)
		w.comment(pp.name, " ", pp.proto)
		w.str(" -j RETURN")
		w.nl()
	}
}

// iptCounterSaver lists the nat table with its counters
// ("iptables-save -c -t nat"), handing its output to parse as it comes: at
// 10k Services the table is some 50 MB of text, of which only the counter
// rules are kept.
type iptCounterSaver interface {
	saveNATCounters(ctx context.Context, fam Family, parse func(io.Reader) error) error
}

func (x *execXtables) saveNATCounters(ctx context.Context, fam Family, parse func(io.Reader) error) error {
	name := toolName(fam, x.variant, "-save")
	cmd := exec.CommandContext(ctx, name, "-c", "-t", "nat")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	perr := parse(out)
	_, _ = io.Copy(io.Discard, out) // let it finish after a parse error
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	return perr
}

// parseIPTCounters adds the packets of the counter rules in save (the
// output of "iptables-save -c -t nat") to sums.
func parseIPTCounters(save io.Reader, sums map[ServicePortCounter]uint64) error {
	sc := bufio.NewScanner(save)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		// [PACKETS:BYTES] -A BRIDGE-CNT-X -m comment --comment "NAME PROTO" -j RETURN
		counts, rule, ok := strings.Cut(line, " -A "+cntChainPrefix)
		if !ok || !strings.HasPrefix(counts, "[") {
			continue
		}
		packets, _, ok := strings.Cut(strings.TrimPrefix(counts, "["), ":")
		n, err := strconv.ParseUint(packets, 10, 64)
		if !ok || err != nil {
			return fmt.Errorf("parse iptables counters: %q", line)
		}
		_, comment, ok := strings.Cut(rule, `--comment "`)
		if !ok {
			return fmt.Errorf("parse iptables counters: no comment in %q", line)
		}
		comment, _, _ = strings.Cut(comment, `"`)
		name, proto, ok := strings.Cut(comment, " ")
		if !ok {
			return fmt.Errorf("parse iptables counters: comment of %q", line)
		}
		ns, svc, port := splitServicePortName(name)
		sums[ServicePortCounter{Namespace: ns, Service: svc, Port: port, Protocol: strings.ToUpper(proto)}] += n
	}
	return sc.Err()
}

// ServiceCounters returns the connections counted for every Service port
// with a counter chain, read from the kernel.
func (p *IPTables) ServiceCounters(ctx context.Context) ([]ServicePortCounter, error) {
	saver, ok := p.x.(iptCounterSaver)
	if !ok {
		return nil, errors.New("read iptables counters: the xtables runner cannot save")
	}
	p.mu.Lock()
	fams := make([]Family, 0, len(p.written))
	for fam := range p.written {
		fams = append(fams, fam)
	}
	p.mu.Unlock()
	sums := map[ServicePortCounter]uint64{}
	for _, fam := range fams {
		parse := func(r io.Reader) error { return parseIPTCounters(r, sums) }
		if err := saver.saveNATCounters(ctx, fam, parse); err != nil {
			return nil, fmt.Errorf("read iptables counters of %s: %w", fam, err)
		}
	}
	return sortedCounters(sums), nil
}
