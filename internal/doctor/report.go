package doctor

import (
	"fmt"
	"io"
	"strings"
)

// Verdict is the outcome of one check.
type Verdict string

// The verdicts. Only Fail makes `bridge-agent doctor` exit non-zero.
const (
	OK   Verdict = "ok"
	Warn Verdict = "warn"
	Fail Verdict = "fail"
	Skip Verdict = "skip"
)

// Check is the result of one check.
type Check struct {
	// Name says what was checked, e.g. "credentials", "route to 10.96.0.0/12".
	Name    string  `json:"name"`
	Verdict Verdict `json:"verdict"`
	// Detail is what was found (for a skip: why the check could not run).
	Detail string `json:"detail"`
	// Fix is what to do, in one line, when the verdict is warn or fail.
	Fix string `json:"fix,omitempty"`
}

// Report is every check of one doctor run.
type Report struct {
	// Agent says whether the running agent answered on its status socket;
	// without it the checks that need its live view are skipped.
	Agent  string  `json:"agent"`
	Checks []Check `json:"checks"`
}

// OK reports whether no check failed.
func (r *Report) OK() bool {
	for _, c := range r.Checks {
		if c.Verdict == Fail {
			return false
		}
	}
	return true
}

// Failed returns the checks that failed.
func (r *Report) Failed() []Check {
	var out []Check
	for _, c := range r.Checks {
		if c.Verdict == Fail {
			out = append(out, c)
		}
	}
	return out
}

func (r *Report) add(c Check) { r.Checks = append(r.Checks, c) }

// WriteText writes the report for humans: one line per check, and the fix
// on the next line when there is one.
func (r *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "agent: %s\n", r.Agent)
	counts := map[Verdict]int{}
	for _, c := range r.Checks {
		counts[c.Verdict]++
		fmt.Fprintf(w, "[%-4s] %s: %s\n", c.Verdict, c.Name, oneLine(c.Detail))
		if c.Fix != "" {
			fmt.Fprintf(w, "       fix: %s\n", oneLine(c.Fix))
		}
	}
	fmt.Fprintf(w, "%d ok, %d warnings, %d failed, %d skipped\n", counts[OK], counts[Warn], counts[Fail], counts[Skip])
}

// oneLine folds a multi-line text into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}
