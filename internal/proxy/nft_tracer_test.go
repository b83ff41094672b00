package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// This file holds a small nftables interpreter for tests: it follows a packet
// through the state of a fakeNFT table the way the kernel evaluates it. It
// understands only the expressions and statements the renderer emits, and
// fails on anything else. numgen is evaluated by enumerating every value, each
// with its probability, so that spreads are exact.

// nftTracer walks packets through one family's table. recent holds the
// elements of dynamic sets (session affinity records) that exist already.
type nftTracer struct {
	t      *fakeNFTTable
	recent map[string]bool
}

// nftOutcome is one way a rule can end.
type nftOutcome struct {
	path
	matched bool   // false: the rule did not match; evaluation goes on
	verdict string // "jump X", "goto X", "accept" (NAT), "MASQUERADE", "REJECT"
}

// trace follows p as a locally sent packet: the nat output hook (DNAT), the
// filter output hook (reject) and the nat postrouting hook (masquerade).
func (tr *nftTracer) trace(p packet) ([]path, error) {
	var out []path
	natEnds, err := tr.hook("type nat hook output", p, path{prob: 1})
	if err != nil {
		return nil, err
	}
	for _, e := range natEnds {
		q := p
		if e.dnat != "" {
			ap, err := netip.ParseAddrPort(e.dnat)
			if err != nil {
				return nil, err
			}
			q.dst, q.dport = ap.Addr(), int(ap.Port())
		}
		filterEnds, err := tr.hook("type filter hook output", q, e.path)
		if err != nil {
			return nil, err
		}
		for _, f := range filterEnds {
			if f.verdict == "REJECT" {
				f.rejected = true
				out = append(out, f.path)
				continue
			}
			postEnds, err := tr.hook("type nat hook postrouting", q, f.path)
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

// hook runs the base chains declared with the given prefix (type and hook).
func (tr *nftTracer) hook(decl string, p packet, st path) ([]nftOutcome, error) {
	var name string
	for n, c := range tr.t.chains {
		if strings.HasPrefix(c.base, decl+" ") {
			if name != "" {
				return nil, fmt.Errorf("two base chains for %q", decl)
			}
			name = n
		}
	}
	if name == "" {
		return []nftOutcome{{path: st}}, nil
	}
	return tr.chain(name, p, st, 0)
}

// chain evaluates a chain from rule index from. Outcomes without a final
// verdict fell off the end (or returned).
func (tr *nftTracer) chain(name string, p packet, st path, from int) ([]nftOutcome, error) {
	c := tr.t.chains[name]
	if c == nil {
		return nil, fmt.Errorf("missing chain %s", name)
	}
	if from >= len(c.rules) {
		return []nftOutcome{{path: st}}, nil
	}
	outs, err := tr.rule(strings.Fields(c.rules[from]), p, nftOutcome{path: st, matched: true})
	if err != nil {
		return nil, fmt.Errorf("chain %s rule %d: %w", name, from, err)
	}
	var res []nftOutcome
	for _, o := range outs {
		var next []nftOutcome
		switch {
		case !o.matched || o.verdict == "":
			next, err = tr.chain(name, p, o.path, from+1)
		case strings.HasPrefix(o.verdict, "goto "):
			next, err = tr.chain(strings.TrimPrefix(o.verdict, "goto "), p, o.path, 0)
		case strings.HasPrefix(o.verdict, "jump "):
			var sub []nftOutcome
			sub, err = tr.chain(strings.TrimPrefix(o.verdict, "jump "), p, o.path, 0)
			for _, s := range sub {
				if err != nil {
					break
				}
				if s.verdict != "" {
					next = append(next, s)
					continue
				}
				var rest []nftOutcome
				rest, err = tr.chain(name, p, s.path, from+1)
				next = append(next, rest...)
			}
		default:
			next = []nftOutcome{o}
		}
		if err != nil {
			return nil, err
		}
		res = append(res, next...)
	}
	return res, nil
}

// value is one possible value of an expression and its probability.
type value struct {
	s    string
	prob float64
}

// concat evaluates a concatenation starting at toks[0], returning its
// possible values and the number of tokens used.
func (tr *nftTracer) concat(toks []string, p packet) ([]value, int, error) {
	vals := []value{{prob: 1}}
	i := 0
	for {
		if i >= len(toks) {
			return nil, 0, fmt.Errorf("expression expected")
		}
		var term []value
		switch {
		case (toks[i] == "ip" || toks[i] == "ip6") && i+1 < len(toks) && (toks[i+1] == "saddr" || toks[i+1] == "daddr"):
			a := p.src
			if toks[i+1] == "daddr" {
				a = p.dst
			}
			if (toks[i] == "ip") != a.Is4() {
				return nil, 0, fmt.Errorf("%s %s on an address of the other family", toks[i], toks[i+1])
			}
			term = []value{{a.String(), 1}}
			i += 2
		case toks[i] == "meta" && i+1 < len(toks) && toks[i+1] == "l4proto":
			term = []value{{p.proto, 1}}
			i += 2
		case toks[i] == "th" && i+1 < len(toks) && toks[i+1] == "dport":
			term = []value{{strconv.Itoa(p.dport), 1}}
			i += 2
		case (toks[i] == "tcp" || toks[i] == "udp" || toks[i] == "sctp") && i+1 < len(toks) && toks[i+1] == "dport":
			// rule fails the whole rule first for another protocol, as
			// the implicit protocol test nft adds does.
			if p.proto != toks[i] {
				return nil, 0, fmt.Errorf("%s dport of a %s packet", toks[i], p.proto)
			}
			term = []value{{strconv.Itoa(p.dport), 1}}
			i += 2
		case toks[i] == "numgen":
			if i+3 >= len(toks) || toks[i+1] != "random" || toks[i+2] != "mod" {
				return nil, 0, fmt.Errorf("numgen: %q", toks[i:])
			}
			n, err := strconv.Atoi(toks[i+3])
			if err != nil || n < 1 {
				return nil, 0, fmt.Errorf("numgen modulus %q", toks[i+3])
			}
			i += 4
			off := 0
			if i+1 < len(toks) && toks[i] == "offset" {
				if off, err = strconv.Atoi(toks[i+1]); err != nil {
					return nil, 0, err
				}
				i += 2
			}
			for v := range n {
				term = append(term, value{strconv.Itoa(v + off), 1 / float64(n)})
			}
		default:
			return nil, 0, fmt.Errorf("unknown expression at %q", toks[i:])
		}
		var next []value
		for _, a := range vals {
			for _, b := range term {
				s := b.s
				if a.s != "" {
					s = a.s + " . " + b.s
				}
				next = append(next, value{s, a.prob * b.prob})
			}
		}
		vals = next
		if i < len(toks) && toks[i] == "." {
			i++
			continue
		}
		return vals, i, nil
	}
}

// element looks up key in set name: the value (for maps) and whether it exists.
func (tr *nftTracer) element(name, key string) (string, bool, error) {
	s := tr.t.sets[name]
	if s == nil {
		return "", false, fmt.Errorf("missing set %s", name)
	}
	if strings.Contains(s.decl, "dynamic") {
		return "", tr.recent[name+" "+key], nil
	}
	e, ok := s.elements[key]
	return e.Value, ok, nil
}

// rule evaluates the statements toks, left to right, for each way st can be.
func (tr *nftTracer) rule(toks []string, p packet, st nftOutcome) ([]nftOutcome, error) {
	if len(toks) == 0 || !st.matched || st.verdict != "" {
		return []nftOutcome{st}, nil
	}
	fail := func() ([]nftOutcome, error) { st.matched = false; return []nftOutcome{st}, nil }
	if slices.ContainsFunc(toks, func(s string) bool { return s == "tcp" || s == "udp" || s == "sctp" }) {
		// The implicit protocol test nft puts first in the rule.
		for i := 0; i+1 < len(toks); i++ {
			if (toks[i] == "tcp" || toks[i] == "udp" || toks[i] == "sctp") && toks[i+1] == "dport" && toks[i] != p.proto {
				return fail()
			}
		}
	}
	mark := func(s string) (uint32, error) {
		v, err := strconv.ParseUint(s, 0, 32)
		return uint32(v), err
	}
	switch {
	case toks[0] == "jump" || toks[0] == "goto":
		st.verdict = toks[0] + " " + toks[1]
		return tr.rule(toks[2:], p, st)
	case toks[0] == "reject":
		st.verdict = "REJECT"
		return []nftOutcome{st}, nil
	case len(toks) >= 2 && toks[0] == "masquerade" && toks[1] == "fully-random":
		st.verdict = "MASQUERADE"
		return []nftOutcome{st}, nil
	case len(toks) >= 3 && toks[0] == "ct" && toks[1] == "state":
		if toks[2] != "new" { // every traced packet opens a connection
			return fail()
		}
		return tr.rule(toks[3:], p, st)
	case len(toks) >= 3 && toks[0] == "ct" && toks[1] == "status" && toks[2] == "dnat":
		if st.dnat == "" {
			return fail()
		}
		return tr.rule(toks[3:], p, st)
	case len(toks) >= 6 && toks[0] == "meta" && toks[1] == "mark" && toks[2] == "&" && toks[4] == "==":
		m, err1 := mark(toks[3])
		v, err2 := mark(toks[5])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("bad mark match %q", toks[:6])
		}
		if st.mark&m != v {
			return fail()
		}
		return tr.rule(toks[6:], p, st)
	case len(toks) >= 7 && toks[0] == "meta" && toks[1] == "mark" && toks[2] == "set" && toks[3] == "meta" && toks[4] == "mark":
		m, err := mark(toks[6])
		if err != nil {
			return nil, err
		}
		switch toks[5] {
		case "|":
			st.mark |= m
		case "^":
			st.mark ^= m
		default:
			return nil, fmt.Errorf("mark operator %s", toks[5])
		}
		return tr.rule(toks[7:], p, st)
	case len(toks) >= 2 && toks[0] == "counter" && toks[1] == "name":
		// counter name KEY map @counters: counts, and a key without a
		// counter ends the rule, as in the kernel.
		vals, n, err := tr.concat(toks[2:], p)
		if err != nil {
			return nil, err
		}
		rest := toks[2+n:]
		if len(vals) != 1 || len(rest) < 2 || rest[0] != "map" || !strings.HasPrefix(rest[1], "@") {
			return nil, fmt.Errorf("bad counter %q", toks)
		}
		name, ok, err := tr.element(rest[1][1:], vals[0].s)
		if err != nil {
			return nil, err
		}
		if !ok {
			return fail()
		}
		if _, ok := tr.t.counters[name]; !ok {
			return nil, fmt.Errorf("counter %s missing", name)
		}
		return tr.rule(rest[2:], p, st)
	case toks[0] == "update":
		// update @set { KEY timeout Ns }
		if len(toks) < 4 || !strings.HasPrefix(toks[1], "@") || toks[2] != "{" {
			return nil, fmt.Errorf("bad update %q", toks)
		}
		vals, n, err := tr.concat(toks[3:], p)
		if err != nil {
			return nil, err
		}
		rest := toks[3+n:]
		if len(vals) != 1 || len(rest) < 3 || rest[0] != "timeout" || !strings.HasSuffix(rest[1], "s") || rest[2] != "}" {
			return nil, fmt.Errorf("bad update %q", toks)
		}
		st.recent = append(st.recent[:len(st.recent):len(st.recent)], strings.TrimPrefix(toks[1], "@")+" "+vals[0].s)
		return tr.rule(rest[3:], p, st)
	case toks[0] == "dnat":
		// dnat ip addr . port to KEY map @name
		if len(toks) < 6 || (toks[1] != "ip" && toks[1] != "ip6") || strings.Join(toks[2:6], " ") != "addr . port to" {
			return nil, fmt.Errorf("bad dnat %q", toks)
		}
		vals, n, err := tr.concat(toks[6:], p)
		if err != nil {
			return nil, err
		}
		rest := toks[6+n:]
		if len(rest) != 2 || rest[0] != "map" || !strings.HasPrefix(rest[1], "@") {
			return nil, fmt.Errorf("bad dnat map %q", rest)
		}
		var out []nftOutcome
		for _, v := range vals {
			o := st
			o.prob *= v.prob
			data, ok, err := tr.element(rest[1][1:], v.s)
			if err != nil {
				return nil, err
			}
			if !ok {
				o.matched = false // a failed map lookup ends the rule
				out = append(out, o)
				continue
			}
			addr, port, ok := strings.Cut(data, " . ")
			if !ok {
				return nil, fmt.Errorf("dnat data %q", data)
			}
			o.dnat = netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(mustAtoi(port))).String()
			o.verdict = "accept"
			out = append(out, o)
		}
		return out, nil
	}
	// KEY @set ..., KEY vmap @map, KEY vmap { ... }
	vals, n, err := tr.concat(toks, p)
	if err != nil {
		return nil, err
	}
	rest := toks[n:]
	var out []nftOutcome
	for _, v := range vals {
		o := st
		o.prob *= v.prob
		switch {
		case len(rest) >= 1 && strings.HasPrefix(rest[0], "@"):
			if s := tr.t.sets[rest[0][1:]]; s != nil && s.isMap {
				// Kernels before 6.4 reject this ("Invalid argument").
				return nil, fmt.Errorf("map %s used as a set", rest[0][1:])
			}
			_, ok, err := tr.element(rest[0][1:], v.s)
			if err != nil {
				return nil, err
			}
			if !ok {
				o.matched = false
				out = append(out, o)
				continue
			}
			more, err := tr.rule(rest[1:], p, o)
			if err != nil {
				return nil, err
			}
			out = append(out, more...)
		case len(rest) == 2 && rest[0] == "vmap" && strings.HasPrefix(rest[1], "@"):
			verdict, ok, err := tr.element(rest[1][1:], v.s)
			if err != nil {
				return nil, err
			}
			if ok {
				o.verdict = verdict
			} else {
				o.matched = false
			}
			out = append(out, o)
		case len(rest) >= 3 && rest[0] == "vmap" && rest[1] == "{" && rest[len(rest)-1] == "}":
			inline := strings.Join(rest[2:len(rest)-1], " ")
			o.matched = false
			for _, item := range strings.Split(inline, ", ") {
				k, verdict, ok := strings.Cut(item, " : ")
				if !ok {
					return nil, fmt.Errorf("vmap item %q", item)
				}
				if k == v.s {
					o.matched, o.verdict = true, verdict
				}
			}
			out = append(out, o)
		default:
			return nil, fmt.Errorf("unknown statement at %q", rest)
		}
	}
	return out, nil
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

// loadNFT renders in for one family and loads it into a fake, as the first
// sync of the backend would.
func loadNFT(in NFTRenderInput) (*fakeNFT, *NFTRuleset, NFTRenderStats, error) {
	rs, stats, err := RenderNFTables(in)
	if err != nil {
		return nil, nil, stats, err
	}
	f := newFakeNFT()
	if err := f.Run(nil, rs.Text()); err != nil {
		return nil, nil, stats, fmt.Errorf("rendered ruleset does not load: %w", err)
	}
	return f, rs, stats, nil
}

func nftTableName(fam Family) string {
	f, _ := nftFamily(fam)
	return f + " " + NFTablesTable
}
