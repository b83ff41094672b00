package daemon

import (
	"net"
	"os"
	"strconv"
	"time"
)

// notifier speaks the sd_notify protocol to systemd when NOTIFY_SOCKET is
// set; otherwise every call is a no-op.
type notifier struct {
	socket string
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
