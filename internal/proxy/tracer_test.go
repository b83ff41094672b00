package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// This file holds a small iptables interpreter for tests: it parses rendered
// restore payloads and follows a packet through them. It understands only the
// matches and targets the renderer emits (and fails on anything else), which
// keeps it small and keeps the renderer honest.

// ruleset is the state of one family's tables after restoring payloads into
// empty tables and adding the backend's jumps from built-in chains.
type ruleset struct {
	tables map[string]map[string][]traceRule // table → chain → rules
	// declared counts declarations per table and chain, deleted records -X.
	declared map[string]map[string]int
	deleted  map[string]map[string]bool
}

type traceRule struct {
	chain string
	args  []string // after "-A chain"
}

// target returns the rule's -j target, or "".
func (r traceRule) target() string {
	if i := slices.Index(r.args, "-j"); i >= 0 && i+1 < len(r.args) {
		return r.args[i+1]
	}
	return ""
}

var builtinChains = map[string]bool{"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true}

// parseRestore parses restore payloads the way iptables-restore --noflush
// would apply them to tables holding only the built-in chains.
func parseRestore(payloads ...[]byte) (*ruleset, error) {
	rs := &ruleset{
		tables:   map[string]map[string][]traceRule{},
		declared: map[string]map[string]int{},
		deleted:  map[string]map[string]bool{},
	}
	for _, p := range payloads {
		if err := rs.restore(p); err != nil {
			return nil, err
		}
	}
	for _, j := range IPTablesJumps() {
		t := rs.table(j.Table)
		t[j.Chain] = append(t[j.Chain], traceRule{chain: j.Chain, args: j.Rule})
	}
	return rs, nil
}

func (rs *ruleset) table(name string) map[string][]traceRule {
	if rs.tables[name] == nil {
		rs.tables[name] = map[string][]traceRule{}
		rs.declared[name] = map[string]int{}
		rs.deleted[name] = map[string]bool{}
	}
	return rs.tables[name]
}

func (rs *ruleset) restore(payload []byte) error {
	sc := bufio.NewScanner(bytes.NewReader(payload))
	sc.Buffer(nil, 1<<20)
	var table string
	var chains map[string][]traceRule
	var pendingDelete []string
	committed := false
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if committed {
			return fmt.Errorf("line %d: %q after COMMIT", n, line)
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			if table != "" {
				return fmt.Errorf("line %d: second table", n)
			}
			table = line[1:]
			chains = rs.table(table)
		case table == "":
			return fmt.Errorf("line %d: %q before the table line", n, line)
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) != 3 || f[1] != "-" || f[2] != "[0:0]" {
				return fmt.Errorf("line %d: bad chain line %q", n, line)
			}
			rs.declared[table][f[0]]++
			chains[f[0]] = []traceRule{} // declaring flushes
		case strings.HasPrefix(line, "-A "):
			args, err := splitArgs(line)
			if err != nil {
				return fmt.Errorf("line %d: %w", n, err)
			}
			chain := args[1]
			if _, ok := chains[chain]; !ok {
				return fmt.Errorf("line %d: rule for undeclared chain %s", n, chain)
			}
			chains[chain] = append(chains[chain], traceRule{chain: chain, args: args[2:]})
		case strings.HasPrefix(line, "-X "):
			chain := strings.TrimPrefix(line, "-X ")
			if rs.declared[table][chain] == 0 {
				return fmt.Errorf("line %d: -X of a chain not declared (so not flushed) first: %s", n, chain)
			}
			pendingDelete = append(pendingDelete, chain)
		case line == "COMMIT":
			committed = true
		default:
			return fmt.Errorf("line %d: unknown line %q", n, line)
		}
	}
	if !committed {
		return fmt.Errorf("payload for %q has no COMMIT", table)
	}
	for _, c := range pendingDelete {
		for ch, rules := range chains {
			for _, r := range rules {
				if r.target() == c {
					return fmt.Errorf("-X %s: still referenced from %s", c, ch)
				}
			}
		}
		delete(chains, c)
		rs.deleted[table][c] = true
	}
	return sc.Err()
}

