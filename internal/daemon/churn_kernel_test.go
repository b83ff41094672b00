package daemon_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bridge-agent/bridge-agent/internal/proxy"
)

// kernelProxy is the real nftables backend programming a network namespace
// the test creates: its nft runs there through a wrapper first in PATH.
// Its state is read back from the kernel: per Service port, the endpoints
// of its elements in the endpoints map, or a reject.
type kernelProxy struct {
	netns string
	nft   string // the real nft
	// others are the cluster IPs of the Services outside the test's
	// namespace (kubernetes, kube-dns), left out of state.
	others map[string]bool
}

// startKernelProxy returns the nftables backend writing into a new network
// namespace, removed at the end of the test; ok is false when this host
// has no nft or ip command.
func startKernelProxy(t *testing.T, ctx context.Context, log *slog.Logger) (*proxy.NFTables, *kernelProxy, bool) {
	t.Helper()
	nft, err := exec.LookPath("nft")
	if err != nil {
		return nil, nil, false
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, nil, false
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	k := &kernelProxy{netns: "bachurn" + hex.EncodeToString(b), nft: nft}
	if out, err := exec.Command("ip", "netns", "add", k.netns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", k.netns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", k.netns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", k.netns, err, out)
		}
	})
	dir := t.TempDir()
	wrapper := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", k.netns, nft)
	if err := os.WriteFile(filepath.Join(dir, "nft"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	p, err := proxy.NewNFTables(ctx, proxy.NFTablesOptions{Families: []proxy.Family{proxy.IPv4}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return p, k, true
}

// state reads the table back: the service-ips map, the no-endpoints set
// and the endpoints-R-tcp maps (the test's Services are TCP only when the
// kernel is checked: the UDP conntrack cleanup would run in this
// process's network namespace, the machine's own).
func (k *kernelProxy) state() (map[string]string, error) {
	out, err := exec.Command("ip", "netns", "exec", k.netns, k.nft, "-j", "list", "table", "ip", "bridge-agent").Output()
	if err != nil {
		return nil, fmt.Errorf("nft list table in %s: %w", k.netns, err)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("nft -j output: %w", err)
	}
	type set struct {
		Name string `json:"name"`
		Elem []any  `json:"elem"`
	}
	sets := map[string]set{}
	for _, o := range doc.Nftables {
		for _, kind := range []string{"set", "map"} {
			if raw, ok := o[kind]; ok {
				var s set
				if err := json.Unmarshal(raw, &s); err != nil {
					return nil, err
				}
				sets[s.Name] = s
			}
		}
	}
	res := map[string]string{}
	svcs := map[string]bool{} // "ip:port"
	for _, e := range sets["service-ips"].Elem {
		kv, _ := e.([]any)
		if len(kv) != 2 {
			return nil, fmt.Errorf("service-ips element %v", e)
		}
		key := flat(kv[0]) // ip, proto, port
		if len(key) == 3 && k.others[key[0]] {
			continue
		}
		if len(key) != 3 || key[1] != "tcp" {
			return nil, fmt.Errorf("service-ips key %v", key)
		}
		svcs[net.JoinHostPort(key[0], key[2])] = true
	}
	for _, e := range sets["no-endpoints"].Elem {
		key := flat(e)
		if len(key) == 3 && k.others[key[0]] {
			continue
		}
		if len(key) != 3 {
			return nil, fmt.Errorf("no-endpoints element %v", key)
		}
		res[net.JoinHostPort(key[0], key[2])+"/TCP"] = "reject"
	}
	// One map per endpoint index: endpoints-R-tcp maps a Service port to
	// its endpoint number R.
	eps := map[string][]string{}
	for name, m := range sets {
		idx, ok := strings.CutPrefix(name, "endpoints-")
		if idx, ok = strings.CutSuffix(idx, "-tcp"); !ok {
			continue
		}
		if _, err := strconv.Atoi(idx); err != nil {
			continue
		}
		for _, e := range m.Elem {
			kv, _ := e.([]any)
			if len(kv) != 2 {
				return nil, fmt.Errorf("%s element %v", name, e)
			}
			key, val := flat(kv[0]), flat(kv[1]) // ip, port → ip, port
			if len(key) == 2 && k.others[key[0]] {
				continue
			}
			if len(key) != 2 || len(val) != 2 {
				return nil, fmt.Errorf("%s element %v : %v", name, key, val)
			}
			sp := net.JoinHostPort(key[0], key[1])
			eps[sp] = append(eps[sp], net.JoinHostPort(val[0], val[1]))
		}
	}
	for sp := range svcs {
		if res[sp+"/TCP"] == "reject" {
			return nil, fmt.Errorf("%s both proxied and rejected", sp)
		}
		res[sp+"/TCP"] = joinOrReject(eps[sp])
	}
	for sp := range eps {
		if !svcs[sp] {
			res[sp+"/TCP"] = "endpoints without a service-ips element: " + strings.Join(eps[sp], " ")
		}
	}
	return res, nil
}

// flat returns the scalars of an nft JSON value: a concatenation's parts,
// or the value itself.
func flat(v any) []string {
	switch x := v.(type) {
	case map[string]any:
		if c, ok := x["concat"]; ok {
			return flat(c)
		}
		if e, ok := x["elem"]; ok {
			if m, ok := e.(map[string]any); ok {
				return flat(m["val"])
			}
		}
		return []string{fmt.Sprint(x)}
	case []any:
		var out []string
		for _, p := range x {
			out = append(out, flat(p)...)
		}
		return out
	case float64:
		return []string{fmt.Sprint(int64(x))}
	default:
		return []string{fmt.Sprint(x)}
	}
}

// withoutNames drops the Service name from proxyState's keys ("s1
// 10.96.0.5:80/TCP" → "10.96.0.5:80/TCP"): the kernel knows addresses.
func withoutNames(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		if _, rest, ok := strings.Cut(k, " "); ok {
			k = rest
		}
		out[k] = v
	}
	return out
}
