package daemon

import (
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// notifier speaks the sd_notify protocol to systemd when NOTIFY_SOCKET is
// set; otherwise every call is a no-op.
type notifier struct {
	socket string

	mu     sync.Mutex
	status string // the last STATUS= sent
	ready  bool   // READY=1 sent
}

func newNotifier() *notifier {
	return &notifier{socket: os.Getenv("NOTIFY_SOCKET")}
}

// send sends one state string such as "READY=1".
func (n *notifier) send(state string) error {
	if n.socket == "" {
		return nil
	}
	addr := &net.UnixAddr{Name: n.socket, Net: "unixgram"}
	if addr.Name[0] == '@' {
		addr.Name = "\x00" + addr.Name[1:] // abstract socket
	}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

// setStatus sends STATUS=text (one line, shown by `systemctl status`) when
// it differs from the last one sent. With ready it sends READY=1 in the same
// datagram, once.
func (n *notifier) setStatus(text string, ready bool) error {
	text = oneLine(text)
	n.mu.Lock()
	defer n.mu.Unlock()
	var msg []string
	if text != n.status {
		msg = append(msg, "STATUS="+text)
	}
	if ready && !n.ready {
		msg = append(msg, "READY=1")
	}
	if len(msg) == 0 {
		return nil
	}
	if err := n.send(strings.Join(msg, "\n")); err != nil {
		return err
	}
	n.status = text
	n.ready = n.ready || ready
	return nil
}

// isReady reports whether READY=1 was sent.
func (n *notifier) isReady() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ready
}

// oneLine joins a multi-line text (an errors.Join) with "; " and bounds its
// length: systemctl status shows one line.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
	if len(s) > 400 {
		s = s[:400] + "..."
	}
	return s
}

// watchdogInterval returns how often to ping systemd's watchdog (half its
// timeout), or 0 when the watchdog is off or meant for another process.
func watchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}
