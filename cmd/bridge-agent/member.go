package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bridge-agent/bridge-agent/internal/atomicfile"
	"github.com/bridge-agent/bridge-agent/internal/cluster"
	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/internal/member"
	"github.com/bridge-agent/bridge-agent/internal/version"
)

// hostIdentity returns the host name of the credentials rc names, "" when
// they are not a host's own (the shared ServiceAccount, a static token, a
// client certificate). A host token that expired is an *member.ExpiredError.
func hostIdentity(rc *rest.Config) (string, error) {
	if rc.BearerTokenFile == "" {
		return "", nil
	}
	c, err := member.ReadToken(rc.BearerTokenFile)
	if errors.Is(err, member.ErrNotServiceAccountToken) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	host := c.Host()
	if host == "" {
		return "", nil
	}
	return host, member.CheckNotExpired(c, time.Now())
}

// newMember returns the agent that renews host's token and Lease, on a
// clientset of its own.
func newMember(cfg *config.Config, rc *rest.Config, host string, log *slog.Logger, facts func() member.Facts) (*member.Agent, error) {
	mc := rest.CopyConfig(rc)
	mc.QPS, mc.Burst = 5, 10
	client, err := cluster.NewClient(mc)
	if err != nil {
		return nil, err
	}
	return member.NewAgent(member.Options{
		Client:        client,
		Host:          host,
		TokenFile:     rc.BearerTokenFile,
		TokenLifetime: cfg.Member.TokenLifetime.Duration,
		RenewPercent:  cfg.Member.TokenRenewPercent,
		RenewInterval: cfg.Member.RenewInterval.Duration,
		LeaseDuration: cfg.Member.LeaseDuration.Duration,
		Facts:         facts,
		Logger:        log,
	}), nil
}

const hostUsage = `usage: bridge-agent host add NAME [--kubeconfig F] [--server URL] [--ca-file F] [--token-ttl 1h] [-o FILE]
       bridge-agent host remove NAME [--kubeconfig F]

Run on the cluster side with the admin's kubeconfig (default $KUBECONFIG,
then ~/.kube/config). add creates ServiceAccount bridge-agent-NAME in
namespace bridge-agent, its Role (its own tokens and Lease) and bindings
(the read-only ClusterRole of deploy/rbac.yaml), and writes a join bundle
(default NAME.join.yaml, mode 0600): the API server's URL and CA and a
token valid for --token-ttl. Copy it to the host and run
` + "`bridge-agent join FILE`" + ` there. Adding a host that exists issues a new
bundle (for a host whose token expired while it was off). It needs
deploy/rbac.yaml and deploy/member-policy.yaml applied.

remove deletes the host's ServiceAccount (its tokens stop working at
once), Role, bindings and Lease. The host's agent then reports that it is
unauthorized and keeps its rules, routes and DNS as they were.

Flags:
`

// adminClient loads the admin's kubeconfig (path, else the default rules).
func adminClient(path string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("admin kubeconfig: %w", err)
	}
	rc.UserAgent = "bridge-agent/" + version.Version
	return rc, nil
}

func hostCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) < 1 || (args[0] != "add" && args[0] != "remove") {
		fmt.Fprint(stderr, hostUsage)
		return 2
	}
	op := args[0]
	fs := flag.NewFlagSet("bridge-agent host "+op, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), hostUsage); fs.PrintDefaults() }
	kubeconfig := fs.String("kubeconfig", "", "the admin's kubeconfig (default $KUBECONFIG, then ~/.kube/config)")
	server := fs.String("server", "", "add: the API server's URL as the host reaches it (default: the kubeconfig's)")
	caFile := fs.String("ca-file", "", "add: PEM file of the API server's CA (default: the kubeconfig's)")
	ttl := fs.Duration("token-ttl", member.DefaultBootstrapTTL, "add: lifetime of the bundle's token (at least 10m)")
	out := fs.String("o", "", "add: the bundle file to write (default NAME.join.yaml)")
	// The name comes first (host add NAME --flags) or last.
	rest := args[1:]
	var name string
	if len(rest) > 0 && len(rest[0]) > 0 && rest[0][0] != '-' {
		name, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if name == "" && fs.NArg() == 1 {
		name = fs.Arg(0)
	} else if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bridge-agent host %s: unexpected argument %q\n", op, fs.Arg(0))
		return 2
	}
	if name == "" {
		fmt.Fprintf(stderr, "bridge-agent host %s: the host's NAME is required\n\n", op)
		fs.Usage()
		return 2
	}
	rc, err := adminClient(*kubeconfig)
	if err == nil && op == "add" {
		err = hostAdd(rc, name, *server, *caFile, *ttl, *out, stderr)
	} else if err == nil {
		err = hostRemove(rc, name, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return 1
	}
	return 0
}

