package doctor

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestProbe probes real sockets on the loopback address: a TCP server
// that speaks first, a UDP echo, and ports where nothing listens.
func TestProbe(t *testing.T) {
	ctx := context.Background()
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("web-1\n"))
			c.Close()
		}
	}()
	ul, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = ul.WriteTo(append([]byte("echo: "), buf[:n]...), from)
		}
	}()
	// Ports that were just free: nothing listens there.
	closedTCP, closedUDP := freePort(t, "tcp"), freePort(t, "udp")

	for _, tc := range []struct {
		proto string
		addr  string
		want  string
	}{
		{"TCP", tl.Addr().String(), `said "web-1"`},
		{"TCP", closedTCP, "TCP connect failed: refused"},
		{"UDP", ul.LocalAddr().String(), `UDP answered in`},
		{"UDP", closedUDP, "UDP port closed (ICMP port unreachable)"},
		{"SCTP", tl.Addr().String(), "no probe for protocol SCTP"},
	} {
		got := probe(ctx, tc.proto, netip.MustParseAddrPort(tc.addr), time.Second)
		if !strings.Contains(got, tc.want) {
			t.Errorf("probe %s %s = %q, want %q", tc.proto, tc.addr, got, tc.want)
		}
	}
}

func freePort(t *testing.T, network string) string {
	t.Helper()
	if network == "tcp" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.LocalAddr().String()
}
