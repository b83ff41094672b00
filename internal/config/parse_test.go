package config

import (
	"errors"
	"strings"
	"testing"
)

// TestParseReportsEveryProblem: unknown fields and values of the wrong type
// are reported all at once, each by its path and line.
func TestParseReportsEveryProblem(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string // after minimal
		want []string
	}{
		{"unknown field with a suggestion", "dns:\n  namespaceDomain: [a]\n",
			[]string{"line 5: dns.namespaceDomain: unknown field (did you mean namespaceDomains?)"}},
		{"unknown top-level field", "kubeconfg: /x\n",
			[]string{"line 4: kubeconfg: unknown field (did you mean kubeconfig?)"}},
		{"unknown field, nothing close", "frobnicate: 1\n",
			[]string{"line 4: frobnicate: unknown field"}},
		{"bad durations", "proxy:\n  syncPeriod: soon\n  minSyncPeriod: [1]\ndns:\n  ttl: 5x\n", []string{
			`line 5: proxy.syncPeriod: "soon", want a duration such as "30s" or "5m"`,
			`line 6: proxy.minSyncPeriod: a list, want a duration such as "30s" or "5m"`,
			`line 8: dns.ttl: "5x", want a duration such as "30s" or "5m"`,
		}},
		{"wrong types", "routes:\n  cidrs: 10.0.0.0/8\n  table: main\n  minPrefixLength: {ipv4: x, ipv5: 3}\nenableProfiling: maybe\n", []string{
			`line 5: routes.cidrs: "10.0.0.0/8", want a list of strings`,
			`line 6: routes.table: "main", want an integer`,
			`line 7: routes.minPrefixLength.ipv4: "x", want an integer`,
			`line 7: routes.minPrefixLength.ipv5: unknown field (did you mean ipv4?)`,
			`line 8: enableProfiling: "maybe", want true or false`,
		}},
		{"a scalar for a section", "logging: verbose\n",
			[]string{`line 4: logging: must be a mapping of fields, not "verbose"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(strings.TrimPrefix(minimal, "\n") + tc.doc))
			var pe ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse: %v, want a ParseError", err)
			}
			got := make([]string, len(pe))
			for i, p := range pe {
				got[i] = p.Error()
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			if !strings.HasPrefix(err.Error(), "parse config: ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q: want one line prefixed by the operation", err)
			}
		})
	}
}

// TestParseAcceptsWhatTheDecoderAccepts: the field check agrees with the
// decoder on valid input: names in another case, null sections, numbers
// for strings, anchors.
func TestParseAcceptsWhatTheDecoderAccepts(t *testing.T) {
	for name, doc := range map[string]string{
		"case":    "ClusterDomain: example.org\n",
		"null":    "dns:\nproxy: ~\n",
		"anchors": "x-: &d 10s\nproxy: {syncPeriod: *d}\n",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse([]byte(minimal + doc))
			if name == "anchors" {
				// x- is an unknown field like any other.
				if err == nil || !strings.Contains(err.Error(), "x-: unknown field") || strings.Contains(err.Error(), "syncPeriod") {
					t.Errorf("Parse: %v, want only x- unknown", err)
				}
				return
			}
			if err != nil {
				t.Errorf("Parse: %v", err)
			}
		})
	}
}

func TestEditDistance(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{{"", "", 0}, {"a", "", 1}, {"kitten", "sitting", 3}, {"namespaceDomain", "namespaceDomains", 1}} {
		if got := editDistance(c.a, c.b); got != c.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}
