package proxy

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// fakeNFT models the kernel's nftables state as the backend sees it: tables
// with chains (rules as text) and sets (elements). Run applies a script with
// the kernel's rules for the commands the backend sends, all or nothing:
// missing objects, elements added twice with different values, and chains
// deleted while referenced fail the whole transaction.
type fakeNFT struct {
	tables   map[string]*fakeNFTTable // "ip bridge-agent"
	runs     int
	scripts  [][]byte
	failNext error
}

var _ nftRunner = (*fakeNFT)(nil)

type fakeNFTTable struct {
	chains map[string]*fakeNFTChain
	sets   map[string]*fakeNFTSet
	// counters holds the named counters' packets; a test sets them to
	// stand for traffic.
	counters map[string]uint64
}

type fakeNFTChain struct {
	base  string
	rules []string
}

type fakeNFTSet struct {
	isMap    bool
	decl     string
	elements map[string]NFTElement
}

func newFakeNFT() *fakeNFT { return &fakeNFT{tables: map[string]*fakeNFTTable{}} }

func (f *fakeNFT) clone() map[string]*fakeNFTTable {
	out := map[string]*fakeNFTTable{}
	for name, t := range f.tables {
		c := &fakeNFTTable{chains: map[string]*fakeNFTChain{}, sets: map[string]*fakeNFTSet{}, counters: maps.Clone(t.counters)}
		for n, ch := range t.chains {
			c.chains[n] = &fakeNFTChain{base: ch.base, rules: slices.Clone(ch.rules)}
		}
		for n, s := range t.sets {
			c.sets[n] = &fakeNFTSet{isMap: s.isMap, decl: s.decl, elements: maps.Clone(s.elements)}
		}
		out[name] = c
	}
	return out
}

func (f *fakeNFT) Run(_ context.Context, script []byte) error {
	if f.failNext != nil {
		err := f.failNext
		f.failNext = nil
		return err
	}
	tables := f.clone()
	for n, line := range strings.Split(strings.TrimSuffix(string(script), "\n"), "\n") {
		if err := fakeApply(tables, line); err != nil {
			return fmt.Errorf("line %d %q: %w", n+1, line, err)
		}
	}
	f.tables = tables
	f.runs++
	f.scripts = append(f.scripts, script)
	return nil
}

// braced returns the text between the first "{ " and the last " }".
func braced(s string) (string, error) {
	i, j := strings.Index(s, "{ "), strings.LastIndex(s, " }")
	if i < 0 || j < i {
		return "", fmt.Errorf("no braces in %q", s)
	}
	return s[i+2 : j], nil
}

