package dnsstub

import (
	"net"
	"syscall"
)

// udpReadBuffer is the receive buffer the stub asks for on its UDP socket.
// The default (net.core.rmem_default, 208 KiB) holds some 200 small
// queries: a process firing a few hundred lookups at once would see the
// rest dropped by the kernel before the reader gets to them, cluster names
// among them. The kernel doubles the value for its bookkeeping.
const udpReadBuffer = 2 << 20

// growReadBuffer raises c's receive buffer to udpReadBuffer: past
// net.core.rmem_max with SO_RCVBUFFORCE when the agent has CAP_NET_ADMIN
// (it does to program the proxy), else up to rmem_max. This sets the one
// socket's option, no host-wide sysctl. It reports whether the full size
// was granted.
func growReadBuffer(c *net.UDPConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	forced := false
	_ = raw.Control(func(fd uintptr) {
		forced = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, udpReadBuffer) == nil
	})
	if !forced {
		_ = c.SetReadBuffer(udpReadBuffer) // capped by rmem_max
	}
	return forced
}
