package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bridge-agent/bridge-agent/internal/atomicfile"
)

// The tables the agent's own iptables-nft writes created, so that cleanup
// can remove them again. iptables-nft keeps each iptables table as an
// nftables table ("table ip nat"), which the agent's first restore creates
// on a host that had none, and which stays after the agent's chains are
// gone. Cleanup deletes such a table only when the agent created it (it
// did not exist before the agent's first write, as recorded here) and
// nothing is left in it but empty built-in chains: a table someone else
// uses stays. Legacy (x_tables) tables cannot be removed from user space;
// the agent creates them only when it runs on iptables-legacy.

// createdTablesName is the record's file name in the state directory.
const createdTablesName = "iptables-created-tables"

// CreatedTablesFile is where the agent records, under stateDir, the
// iptables tables its writes created.
func CreatedTablesFile(stateDir string) string {
	return filepath.Join(stateDir, createdTablesName)
}

// createdTable is one record: "nft ip nat" (variant, nftables family,
// table).
type createdTable struct {
	variant Variant
	fam     Family
	table   string
}

// nftFamily is the nftables family iptables-nft keeps fam's tables in.
func (c createdTable) nftFamily() string {
	if c.fam == IPv6 {
		return "ip6"
	}
	return "ip"
}

func (c createdTable) String() string {
	return fmt.Sprintf("%s %s %s", c.variant, c.nftFamily(), c.table)
}

func readCreatedTables(path string) ([]createdTable, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read created tables: %w", err)
	}
	var out []createdTable
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != string(VariantNFT) || (f[1] != "ip" && f[1] != "ip6") || (f[2] != "nat" && f[2] != "filter") {
			continue // not a record this version writes: never act on it
		}
		fam := IPv4
		if f[1] == "ip6" {
			fam = IPv6
		}
		out = append(out, createdTable{variant: VariantNFT, fam: fam, table: f[2]})
	}
	return out, nil
}

// noteCreatedTables records, before the agent's first write to a family,
// which of its tables do not exist yet and will be created by that write.
// Only iptables-nft tables are recorded: they are the ones cleanup can
// remove. Records already there stay (a restarted agent finds the tables
// its earlier run created).
func (p *IPTables) noteCreatedTables(ctx context.Context, fam Family) error {
	if p.opts.CreatedTables == "" || p.opts.Variant != VariantNFT || p.noted[fam] {
		return nil
	}
	tables, err := p.x.Tables(ctx, fam)
	if err != nil {
		return err
	}
	recs, err := readCreatedTables(p.opts.CreatedTables)
	if err != nil {
		return err
	}
	n := len(recs)
	for _, table := range []string{"nat", "filter"} {
		c := createdTable{variant: p.opts.Variant, fam: fam, table: table}
		if !slices.Contains(tables, table) && !slices.Contains(recs, c) {
			recs = append(recs, c)
		}
	}
	if len(recs) > n {
		err := atomicfile.Write(p.opts.CreatedTables, 0o600, func(w io.Writer) error {
			for _, c := range recs {
				if _, err := fmt.Fprintln(w, c); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("record created tables: %w", err)
		}
	}
	p.noted[fam] = true
	return nil
}

// RemoveCreatedTables deletes the iptables-nft tables that the agent's
// writes created (recorded under stateDir, see CreatedTablesFile) and that
// now hold nothing but empty built-in chains with policy accept; any other
// table stays, whoever made it. Run it after CleanupIPTables. The record
// goes: a table kept is no longer the agent's alone.
func RemoveCreatedTables(ctx context.Context, stateDir string) error {
	path := CreatedTablesFile(stateDir)
	recs, err := readCreatedTables(path)
	if err != nil || len(recs) == 0 {
		return err
	}
	nft := func(ctx context.Context, args ...string) ([]byte, error) { return runTool(ctx, nil, "nft", args...) }
	var errs []error
	for _, c := range recs {
		if err := removeIfEmpty(ctx, c, nft); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove created tables: %w", err)
	}
	return nil
}

// removeIfEmpty deletes the table of c when it exists and is empty (see
// tableEmpty). nft runs nft with the given arguments.
func removeIfEmpty(ctx context.Context, c createdTable, nft func(ctx context.Context, args ...string) ([]byte, error)) error {
	family := c.nftFamily()
	out, err := nft(ctx, "-j", "list", "table", family, c.table)
	if err != nil {
		if strings.Contains(err.Error(), "No such file or directory") {
			return nil // gone already
		}
		return fmt.Errorf("remove created table %s %s: %w", family, c.table, err)
	}
	empty, err := tableEmpty(out)
	if err != nil {
		return fmt.Errorf("remove created table %s %s: %w", family, c.table, err)
	}
	if !empty {
		return nil // someone else's rules, chains or sets are in it
	}
	if _, err := nft(ctx, "delete", "table", family, c.table); err != nil {
		return fmt.Errorf("remove created table %s %s: %w", family, c.table, err)
	}
	return nil
}

// iptablesBuiltinChains are the chains iptables-nft makes in its nat and filter
// tables.
var iptablesBuiltinChains = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// tableEmpty tells whether `nft -j list table` output shows a table with
// nothing in it but built-in chains that accept: no rule, no other chain,
// no set, map or any other object.
func tableEmpty(listing []byte) (bool, error) {
	var doc struct {
		NFTables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(listing, &doc); err != nil {
		return false, fmt.Errorf("parse nft listing: %w", err)
	}
	for _, obj := range doc.NFTables {
		for kind, raw := range obj {
			switch kind {
			case "metainfo", "table":
			case "chain":
				var ch struct {
					Name   string `json:"name"`
					Policy string `json:"policy"`
				}
				if err := json.Unmarshal(raw, &ch); err != nil {
					return false, fmt.Errorf("parse nft listing: %w", err)
				}
				if !slices.Contains(iptablesBuiltinChains, ch.Name) || (ch.Policy != "" && ch.Policy != "accept") {
					return false, nil
				}
			default:
				return false, nil
			}
		}
	}
	return true, nil
}
