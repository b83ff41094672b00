package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
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
	// Tables lists the tables that exist in one family, found without
	// creating any (see existingTables).
	Tables(ctx context.Context, fam Family) ([]string, error)
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

func (x *execXtables) Tables(ctx context.Context, fam Family) ([]string, error) {
	return existingTables(ctx, fam, x.variant, os.ReadFile, func(ctx context.Context, tool string) ([]byte, error) {
		return runTool(ctx, nil, tool)
	})
}

// procTablesNames is the kernel's list of the legacy (x_tables) tables
// that exist in this network namespace, per family.
func procTablesNames(fam Family) string {
	if fam == IPv6 {
		return "/proc/net/ip6_tables_names"
	}
	return "/proc/net/ip_tables_names"
}

// existingTables lists the tables of one variant and family that exist,
// without creating any. Listing a legacy table by name creates it:
// "iptables-legacy -t nat -S", "iptables-legacy-save -t nat", even a
// check or delete of a rule instantiate it in the network namespace (and
// load the module), and a legacy table cannot be removed again from user
// space; from then on every iptables-nft command on the host warns
// "iptables-legacy tables present". So the legacy tables are read from
// /proc/net/ip_tables_names (ip6_tables_names), which lists only the tables
// that exist; a missing file means the legacy module is not even loaded
// and no legacy table exists. iptables-nft-save without -t prints only the
// tables that exist and creates none.
func existingTables(ctx context.Context, fam Family, v Variant, readFile func(string) ([]byte, error), save func(ctx context.Context, tool string) ([]byte, error)) ([]string, error) {
	if v == VariantLegacy {
		b, err := readFile(procTablesNames(fam))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list legacy tables: %w", err)
		}
		return strings.Fields(string(b)), nil
	}
	out, err := save(ctx, toolName(fam, v, "-save"))
	if err != nil {
		return nil, err
	}
	return parseTables(out), nil
}

// parseTables returns the table names ("*nat") in iptables-save output.
func parseTables(save []byte) []string {
	var out []string
	for line := range strings.SplitSeq(string(save), "\n") {
		if name, ok := strings.CutPrefix(line, "*"); ok {
			out = append(out, strings.TrimSpace(name))
		}
	}
	return out
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

// saveExisting returns iptables-save of every table of one variant and
// family that exists, creating none; nothing when there is none or the
// tools fail.
func saveExisting(ctx context.Context, fam Family, v Variant) []byte {
	tool := toolName(fam, v, "-save")
	if _, err := exec.LookPath(tool); err != nil {
		return nil
	}
	if v == VariantLegacy {
		tables, err := existingTables(ctx, fam, v, os.ReadFile, nil)
		if err != nil || len(tables) == 0 {
			return nil
		}
	}
	// Without -t, iptables-legacy-save dumps the tables the kernel lists,
	// which exist; iptables-nft-save creates none either.
	out, err := runTool(ctx, nil, tool)
	if err != nil {
		return nil
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
			all = append(all, saveExisting(ctx, fam, v)...)
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
