package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/kardianos/service"

	"github.com/bridge-agent/bridge-agent/internal/config"
	"github.com/bridge-agent/bridge-agent/packaging"
	"github.com/bridge-agent/bridge-agent/systemd"
)

// Paths that `bridge-agent install` writes on a systemd host. The packages
// install the unit in /lib/systemd/system (or /usr/lib/systemd/system);
// a bare-binary install goes to /etc, where units of the admin live.
const (
	serviceName      = "bridge-agent"
	packagedUnit     = "/lib/systemd/system/bridge-agent.service"
	packagedUnitRPM  = "/usr/lib/systemd/system/bridge-agent.service"
	installedTmpfile = "/etc/tmpfiles.d/bridge-agent.conf"
)

const serviceUsage = `usage: bridge-agent install [--config FILE]
       bridge-agent uninstall [--config FILE]
       bridge-agent start | stop

For hosts that take the bare binary (a tarball, no package). install
registers this binary as the system service bridge-agent: on systemd the
unit the packages ship, in /etc/systemd/system, enabled but not started; on
other init systems (SysV, OpenRC, upstart) their script. It writes the
default configuration to FILE if there is none. uninstall stops and removes
the service and runs "bridge-agent cleanup". start and stop control it.

Flags:
`

// noopProgram satisfies service.Interface: these commands only control the
// service; "bridge-agent run" is what the service runs.
type noopProgram struct{}

func (noopProgram) Start(service.Service) error { return nil }
func (noopProgram) Stop(service.Service) error  { return nil }

// serviceCmd runs install, uninstall, start or stop.
func serviceCmd(action string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bridge-agent "+action, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), serviceUsage)
		fs.PrintDefaults()
	}
	configPath := fs.String("config", config.DefaultPath, "configuration file the service runs with")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bridge-agent %s: unexpected argument %q\n", action, fs.Arg(0))
		return 2
	}
	cfgPath, err := filepath.Abs(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %v\n", err)
		return 1
	}
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %s: cannot find this binary: %v\n", action, err)
		return 1
	}
	svc, err := service.New(noopProgram{}, serviceConfig(exe, cfgPath))
	if err != nil {
		fmt.Fprintf(stderr, "bridge-agent: %s: %v\n", action, err)
		return 1
	}
	systemdHost := svc.Platform() == "linux-systemd"

	switch action {
	case "install":
		if systemdHost {
			for _, p := range []string{packagedUnit, packagedUnitRPM} {
				if _, err := os.Stat(p); err == nil {
					fmt.Fprintf(stderr, "bridge-agent: install: %s exists: the package manages the service here; use systemctl\n", p)
					return 1
				}
			}
		}
		if err := writeDefaultConfig(cfgPath, stdout); err != nil {
			fmt.Fprintf(stderr, "bridge-agent: install: %v\n", err)
			return 1
		}
		if systemdHost {
			if err := installTmpfiles(); err != nil {
				fmt.Fprintf(stderr, "bridge-agent: install: %v\n", err)
				return 1
			}
		}
		if err := svc.Install(); err != nil {
			fmt.Fprintf(stderr, "bridge-agent: install: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "installed the %s service (%s) running %s run --config %s\n", serviceName, svc.Platform(), exe, cfgPath)
		fmt.Fprintf(stdout, "next: put credentials where %s says (bridge-agent kubeconfig --help), then: bridge-agent start\n", cfgPath)
		return 0
	case "uninstall":
		if err := service.Control(svc, "stop"); err != nil {
			fmt.Fprintf(stderr, "bridge-agent: uninstall: stop: %v (continuing)\n", err)
		}
		if err := svc.Uninstall(); err != nil {
			fmt.Fprintf(stderr, "bridge-agent: uninstall: %v\n", err)
			return 1
		}
		if systemdHost {
			if err := os.Remove(installedTmpfile); err != nil && !errors.Is(err, os.ErrNotExist) {
				fmt.Fprintf(stderr, "bridge-agent: uninstall: %v\n", err)
			}
		}
		fmt.Fprintf(stdout, "removed the %s service\n", serviceName)
		cleanupArgs := []string{}
		if _, err := os.Stat(cfgPath); err == nil {
			cleanupArgs = append(cleanupArgs, "--config", cfgPath)
		}
		if code := cleanupCmd(cleanupArgs, stdout, stderr); code != 0 {
			return code
		}
		fmt.Fprintf(stdout, "kept %s and its directory; remove them by hand if you are done\n", cfgPath)
		return 0
	default: // start, stop
		if err := service.Control(svc, action); err != nil {
			fmt.Fprintf(stderr, "bridge-agent: %s: %v\n", action, err)
			return 1
		}
		return 0
	}
}

// serviceConfig describes the service for kardianos/service. On systemd the
// unit is the packaged one with this binary's path and configuration.
func serviceConfig(exe, configPath string) *service.Config {
	return &service.Config{
		Name:        serviceName,
		DisplayName: serviceName,
		Description: "bridge-agent: cluster Services, DNS and pod routes for this host",
		Executable:  exe,
		Arguments:   []string{"run", "--config", configPath},
		Option: service.KeyValue{
			"SystemdScript": unitFor(exe, configPath),
			"Restart":       "on-failure",
		},
	}
}

// unitFor returns the packaged unit with ExecStart running exe with
// configPath. The result is a kardianos/service template without actions:
// it is written as is.
func unitFor(exe, configPath string) string {
	execStart := "ExecStart=" + systemdQuote(exe) + " run --config " + systemdQuote(configPath)
	return strings.Replace(systemd.Unit, "ExecStart="+systemd.ExecStart, execStart, 1)
}

// systemdQuote quotes one word of a unit's command line: specifiers (%) and
// variables ($) are escaped, and words with spaces, quotes or backslashes
// are double-quoted.
func systemdQuote(s string) string {
	s = strings.NewReplacer("%", "%%", "$", "$$").Replace(s)
	if !strings.ContainsAny(s, " \t\"'\\;") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// writeDefaultConfig writes the packaged default configuration to path
// unless a file is there.
func writeDefaultConfig(path string, stdout io.Writer) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, packaging.Config, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote the default configuration to %s\n", path)
	return nil
}

// installTmpfiles installs the tmpfiles.d entry the unit relies on and
// applies it.
func installTmpfiles() error {
	if err := os.MkdirAll(filepath.Dir(installedTmpfile), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(installedTmpfile, []byte(systemd.Tmpfiles), 0o644); err != nil {
		return err
	}
	if out, err := exec.Command("systemd-tmpfiles", "--create", installedTmpfile).CombinedOutput(); err != nil {
		return fmt.Errorf("systemd-tmpfiles: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
