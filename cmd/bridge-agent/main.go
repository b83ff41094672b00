// Command bridge-agent joins a host that is not a Kubernetes node to a
// cluster's service discovery.
//
//	bridge-agent run     [--config FILE] [flags]   run the agent
//	bridge-agent status  [--config FILE] [-o json] what the running agent sees
//	bridge-agent doctor  [--config FILE] [-o json] check this host's setup, each problem with its fix
//	bridge-agent explain [--config FILE] NAME|IP[:PORT] the whole path to one destination
//	bridge-agent cleanup [--config FILE]           remove everything the agent made
//	bridge-agent kubeconfig --server URL --token-file F --ca-file F
//	bridge-agent install | uninstall | start | stop  the service, for bare-binary installs
//	bridge-agent join BUNDLE                       join this host with its own identity
//	bridge-agent host add|remove NAME              (admin) a host's identity and join bundle
//	bridge-agent hosts                             (admin) every host: heartbeat, version, token
//	bridge-agent version
package main

import (
	"fmt"
	"io"
	"os"
)

const usage = `usage: bridge-agent <command> [flags]

Commands:
  run         run the agent (watch the cluster, program this host)
  status      show what the running agent sees (-o json for machines)
  doctor      check this host's setup (config, credentials against the API
              server, clock, kernel, routes, resolver): each problem with its
              fix in one line; exit status 0 when no check fails
  explain     the whole path from this host to NAME|IP[:PORT]: DNS, Service,
              rule, endpoints, routes, a live probe of each endpoint
  cleanup     remove every rule, route, file and socket the agent made
  kubeconfig  write this host's kubeconfig from a token and the cluster CA
              (--check: do the credentials work against the API server?)
  join        join this host with the bundle of ` + "`bridge-agent host add`" + `
  host        (cluster admin) add NAME: a host's identity and join bundle;
              remove NAME: revoke it
  hosts       (cluster admin) every host: state, version, heartbeat, token expiry
  install     register this binary as the bridge-agent service (no package)
  uninstall   stop and remove that service, then clean up
  start, stop control the installed service
  version     print the version

Run "bridge-agent <command> --help" for a command's flags.
`

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runCmd(rest, stderr)
	case "status":
		return statusCmd(rest, stdout, stderr)
	case "doctor":
		return doctorCmd(rest, stdout, stderr)
	case "explain":
		return explainCmd(rest, stdout, stderr)
	case "cleanup":
		return cleanupCmd(rest, stdout, stderr)
	case "kubeconfig":
		return kubeconfigCmd(rest, stdout, stderr)
	case "join":
		return joinCmd(rest, stdout, stderr)
	case "host":
		return hostCmd(rest, stdout, stderr)
	case "hosts":
		return hostsCmd(rest, stdout, stderr)
	case "install", "uninstall", "start", "stop":
		return serviceCmd(cmd, rest, stdout, stderr)
	case "version", "--version":
		return versionCmd(stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "bridge-agent: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}