func fakeApply(tables map[string]*fakeNFTTable, line string) error {
	f := strings.Fields(line)
	if len(f) < 4 {
		return fmt.Errorf("short command")
	}
	verb, kind, tname := f[0], f[1], f[2]+" "+f[3]
	if f[2] != "ip" && f[2] != "ip6" {
		return fmt.Errorf("family %s", f[2])
	}
	if kind == "table" {
		switch verb {
		case "add":
			if tables[tname] == nil {
				tables[tname] = &fakeNFTTable{chains: map[string]*fakeNFTChain{}, sets: map[string]*fakeNFTSet{}, counters: map[string]uint64{}}
			}
		case "delete":
			if tables[tname] == nil {
				return fmt.Errorf("no table %s", tname)
			}
			delete(tables, tname)
		default:
			return fmt.Errorf("unknown verb %s", verb)
		}
		return nil
	}
	t := tables[tname]
	if t == nil {
		return fmt.Errorf("no table %s", tname)
	}
	if len(f) < 5 {
		return fmt.Errorf("no object name")
	}
	name := f[4]
	rest := strings.Join(f[5:], " ")
	switch verb + " " + kind {
	case "add chain":
		base := ""
		if rest != "" {
			b, err := braced(rest)
			if err != nil {
				return err
			}
			base = b
		}
		if c := t.chains[name]; c != nil {
			if c.base != base {
				return fmt.Errorf("chain %s exists with another type", name)
			}
			return nil
		}
		t.chains[name] = &fakeNFTChain{base: base}
	case "flush chain":
		c := t.chains[name]
		if c == nil {
			return fmt.Errorf("no chain %s", name)
		}
		c.rules = nil
	case "delete chain":
		if t.chains[name] == nil {
			return fmt.Errorf("no chain %s", name)
		}
		for cn, c := range t.chains {
			for _, r := range c.rules {
				if cn != name && slices.Contains(ruleChainRefs(r), name) {
					return fmt.Errorf("chain %s is busy: used by %s", name, cn)
				}
			}
		}
		for sn, s := range t.sets {
			for _, e := range s.elements {
				if e.Value == "goto "+name || e.Value == "jump "+name {
					return fmt.Errorf("chain %s is busy: used by an element of %s", name, sn)
				}
			}
		}
		delete(t.chains, name)
	case "add rule":
		c := t.chains[name]
		if c == nil {
			return fmt.Errorf("no chain %s", name)
		}
		for _, ref := range ruleChainRefs(rest) {
			if t.chains[ref] == nil {
				return fmt.Errorf("rule refers to missing chain %s", ref)
			}
		}
		words := strings.Fields(rest)
		for i, w := range words {
			name, ok := strings.CutPrefix(w, "@")
			if !ok {
				continue
			}
			s := t.sets[name]
			if s == nil {
				return fmt.Errorf("rule refers to missing set %s", name)
			}
			// Kernels before 6.4 reject a map used as a plain set
			// ("Invalid argument"): only "map @m" and "vmap @m" read one.
			if s.isMap && (i == 0 || (words[i-1] != "map" && words[i-1] != "vmap")) {
				return fmt.Errorf("rule uses map %s as a set", name)
			}
		}
		c.rules = append(c.rules, rest)
	case "add counter":
		if _, ok := t.counters[name]; !ok {
			t.counters[name] = 0 // adding one that exists keeps its value
		}
	case "delete counter":
		if _, ok := t.counters[name]; !ok {
			return fmt.Errorf("no counter %s", name)
		}
		for sn, s := range t.sets {
			for _, e := range s.elements {
				if s.isCounterMap() && e.Value == name {
					return fmt.Errorf("counter %s is busy: used by an element of %s", name, sn)
				}
			}
		}
		delete(t.counters, name)
	case "add map", "add set":
		decl, err := braced(rest)
		if err != nil {
			return err
		}
		if s := t.sets[name]; s != nil {
			if s.decl != decl || s.isMap != (kind == "map") {
				return fmt.Errorf("%s %s exists with another type", kind, name)
			}
			return nil
		}
		t.sets[name] = &fakeNFTSet{isMap: kind == "map", decl: decl, elements: map[string]NFTElement{}}
	case "delete map", "delete set":
		s := t.sets[name]
		if s == nil || s.isMap != (kind == "map") {
			return fmt.Errorf("no %s %s", kind, name)
		}
		for cn, c := range t.chains {
			for _, r := range c.rules {
				if slices.Contains(strings.Fields(r), "@"+name) {
					return fmt.Errorf("%s %s is busy: used by %s", kind, name, cn)
				}
			}
		}
		delete(t.sets, name)
	case "flush map", "flush set":
		s := t.sets[name]
		if s == nil || s.isMap != (kind == "map") {
			return fmt.Errorf("no %s %s", kind, name)
		}
		clear(s.elements)
	case "add element", "delete element":
		s := t.sets[name]
		if s == nil {
			return fmt.Errorf("no set %s", name)
		}
		body, err := braced(rest)
		if err != nil {
			return err
		}
		for _, item := range strings.Split(body, ", ") {
			e := NFTElement{Key: item}
			if s.isMap && verb == "add" {
				k, v, ok := strings.Cut(item, " : ")
				if !ok {
					return fmt.Errorf("map element %q without value", item)
				}
				e.Key, e.Value = k, v
			}
			if k, c, ok := strings.Cut(e.Key, ` comment "`); ok {
				e.Key, e.Comment = k, strings.TrimSuffix(c, `"`)
			}
			if verb == "delete" {
				if _, ok := s.elements[e.Key]; !ok {
					return fmt.Errorf("no element %q in %s", e.Key, name)
				}
				delete(s.elements, e.Key)
				continue
			}
			if _, ok := t.counters[e.Value]; s.isCounterMap() && !ok {
				return fmt.Errorf("element refers to missing counter %s", e.Value)
			}
			if target, ok := strings.CutPrefix(e.Value, "goto "); ok && t.chains[target] == nil {
				return fmt.Errorf("element refers to missing chain %s", target)
			}
			if old, ok := s.elements[e.Key]; ok && old.Value != e.Value {
				return fmt.Errorf("element %q exists with another value", e.Key)
			}
			s.elements[e.Key] = e
		}
	default:
		return fmt.Errorf("unknown command %s %s", verb, kind)
	}
	return nil
}

// isCounterMap tells whether s maps keys to named counters.
func (s *fakeNFTSet) isCounterMap() bool { return s.isMap && strings.HasSuffix(s.decl, ": counter;") }

// ruleChainRefs returns the chains a rule jumps or goes to.
func ruleChainRefs(rule string) []string {
	var out []string
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "jump" || f[i] == "goto" {
			out = append(out, strings.TrimRight(f[i+1], ","))
		}
	}
	return out
}

// dump renders the state of one table in a stable form for comparisons.
func (f *fakeNFT) dump(tname string) string {
	t := f.tables[tname]
	if t == nil {
		return "<no table>\n"
	}
	var b strings.Builder
	for _, n := range slices.Sorted(maps.Keys(t.chains)) {
		c := t.chains[n]
		fmt.Fprintf(&b, "chain %s {%s}\n", n, c.base)
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t%s\n", r)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(t.counters)) {
		fmt.Fprintf(&b, "counter %s\n", n)
	}
	for _, n := range slices.Sorted(maps.Keys(t.sets)) {
		s := t.sets[n]
		fmt.Fprintf(&b, "set %s {%s}\n", n, s.decl)
		for _, k := range slices.Sorted(maps.Keys(s.elements)) {
			e := s.elements[k]
			fmt.Fprintf(&b, "\t%s [%s] : %s\n", e.Key, e.Comment, e.Value)
		}
	}
	return b.String()
}