// splitArgs splits a rule line into arguments, keeping double-quoted strings
// (comments) together, without their quotes.
func splitArgs(line string) ([]string, error) {
	var out []string
	for line != "" {
		line = strings.TrimLeft(line, " ")
		if line == "" {
			break
		}
		if line[0] == '"' {
			end := strings.IndexByte(line[1:], '"')
			if end < 0 {
				return nil, fmt.Errorf("unterminated quote in %q", line)
			}
			out = append(out, line[1:1+end])
			line = line[2+end:]
			if line != "" && line[0] != ' ' {
				return nil, fmt.Errorf("text after a closing quote")
			}
			continue
		}
		end := strings.IndexByte(line, ' ')
		if end < 0 {
			end = len(line)
		}
		if strings.ContainsRune(line[:end], '"') {
			return nil, fmt.Errorf("stray quote in %q", line[:end])
		}
		out = append(out, line[:end])
		line = line[end:]
	}
	return out, nil
}

// packet is a new connection sent by a process on the host.
type packet struct {
	src, dst netip.Addr
	proto    string // "tcp", "udp", "sctp"
	dport    int
}

// path is one way a packet can go, with its probability (the product of the
// statistic matches taken or skipped on the way).
type path struct {
	prob     float64
	dnat     string // DNAT destination; "" when not rewritten
	mark     uint32
	masq     bool
	rejected bool
	recent   []string // recent lists the source was added to
}

// end is where a walk through a chain stopped: verdict is empty when the
// packet fell off the chain or returned.
type end struct {
	path
	verdict string
}

// tracer walks packets through a ruleset. recent holds the names of the
// recent lists that already contain the packet's source.
type tracer struct {
	rs     *ruleset
	recent map[string]bool
}

// trace follows p from nat OUTPUT (DNAT), through filter OUTPUT (reject), to
// nat POSTROUTING (masquerade), as the kernel does for locally sent packets.
func (tr *tracer) trace(p packet) ([]path, error) {
	var out []path
	natEnds, err := tr.walk("nat", "OUTPUT", p, path{prob: 1}, 0)
	if err != nil {
		return nil, err
	}
	for _, e := range natEnds {
		q := p
		if e.dnat != "" {
			ap, err := netip.ParseAddrPort(e.dnat)
			if err != nil {
				return nil, fmt.Errorf("bad DNAT destination %q: %w", e.dnat, err)
			}
			q.dst, q.dport = ap.Addr(), int(ap.Port())
		}
		filterEnds, err := tr.walk("filter", "OUTPUT", q, e.path, 0)
		if err != nil {
			return nil, err
		}
		for _, f := range filterEnds {
			switch f.verdict {
			case "REJECT":
				f.rejected = true
				out = append(out, f.path)
				continue
			case "", "ACCEPT":
			default:
				return nil, fmt.Errorf("unexpected verdict %s in filter", f.verdict)
			}
			postEnds, err := tr.walk("nat", "POSTROUTING", q, f.path, 0)
			if err != nil {
				return nil, err
			}
			for _, pe := range postEnds {
				pe.masq = pe.verdict == "MASQUERADE"
				out = append(out, pe.path)
			}
		}
	}
	return out, nil
}

// walk runs p through table/chain from rule index from.
func (tr *tracer) walk(table, chain string, p packet, st path, from int) ([]end, error) {
	rules, ok := tr.rs.tables[table][chain]
	if !ok {
		if builtinChains[chain] {
			return []end{{path: st}}, nil
		}
		return nil, fmt.Errorf("jump to missing chain %s/%s", table, chain)
	}
	for i := from; i < len(rules); i++ {
		r := rules[i]
		m, err := match(r, p, st.mark, tr.recent)
		if err != nil {
			return nil, fmt.Errorf("%s %s rule %d: %w", table, chain, i, err)
		}
		if !m.matched {
			continue
		}
		var ends []end
		if m.prob < 1 {
			// The statistic match may also fail: follow that branch too.
			skip := st
			skip.prob *= 1 - m.prob
			rest, err := tr.walk(table, chain, p, skip, i+1)
			if err != nil {
				return nil, err
			}
			ends = append(ends, rest...)
		}
		taken := st
		taken.prob *= m.prob
		taken.recent = append(slices.Clip(taken.recent), m.set...)
		res, err := tr.target(table, chain, r, p, taken, i)
		if err != nil {
			return nil, err
		}
		return append(ends, res...), nil
	}
	return []end{{path: st}}, nil
}

