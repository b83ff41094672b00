package hostguard

import (
	"errors"
	"net"
	"testing"

	"github.com/vishvananda/netlink"
)

// flakyReader answers AddrList and RouteListFiltered with
// netlink.ErrDumpInterrupted for its first fails calls each, then with one
// address and one route.
type flakyReader struct{ addrFails, routeFails int }

func (f *flakyReader) AddrList(netlink.Link, int) ([]netlink.Addr, error) {
	if f.addrFails > 0 {
		f.addrFails--
		return nil, netlink.ErrDumpInterrupted
	}
	return []netlink.Addr{{IPNet: &net.IPNet{IP: net.IPv4(192, 0, 2, 10), Mask: net.CIDRMask(24, 32)}}}, nil
}

func (f *flakyReader) RouteListFiltered(int, *netlink.Route, uint64) ([]netlink.Route, error) {
	if f.routeFails > 0 {
		f.routeFails--
		return nil, netlink.ErrDumpInterrupted
	}
	return []netlink.Route{{Gw: net.IPv4(192, 0, 2, 1)}}, nil
}

func TestReadRetriesInterruptedDumps(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		addrFails, routeFails int
		wantErr               bool
	}{
		{name: "no interruption"},
		{name: "addresses interrupted twice", addrFails: 2},
		{name: "routes interrupted four times", routeFails: dumpAttempts - 1},
		{name: "addresses always interrupted", addrFails: dumpAttempts, wantErr: true},
		{name: "routes always interrupted", routeFails: dumpAttempts, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Read(&flakyReader{addrFails: tc.addrFails, routeFails: tc.routeFails}, nil)
			if tc.wantErr {
				if !errors.Is(err, netlink.ErrDumpInterrupted) {
					t.Fatalf("Read: got %v, want an error wrapping ErrDumpInterrupted", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if len(f.Local) != 1 || f.Local[0].String() != "192.0.2.10" {
				t.Errorf("Local = %v, want [192.0.2.10]", f.Local)
			}
		})
	}
}
