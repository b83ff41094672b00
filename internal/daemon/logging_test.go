package daemon

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

func TestJournalLoggerPriorities(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger(&buf, "text", 2, true)
	log.With("consumer", "dns").Debug("detail", "name", "a.b")
	log.Info("synced", "services", 3)
	log.WithGroup("g").Warn("slow", "took", "2s")
	log.Error("cannot save", "err", errors.New("disk full"))
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	want := []struct{ prefix, attrs string }{
		{"<7>level=DEBUG msg=detail", "consumer=dns name=a.b"},
		{"<6>level=INFO msg=synced", "services=3"},
		{"<4>level=WARN msg=slow", "g.took=2s"},
		{"<3>level=ERROR msg=\"cannot save\"", "err=\"disk full\""},
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w.prefix) || !strings.Contains(lines[i], w.attrs) {
			t.Errorf("line %d = %q, want prefix %q and %q", i, lines[i], w.prefix, w.attrs)
		}
		if strings.Contains(lines[i], "time=") {
			t.Errorf("line %d = %q keeps time=", i, lines[i])
		}
	}
}

func TestJournalLoggerJSON(t *testing.T) {
	var buf bytes.Buffer
	NewLogger(&buf, "json", 0, true).Warn("w", "k", 1)
	got := buf.String()
	if !strings.HasPrefix(got, `<4>{"level":"WARN","msg":"w","k":1}`) {
		t.Errorf("got %q", got)
	}
}

func TestPlainLoggerKeepsTime(t *testing.T) {
	var buf bytes.Buffer
	NewLogger(&buf, "text", 0, false).Warn("w")
	if got := buf.String(); !strings.HasPrefix(got, "time=") || strings.HasPrefix(got, "<") {
		t.Errorf("got %q, want a plain line with time=", got)
	}
}

func TestLoggerVerbosity(t *testing.T) {
	var buf bytes.Buffer
	NewLogger(&buf, "text", 0, true).Debug("hidden")
	if buf.Len() != 0 {
		t.Errorf("verbosity 0 logged a debug line: %q", buf.String())
	}
}

func TestKlogLevels(t *testing.T) {
	defer klog.ClearLogger()
	var buf bytes.Buffer
	NewLogger(&buf, "text", 0, true)
	klog.InfoS("reflector started")
	klog.ErrorS(errors.New("forbidden"), "failed to list")
	klog.Flush()
	got := buf.String()
	if strings.Contains(got, "reflector started") {
		t.Errorf("klog info shown at verbosity 0: %q", got)
	}
	if !strings.Contains(got, "<4>") || !strings.Contains(got, "failed to list") || !strings.Contains(got, "component=client-go") {
		t.Errorf("klog error not logged as a client-go warning: %q", got)
	}
	buf.Reset()
	NewLogger(&buf, "text", 2, true)
	klog.InfoS("reflector started")
	klog.Flush()
	if got := buf.String(); !strings.HasPrefix(got, "<7>") || !strings.Contains(got, "reflector started") {
		t.Errorf("klog info at verbosity 2 = %q, want a debug line", got)
	}
}

func TestPriority(t *testing.T) {
	for l, want := range map[slog.Level]int{slog.LevelDebug - 2: 7, slog.LevelDebug: 7, slog.LevelInfo: 6, slog.LevelWarn: 4, slog.LevelError: 3, slog.LevelError + 4: 3} {
		if got := Priority(l); got != want {
			t.Errorf("Priority(%v) = %d, want %d", l, got, want)
		}
	}
}

func TestIsJournalStream(t *testing.T) {
	for _, c := range []struct {
		env      string
		dev, ino uint64
		want     bool
	}{
		{"8:1234", 8, 1234, true},
		{"8:1234", 8, 1235, false},
		{"9:1234", 8, 1234, false},
		{"", 0, 0, false},
		{"8", 8, 0, false},
		{"8:x", 8, 0, false},
		{"-1:2", 0, 2, false},
		{"66306:18446744073709551615", 66306, 18446744073709551615, true},
	} {
		if got := IsJournalStream(c.env, c.dev, c.ino); got != c.want {
			t.Errorf("IsJournalStream(%q, %d, %d) = %v, want %v", c.env, c.dev, c.ino, got, c.want)
		}
	}
}
