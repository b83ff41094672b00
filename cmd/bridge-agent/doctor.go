package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/daemon"
	"github.com/bridge-agent/bridge-agent/internal/doctor"
)

// doctorCmd runs every check of internal/doctor: exit status 0 when none
// fails, 1 otherwise.
func doctorCmd(args []string, stdout, stderr io.Writer) int {
	f := newConfigFlags("doctor", stderr)
	output := f.fs.String("o", "text", "output format: text or json")
	socket := f.fs.String("socket", "", "status socket (default: statusSocket inside hostRoot from the configuration)")
	cfg, err := f.load(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if *output != "text" && *output != "json" {
		fmt.Fprintf(stderr, "bridge-agent: -o: want text or json, got %q\n", *output)
		return 2
	}
	path := f.path
	if path == "" {
		path = config.DefaultPath
	}
	o := doctor.Options{ConfigPath: path, Config: cfg, ConfigErr: err}
	if err == nil {
		o.Status, o.StatusErr = readStatus(cfg, *socket)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep := doctor.Run(ctx, o)
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		rep.WriteText(stdout)
	}
	if !rep.OK() {
		return 1
	}
	return 0
}

// readStatus reads the running agent's status from its socket.
func readStatus(cfg *config.Config, socket string) (*daemon.Status, error) {
	if socket == "" {
		socket = cfg.HostPath(cfg.StatusSocket)
	}
	body, err := fetchStatus(socket)
	if err != nil {
		return nil, err
	}
	var st daemon.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("decode status: %w", err)
	}
	return &st, nil
}

// explainCmd prints the whole path from this host to one destination.
func explainCmd(args []string, stdout, stderr io.Writer) int {
	f := newConfigFlags("explain", stderr)
	f.fs.Usage = func() {
		fmt.Fprint(f.fs.Output(), "usage: bridge-agent explain [flags] NAME|IP[:PORT]\n\nThe whole path from this host to one cluster destination: the DNS answer and\nwho gave it, the Service and port, the rule and its endpoints (which get\ntraffic and why not), the route to each endpoint and a live probe of each.\n\nFlags:\n")
		f.fs.PrintDefaults()
	}
	socket := f.fs.String("socket", "", "status socket (default: statusSocket inside hostRoot from the configuration)")
	// Flags may come before and after the target.
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	rest := f.fs.Args()
	if len(rest) == 0 {
		f.fs.Usage()
		return 2
	}
	target := rest[0]
	flagArgs := append(args[:len(args)-len(rest):len(args)-len(rest)], rest[1:]...)
	cfg, code, ok := f.loadOrReport(flagArgs, stderr, true)
	if !ok {
		return code
	}
	st, err := readStatus(cfg, *socket)
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: explain: %v (is the agent running? explain shows the running agent's view)\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := doctor.ExplainOptions{Config: cfg, Status: st, Target: target, Metrics: fetchMetrics(ctx, cfg.MetricsBindAddress)}
	if err := doctor.Explain(ctx, stdout, o); err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return 1
	}
	return 0
}

// fetchMetrics reads the agent's /metrics text; empty when it cannot.
func fetchMetrics(ctx context.Context, addr string) string {
	if addr == "" {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return ""
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return string(b)
}