func hostAdd(rc *rest.Config, name, server, caFile string, ttl time.Duration, out string, stderr io.Writer) error {
	cs, err := cluster.NewClient(rc)
	if err != nil {
		return err
	}
	if server == "" {
		server = rc.Host
	}
	ca := rc.CAData
	if caFile == "" {
		caFile = rc.CAFile
	}
	if caFile != "" {
		if ca, err = os.ReadFile(caFile); err != nil {
			return fmt.Errorf("add host: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := member.AddHost(ctx, cs, member.AddOptions{Host: name, Server: server, CA: ca, TokenTTL: ttl})
	if err != nil {
		return err
	}
	data, err := b.Marshal()
	if err != nil {
		return err
	}
	if out == "" {
		out = name + ".join.yaml"
	}
	if err := atomicfile.WriteFile(out, data, 0o600); err != nil {
		return fmt.Errorf("add host: %w", err)
	}
	fmt.Fprintf(stderr, "host %s: ServiceAccount %s/%s; wrote %s, a secret valid until %s.\nCopy it to the host, then there: apt-get install ./bridge-agent_*.deb; bridge-agent join %s\n",
		name, member.Namespace, member.ObjectName(name), out, b.Expires.Format(time.RFC3339), out)
	return nil
}

func hostRemove(rc *rest.Config, name string, stdout io.Writer) error {
	cs, err := cluster.NewClient(rc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	deleted, err := member.RemoveHost(ctx, cs, name)
	for _, d := range deleted {
		fmt.Fprintf(stdout, "deleted %s\n", d)
	}
	return err
}

const hostsUsage = `usage: bridge-agent hosts [--kubeconfig F] [-o json]

Lists every host of the cluster (run with the admin's kubeconfig): its
state (alive, EXPIRED when its Lease was not renewed within its duration,
not joined, removed), version, last heartbeat, readiness, proxy backend,
counts of Services, rules and routes, when its token expires and its last
error, from its ServiceAccount and its Lease in namespace bridge-agent.

Flags:
`

func hostsCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bridge-agent hosts", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), hostsUsage); fs.PrintDefaults() }
	kubeconfig := fs.String("kubeconfig", "", "the admin's kubeconfig (default $KUBECONFIG, then ~/.kube/config)")
	output := fs.String("o", "", "json for machines")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 || (*output != "" && *output != "json") {
		fs.Usage()
		return 2
	}
	err := func() error {
		rc, err := adminClient(*kubeconfig)
		if err != nil {
			return err
		}
		cs, err := cluster.NewClient(rc)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		now := time.Now()
		hosts, err := member.ListHosts(ctx, cs, now)
		if err != nil {
			return err
		}
		if *output == "json" {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(hosts)
		}
		return member.WriteHosts(stdout, hosts, now)
	}()
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return 1
	}
	return 0
}

const joinUsage = `usage: bridge-agent join [--config F] BUNDLE

Joins this host with the bundle ` + "`bridge-agent host add`" + ` wrote on the
cluster: it checks the bundle against the API server (who the token is,
and that it may read Services and renew its own token and Lease),
exchanges its token for one of member.tokenLifetime, and writes the
configuration's kubeconfig (default /etc/bridge-agent/kubeconfig) and the
token beside it (token), both mode 0600. Nothing is written unless every
check passes. The running agent then renews the token itself. Start the
agent afterwards: systemctl start bridge-agent (or restart it).

Flags:
`

func joinCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bridge-agent join", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), joinUsage); fs.PrintDefaults() }
	configPath := fs.String("config", "", "configuration file (default "+config.DefaultPath+" when it exists)")
	var bundlePath string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		bundlePath, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if bundlePath == "" && fs.NArg() == 1 {
		bundlePath = fs.Arg(0)
	} else if fs.NArg() > 0 || bundlePath == "" {
		fs.Usage()
		return 2
	}
	err := func() error {
		var cargs []string
		if *configPath != "" {
			cargs = []string{"--config", *configPath}
		}
		cfg, err := newConfigFlags("join", stderr).load(cargs)
		if err != nil {
			return err
		}
		if cfg.Kubeconfig == "" {
			if cfg.APIServer.URL != "" {
				return errors.New("join: the configuration names apiServer.url; join writes a kubeconfig: replace apiServer with kubeconfig: /etc/bridge-agent/kubeconfig")
			}
			cfg.Kubeconfig = "/etc/bridge-agent/kubeconfig"
		}
		if err := cfg.Validate(); err != nil {
			return err
		}
		b, err := member.ReadBundle(bundlePath)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		j, err := member.Join(ctx, member.JoinOptions{
			Bundle:        b,
			Kubeconfig:    cfg.Kubeconfig,
			TokenLifetime: cfg.Member.TokenLifetime.Duration,
			UserAgent:     "bridge-agent/" + version.Version,
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "joined as host %s (%s); token valid until %s, renewed by the agent\nwrote %s and %s (mode 0600)\n",
			j.Host, j.Username, j.TokenExpiry.UTC().Format(time.RFC3339), j.Kubeconfig, j.TokenFile)
		fmt.Fprintf(stdout, "next: systemctl restart bridge-agent; delete %s (its token is valid until %s)\n", bundlePath, b.Expires.UTC().Format(time.RFC3339))
		return nil
	}()
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return 1
	}
	return 0
}
