package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// Variant is the iptables flavour: the legacy x_tables kernel interface or
// nf_tables behind the same command line. A host uses one; mixing them
// splits the ruleset into two that the kernel runs one after the other.
type Variant string

// Variants.
const (
	VariantLegacy Variant = "legacy"
	VariantNFT    Variant = "nft"
)

// lockWait is how long a command waits for the xtables lock held by another
// process (firewalld, docker, an admin) before giving up; the sync is then
// retried with backoff and the rules in place stay as they are.
const lockWait = 15 * time.Second

// xtables runs the iptables tools of one variant. Only these operations are
// used by the backend; tests of the sync logic replace it.
type xtables interface {
	// Chains lists the chain names of one table (from iptables-save).
	Chains(ctx context.Context, fam Family, table string) ([]string, error)
	// Restore feeds payload to iptables-restore --noflush, atomically per table.
	Restore(ctx context.Context, fam Family, payload []byte) error
	// JumpExists, InsertJump and DeleteJump manage one rule in a built-in chain.
	JumpExists(fam Family, j Jump) (bool, error)
	InsertJump(fam Family, j Jump) error
	DeleteJump(fam Family, j Jump) error
}

// execXtables is the real xtables: it runs iptables-<variant>-save and
// -restore, and uses go-iptables for single rules.
type execXtables struct {
	variant Variant
	ipt     map[Family]*iptables.IPTables
}

var _ xtables = (*execXtables)(nil)

func toolName(fam Family, v Variant, suffix string) string {
	base := "iptables"
	if fam == IPv6 {
		base = "ip6tables"
	}
	return base + "-" + string(v) + suffix
}

// newExecXtables finds the variant's tools for the given families.
func newExecXtables(v Variant, fams []Family) (*execXtables, error) {
	x := &execXtables{variant: v, ipt: map[Family]*iptables.IPTables{}}
	for _, fam := range fams {
		path, err := exec.LookPath(toolName(fam, v, ""))
		if err != nil {
			return nil, fmt.Errorf("iptables %s: %w", v, err)
		}
		proto := iptables.ProtocolIPv4
		if fam == IPv6 {
			proto = iptables.ProtocolIPv6
		}
		ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(path), iptables.Timeout(int(lockWait/time.Second)))
		if err != nil {
			return nil, fmt.Errorf("iptables %s: %w", v, err)
		}
		x.ipt[fam] = ipt
	}
	return x, nil
}

func (x *execXtables) Chains(ctx context.Context, fam Family, table string) ([]string, error) {
	out, err := runTool(ctx, nil, toolName(fam, x.variant, "-save"), "-t", table)
	if err != nil {
		return nil, err
	}
	return parseChains(out), nil
}

func (x *execXtables) Restore(ctx context.Context, fam Family, payload []byte) error {
	_, err := runTool(ctx, payload, toolName(fam, x.variant, "-restore"), "--noflush", fmt.Sprintf("--wait=%d", int(lockWait/time.Second)))
	return err
}

func (x *execXtables) JumpExists(fam Family, j Jump) (bool, error) {
	return x.ipt[fam].Exists(j.Table, j.Chain, j.Rule...)
}

func (x *execXtables) InsertJump(fam Family, j Jump) error {
	return x.ipt[fam].Insert(j.Table, j.Chain, 1, j.Rule...)
}

func (x *execXtables) DeleteJump(fam Family, j Jump) error {
	return x.ipt[fam].DeleteIfExists(j.Table, j.Chain, j.Rule...)
}

func runTool(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// parseChains returns the chain names declared in iptables-save output.
func parseChains(save []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, ":") {
			continue
		}
		if name, _, ok := strings.Cut(line[1:], " "); ok {
			out = append(out, name)
		}
	}
	return out
}

// DetectVariant picks the iptables variant this host uses: the one that
// already holds our chains (a restarted agent stays where it was), else the
// one holding more rules of others (so ours sit beside theirs), else nft,
// the default of current distributions.
func DetectVariant(ctx context.Context) (Variant, error) {
	type look struct {
		v     Variant
		save  []byte
		found bool
	}
	var looks []look
	for _, v := range []Variant{VariantLegacy, VariantNFT} {
		if _, err := exec.LookPath(toolName(IPv4, v, "-save")); err != nil {
			continue
		}
		var all []byte
		for _, fam := range []Family{IPv4, IPv6} {
			out, err := runTool(ctx, nil, toolName(fam, v, "-save"))
			if err == nil {
				all = append(all, out...)
			}
		}
		looks = append(looks, look{v: v, save: all, found: true})
	}
	if len(looks) == 0 {
		return "", errors.New("detect iptables: neither iptables-legacy nor iptables-nft is installed")
	}
	for _, l := range looks {
		if bytes.Contains(l.save, []byte(":"+ServicesChain+" ")) {
			return l.v, nil
		}
	}
	best := looks[len(looks)-1] // nft when present
	for _, l := range looks {
		if countForeignRules(l.save) > countForeignRules(best.save) {
			best = l
		}
	}
	return best.v, nil
}
