package guest

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// kernelPackage is a package whose real-kernel tests run in the guests:
// the top-level tests that reach, through the package's own functions, a
// call to one of its markers (the helpers that create network namespaces,
// or the calls that open real sockets).
type kernelPackage struct {
	Dir     string // relative to the repository root
	Name    string // the test binary's name
	Markers []string
}

var kernelPackages = []kernelPackage{
	{Dir: "internal/proxy", Name: "proxy", Markers: []string{"nftNetns", "iptNetns", "testNetns"}},
	{Dir: "internal/routes", Name: "routes", Markers: []string{"newTestNetns"}},
	// The stub's tests on real UDP and TCP sockets on the loopback.
	{Dir: "internal/dnsstub", Name: "dnsstub", Markers: []string{"Start", "ListenPacket", "Listen", "Dial", "Exchange"}},
	// The link systemd-resolved is pointed at (veth, its address, a socket
	// bound to it reaching the stub); the rest of hostdns writes files
	// under a temporary host root and talks to a fake resolved.
	{Dir: "internal/hostdns", Name: "hostdns", Markers: []string{"inNewNetns"}},
	// The host guard's netlink watcher following address and route changes.
	{Dir: "internal/hostguard", Name: "hostguard", Markers: []string{"testNetns"}},
}

// kernelTests returns the names of the package's top-level tests that
// reach a marker, sorted.
func kernelTests(root string, p kernelPackage) ([]string, error) {
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(root, p.Dir, "*_test.go"))
	if err != nil {
		return nil, err
	}
	calls := map[string][]string{} // package-level function or method name -> names it calls
	var tests []string
	for _, f := range files {
		af, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, fmt.Errorf("discover kernel tests: %w", err)
		}
		for _, d := range af.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			name := fd.Name.Name
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				if c, ok := n.(*ast.CallExpr); ok {
					switch fn := c.Fun.(type) {
					case *ast.Ident:
						calls[name] = append(calls[name], fn.Name)
					case *ast.SelectorExpr:
						calls[name] = append(calls[name], fn.Sel.Name)
					}
				}
				return true
			})
			if fd.Recv == nil && strings.HasPrefix(name, "Test") && name != "TestMain" {
				tests = append(tests, name)
			}
		}
	}
	// reaches reports whether fn calls a marker, directly or through the
	// package's functions.
	memo := map[string]bool{}
	var reaches func(fn string, seen map[string]bool) bool
	reaches = func(fn string, seen map[string]bool) bool {
		if v, ok := memo[fn]; ok {
			return v
		}
		if seen[fn] {
			return false
		}
		seen[fn] = true
		for _, c := range calls[fn] {
			if slices.Contains(p.Markers, c) || reaches(c, seen) {
				memo[fn] = true
				return true
			}
		}
		return false
	}
	var out []string
	for _, t := range tests {
		if reaches(t, map[string]bool{}) {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out, nil
}

// runPattern is the -test.run pattern that selects exactly these tests.
func runPattern(tests []string) string {
	q := make([]string, len(tests))
	for i, t := range tests {
		q[i] = regexp.QuoteMeta(t)
	}
	return "^(" + strings.Join(q, "|") + ")$"
}

// TestKernelTestDiscovery checks the discovery on this repository: the
// tests known to need a kernel are found, pure ones are not.
func TestKernelTestDiscovery(t *testing.T) {
	root := repoRoot(t)
	want := map[string]struct{ in, out []string }{
		"proxy":  {in: []string{"TestNFTablesKernel", "TestIPTablesPartialKernel"}, out: []string{"TestRenderIPTablesGolden"}},
		"routes": {in: []string{"TestRouterStates", "TestCleanup"}, out: []string{"TestDesiredNodes"}},
	}
	for _, p := range kernelPackages {
		got, err := kernelTests(root, p)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %s", p.Name, strings.Join(got, " "))
		if len(got) == 0 {
			t.Errorf("%s: no kernel tests found", p.Name)
		}
		for _, n := range want[p.Name].in {
			if !slices.Contains(got, n) {
				t.Errorf("%s: %s not found among the kernel tests", p.Name, n)
			}
		}
		for _, n := range want[p.Name].out {
			if slices.Contains(got, n) {
				t.Errorf("%s: pure test %s taken for a kernel test", p.Name, n)
			}
		}
		re := regexp.MustCompile(runPattern(got))
		for _, n := range got {
			if !re.MatchString(n) || re.MatchString(n+"X") {
				t.Errorf("pattern %s does not select exactly %s", re, n)
			}
		}
	}
}
