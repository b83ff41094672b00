package daemon

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"k8s.io/klog/v2"
)

// NewLogger returns the agent's one structured logger and routes client-go's
// klog output into it, so every line lands in one stream and format.
// Verbosity v shows our own Debug lines (per-object detail) from v >= 2.
//
// With journal set (stderr is the systemd journal: StderrIsJournal) every
// line starts with its syslog priority as sd-daemon(3) defines it (<3>
// error, <4> warning, <6> info, <7> debug), so `journalctl -p warning`
// selects the agent's warnings and errors, and slog's time= is left out:
// the journal stamps each line itself.
//
// client-go's klog messages are its internals (reflector restarts, request
// retries): they are logged at debug level, with component=client-go, so
// they show only from verbosity 2. Its errors (a list or watch the API
// server refuses: RBAC, a wrong CA) are logged as warnings: client-go
// retries them, and the agent says what it waits for in its own lines and
// in systemd's STATUS=, but a refusal the agent does not report otherwise
// (a forbidden list) must stay visible at the default verbosity.
func NewLogger(w io.Writer, format string, verbosity int, journal bool) *slog.Logger {
	level := slog.LevelInfo
	if verbosity >= 2 {
		level = slog.LevelDebug - slog.Level(verbosity-2)
	}
	opts := &slog.HandlerOptions{Level: level}
	if journal {
		opts.ReplaceAttr = dropTime
		w = &priorityWriter{w: w}
	}
	var h slog.Handler
	if format == "json" {
		h = slog.NewJSONHandler(w, opts)
	} else {
		h = slog.NewTextHandler(w, opts)
	}
	if pw, ok := w.(*priorityWriter); ok {
		h = &journalHandler{inner: h, pw: pw}
	}
	logger := slog.New(h)
	klog.SetSlogLogger(slog.New(&klogHandler{inner: h.WithAttrs([]slog.Attr{slog.String("component", "client-go")})}))
	return logger
}

// dropTime removes the top-level time attribute.
func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// Priority returns the syslog priority (sd-daemon(3): SD_ERR 3, SD_WARNING
// 4, SD_INFO 6, SD_DEBUG 7) of a log level.
func Priority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l >= slog.LevelWarn:
		return 4
	case l >= slog.LevelInfo:
		return 6
	}
	return 7
}

// priorityWriter prefixes each line with the priority its journalHandler
// set; the handler holds mu around the inner handler's one Write per record.
type priorityWriter struct {
	mu   sync.Mutex
	w    io.Writer
	prio int
}

func (p *priorityWriter) Write(b []byte) (int, error) {
	line := make([]byte, 0, len(b)+3)
	line = append(line, '<', byte('0'+p.prio), '>')
	line = append(line, b...)
	if _, err := p.w.Write(line); err != nil {
		return 0, err
	}
	return len(b), nil
}

// journalHandler tells its priorityWriter the priority of each record.
type journalHandler struct {
	inner slog.Handler
	pw    *priorityWriter
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.pw.mu.Lock()
	defer h.pw.mu.Unlock()
	h.pw.prio = Priority(r.Level)
	return h.inner.Handle(ctx, r)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(as), pw: h.pw}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), pw: h.pw}
}

// klogHandler lowers client-go's messages: errors to warnings, everything
// else to debug (klog's V(n) to debug-n).
type klogHandler struct {
	inner slog.Handler
}

func klogLevel(l slog.Level) slog.Level {
	if l >= slog.LevelError {
		return slog.LevelWarn
	}
	if l > slog.LevelInfo {
		return slog.LevelDebug
	}
	return slog.LevelDebug + l - slog.LevelInfo
}

func (h *klogHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, klogLevel(l))
}

func (h *klogHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Level = klogLevel(r.Level)
	return h.inner.Handle(ctx, r)
}

func (h *klogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &klogHandler{inner: h.inner.WithAttrs(as)}
}

func (h *klogHandler) WithGroup(name string) slog.Handler {
	return &klogHandler{inner: h.inner.WithGroup(name)}
}

// IsJournalStream reports whether the JOURNAL_STREAM value env ("device:inode",
// set by systemd for a service whose stdout or stderr is the journal) names
// the file with device dev and inode ino, as systemd.exec(5) documents.
func IsJournalStream(env string, dev, ino uint64) bool {
	ds, is, ok := strings.Cut(env, ":")
	if !ok {
		return false
	}
	d, err1 := strconv.ParseUint(ds, 10, 64)
	i, err2 := strconv.ParseUint(is, 10, 64)
	return err1 == nil && err2 == nil && d == dev && i == ino
}

// StderrIsJournal reports whether w is this process's stderr and connected
// to the systemd journal (JOURNAL_STREAM names it). Stderr redirected by a
// wrapper or a shell is not, even under systemd.
func StderrIsJournal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || f != os.Stderr {
		return false
	}
	env := os.Getenv("JOURNAL_STREAM")
	if env == "" {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return IsJournalStream(env, uint64(st.Dev), st.Ino)
}
