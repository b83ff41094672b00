package daemon

import (
	"io"
	"log/slog"

	"k8s.io/klog/v2"
)

// NewLogger returns the agent's one structured logger and routes client-go's
// klog output into it, so every line lands in one stream and format.
// Verbosity v shows klog V(n) messages for n <= v and our own Debug lines
// (per-object detail) from v >= 2.
func NewLogger(w io.Writer, format string, verbosity int) *slog.Logger {
	level := slog.Level(-verbosity)
	if verbosity >= 2 {
		level = min(level, slog.LevelDebug)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	if format == "json" {
		h = slog.NewJSONHandler(w, opts)
	} else {
		h = slog.NewTextHandler(w, opts)
	}
	logger := slog.New(h)
	klog.SetSlogLogger(logger)
	return logger
}