// target applies the target of rule r (number i of chain), which matched.
func (tr *tracer) target(table, chain string, r traceRule, p packet, st path, i int) ([]end, error) {
	j := slices.Index(r.args, "-j")
	if j < 0 || j+1 >= len(r.args) {
		return nil, fmt.Errorf("rule without target: %q", r.args)
	}
	opts := r.args[j+2:]
	opt := func(name string) (string, error) {
		if len(opts) != 2 || opts[0] != name {
			return "", fmt.Errorf("target %s: options %q, want %s VALUE", r.args[j+1], opts, name)
		}
		return opts[1], nil
	}
	switch t := r.args[j+1]; t {
	case "RETURN":
		return []end{{path: st}}, nil
	case "ACCEPT", "DROP", "REJECT":
		if len(opts) != 0 {
			return nil, fmt.Errorf("target %s: unexpected options %q", t, opts)
		}
		return []end{{path: st, verdict: t}}, nil
	case "MASQUERADE":
		if len(opts) != 1 || opts[0] != "--random-fully" {
			return nil, fmt.Errorf("MASQUERADE: options %q", opts)
		}
		return []end{{path: st, verdict: t}}, nil
	case "DNAT":
		v, err := opt("--to-destination")
		if err != nil {
			return nil, err
		}
		st.dnat = v
		return []end{{path: st, verdict: t}}, nil
	case "MARK":
		if len(opts) != 2 {
			return nil, fmt.Errorf("MARK: options %q", opts)
		}
		v, err := strconv.ParseUint(opts[1], 0, 32)
		if err != nil {
			return nil, err
		}
		switch opts[0] {
		case "--or-mark":
			st.mark |= uint32(v)
		case "--xor-mark":
			st.mark ^= uint32(v)
		default:
			return nil, fmt.Errorf("MARK: option %s", opts[0])
		}
		return tr.walk(table, chain, p, st, i+1)
	default:
		if len(opts) != 0 {
			return nil, fmt.Errorf("jump to %s: unexpected options %q", t, opts)
		}
		sub, err := tr.walk(table, t, p, st, 0)
		if err != nil {
			return nil, err
		}
		var out []end
		for _, e := range sub {
			if e.verdict != "" {
				out = append(out, e)
				continue
			}
			rest, err := tr.walk(table, chain, p, e.path, i+1)
			if err != nil {
				return nil, err
			}
			out = append(out, rest...)
		}
		return out, nil
	}
}

type matchResult struct {
	matched bool
	prob    float64  // probability of matching, given that it can (statistic)
	set     []string // recent lists the source is added to
}

