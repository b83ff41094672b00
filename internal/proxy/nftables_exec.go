package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// nftRunner runs nft scripts. Only this is used by the nftables backend; unit
// tests replace it with a stateful fake.
type nftRunner interface {
	// Run feeds script to "nft -f" on stdin: one atomic transaction, all
	// or nothing.
	Run(ctx context.Context, script []byte) error
}

// execNFT is the real nftRunner: it runs the nft command. argv is the command
// line up to, not including, "-f FILE" (normally just the path of nft).
type execNFT struct {
	argv []string
	// peakRSS is the peak resident memory, in bytes, of the last nft run.
	peakRSS atomic.Int64
	// lastTimes are the times of the last nft run.
	lastTimes atomic.Pointer[nftTimes]
}

// nftTimes are how long starting one nft run took, its wall time, and the
// CPU time the process used in user space and in the kernel.
type nftTimes struct{ start, wall, user, sys time.Duration }

func (x *execNFT) lastPeakRSS() int64 { return x.peakRSS.Load() }

var _ nftRunner = (*execNFT)(nil)

// newExecNFT finds the nft command.
func newExecNFT() (*execNFT, error) {
	path, err := exec.LookPath("nft")
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return &execNFT{argv: []string{path}}, nil
}

// nftStdin is the file name under which nft reads its script from stdin.
// nft 0.9.8 opens "-" as /dev/stdin, a symlink that a minimal /dev (an
// initramfs, some containers) lacks; /proc/self/fd/0 is what it points to.
const nftStdin = "/proc/self/fd/0"

func (x *execNFT) Run(ctx context.Context, script []byte) error {
	_, err := x.run(ctx, script, "-f", nftStdin)
	return err
}

// check validates script without committing it (nft --check): the kernel
// evaluates the whole transaction, then it is aborted.
func (x *execNFT) check(ctx context.Context, script []byte) error {
	_, err := x.run(ctx, script, "--check", "-f", nftStdin)
	return err
}

func (x *execNFT) run(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	argv := append(append([]string{}, x.argv...), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Start()
	started := time.Since(start)
	if err == nil {
		peak := watchPeakRSS(cmd.Process.Pid)
		err = cmd.Wait()
		x.peakRSS.Store(peak())
		if ps := cmd.ProcessState; ps != nil {
			x.lastTimes.Store(&nftTimes{start: started, wall: time.Since(start), user: ps.UserTime(), sys: ps.SystemTime()})
		}
	}
	out := stdout.Bytes()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		// nft repeats the whole offending line; the first lines are enough.
		if lines := strings.SplitN(msg, "\n", 7); len(lines) > 6 {
			msg = strings.Join(lines[:6], "\n") + "\n..."
		}
		return out, &NFTError{Err: err, Stderr: msg}
	}
	return out, nil
}

// watchPeakRSS samples the peak resident memory (VmHWM) of process pid
// until the returned function is called, which returns the largest value
// seen, in bytes. The rusage of wait4 cannot be used: its peak includes the
// memory of this process, which the child shares until it executes nft. The
// sample is taken every few milliseconds, so the last moments of a run may be
// missed; nft reaches its peak while it holds the parsed script and cache,
// well before it exits.
func watchPeakRSS(pid int) func() int64 {
	path := "/proc/" + strconv.Itoa(pid) + "/status"
	stop := make(chan struct{})
	result := make(chan int64, 1)
	go func() {
		var peak int64
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			if v := readVmHWM(path); v > peak {
				peak = v
			}
			select {
			case <-stop:
				result <- peak
				return
			case <-t.C:
			}
		}
	}()
	return func() int64 {
		close(stop)
		return <-result
	}
}

// readVmHWM returns the VmHWM line of a /proc status file in bytes, or 0.
func readVmHWM(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	_, rest, ok := bytes.Cut(b, []byte("VmHWM:"))
	if !ok {
		return 0
	}
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(string(line)), "kB")), 10, 64)
	if err != nil {
		return 0
	}
	return kb * 1024
}

// NFTError is a failed nft run.
type NFTError struct {
	Err    error
	Stderr string
}

func (e *NFTError) Error() string { return "nft: " + e.Err.Error() + ": " + e.Stderr }
func (e *NFTError) Unwrap() error { return e.Err }

// isNFTNotFound reports whether err says that an object does not exist.
func isNFTNotFound(err error) bool {
	var ne *NFTError
	return errors.As(err, &ne) && strings.Contains(ne.Stderr, "No such file or directory")
}

// NFTablesSupported reports whether this host can run the nftables backend:
// the nft command is installed and it and the kernel accept the agent's
// layout and its incremental changes (nftProbeScript, checked with nft
// --check, which changes nothing). The reason says why not, with nft's
// error, or what was found.
func NFTablesSupported(ctx context.Context) (bool, string) {
	x, err := newExecNFT()
	if err != nil {
		return false, "nft is not installed"
	}
	return nftSupported(ctx, x)
}

func nftSupported(ctx context.Context, x *execNFT) (bool, string) {
	out, err := x.run(ctx, nil, "--version")
	if err != nil {
		return false, fmt.Sprintf("nft does not run: %v", err)
	}
	version := strings.TrimSpace(string(out))
	if err := x.check(ctx, nftProbeScript()); err != nil {
		return false, fmt.Sprintf("%s or the kernel rejects the nftables backend's rules: %v", version, err)
	}
	return true, version
}