// match evaluates the matches of r (everything before -j) against p.
func match(r traceRule, p packet, mark uint32, recent map[string]bool) (matchResult, error) {
	res := matchResult{matched: true, prob: 1}
	args := r.args
	negate := false
	var module, recentName, ruleProto string
	next := func(i int) (string, error) {
		if i+1 >= len(args) {
			return "", fmt.Errorf("%s without a value", args[i])
		}
		return args[i+1], nil
	}
	check := func(ok bool) {
		if ok == negate {
			res.matched = false
		}
		negate = false
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "-j" {
			break
		}
		if a == "!" {
			negate = true
			continue
		}
		if a == "-m" {
			v, err := next(i)
			if err != nil {
				return res, err
			}
			module = v
			if (v == "tcp" || v == "udp" || v == "sctp") && v != ruleProto {
				return res, fmt.Errorf("-m %s on a rule for protocol %q", v, ruleProto)
			}
			i++
			continue
		}
		v, err := next(i)
		switch a {
		case "--rcheck", "--reap", "--set":
			err = nil
		}
		if err != nil {
			return res, err
		}
		switch {
		case a == "-s" || a == "-d":
			pfx, err := netip.ParsePrefix(v)
			if err != nil {
				return res, err
			}
			addr := p.src
			if a == "-d" {
				addr = p.dst
			}
			check(pfx.Contains(addr))
			i++
		case a == "-p":
			ruleProto = v
			check(v == p.proto)
			i++
		case module == "comment" && a == "--comment":
			i++
		case (module == "tcp" || module == "udp" || module == "sctp") && a == "--dport":
			// As in iptables: the protocol match needs the same -p.
			if module != ruleProto {
				return res, fmt.Errorf("-m %s --dport on a rule for protocol %q", module, ruleProto)
			}
			check(v == strconv.Itoa(p.dport))
			i++
		case module == "statistic" && a == "--mode":
			if v != "random" {
				return res, fmt.Errorf("statistic mode %s", v)
			}
			i++
		case module == "statistic" && a == "--probability":
			pr, err := strconv.ParseFloat(v, 64)
			if err != nil || pr <= 0 || pr >= 1 {
				return res, fmt.Errorf("bad probability %q", v)
			}
			res.prob = pr
			i++
		case module == "recent" && a == "--name":
			recentName = v
			i++
		case module == "recent" && a == "--rcheck":
			check(recent[recentName])
		case module == "recent" && a == "--seconds":
			if _, err := strconv.Atoi(v); err != nil {
				return res, err
			}
			i++
		case module == "recent" && a == "--reap":
		case module == "recent" && a == "--set":
			if res.matched {
				res.set = append(res.set, recentName)
			}
		case module == "mark" && a == "--mark":
			val, mask, ok := strings.Cut(v, "/")
			if !ok {
				return res, fmt.Errorf("mark %q without mask", v)
			}
			vv, err1 := strconv.ParseUint(val, 0, 32)
			mm, err2 := strconv.ParseUint(mask, 0, 32)
			if err1 != nil || err2 != nil {
				return res, fmt.Errorf("bad mark %q", v)
			}
			check(mark&uint32(mm) == uint32(vv))
			i++
		case module == "conntrack" && a == "--ctstate":
			// Every traced packet opens a new connection.
			check(v == "NEW")
			i++
		default:
			return res, fmt.Errorf("unknown match option %s (module %q)", a, module)
		}
	}
	if !res.matched {
		res.set = nil
	}
	return res, nil
}

// flow summarises the paths of a packet the way packet-flow tables state
// them: output is "REJECT", "" (untouched) or the sorted DNAT destinations
// joined by ", "; masq tells whether the packet is masqueraded.
func flow(paths []path) (output string, masq bool, err error) {
	if len(paths) == 0 {
		return "", false, fmt.Errorf("no paths")
	}
	var dests []string
	rejected, untouched := 0, 0
	masqs := 0
	total := 0.0
	for _, p := range paths {
		total += p.prob
		switch {
		case p.rejected:
			rejected++
		case p.dnat == "":
			untouched++
		default:
			dests = append(dests, p.dnat)
		}
		if p.masq {
			masqs++
		}
	}
	if math.Abs(total-1) > 1e-9 {
		return "", false, fmt.Errorf("path probabilities add up to %v", total)
	}
	if masqs != 0 && masqs != len(paths) {
		return "", false, fmt.Errorf("masqueraded on %d of %d paths", masqs, len(paths))
	}
	switch {
	case rejected == len(paths):
		return "REJECT", false, nil
	case untouched == len(paths):
		return "", masqs > 0, nil
	case rejected > 0 || untouched > 0:
		return "", false, fmt.Errorf("%d paths rejected, %d untouched, %d rewritten", rejected, untouched, len(dests))
	}
	slices.Sort(dests)
	return strings.Join(slices.Compact(dests), ", "), masqs > 0, nil
}

// shares returns each DNAT destination's probability.
func shares(paths []path) map[string]float64 {
	out := map[string]float64{}
	for _, p := range paths {
		if p.dnat != "" {
			out[p.dnat] += p.prob
		}
	}
	return out
}
