package hostdns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"
)

// systemBusPath is the system bus's socket, under the host root.
const systemBusPath = "/run/dbus/system_bus_socket"

const (
	resolve1Name    = "org.freedesktop.resolve1"
	resolve1Path    = "/org/freedesktop/resolve1"
	resolve1Manager = "org.freedesktop.resolve1.Manager"
	resolve1Link    = "org.freedesktop.resolve1.Link"
)

// resolvedAPI is what the resolved backend asks of systemd-resolved: the
// per-link settings it owns, read and written over D-Bus.
type resolvedAPI interface {
	// settings returns the link's settings; an error wrapping errNoLink
	// while resolved does not know the link (yet).
	settings(ctx context.Context, ifindex int) (linkSettings, error)
	// set makes one change (see planSettings).
	set(ctx context.Context, ifindex int, s step) error
	// revert drops every setting of the link (RevertLink); a link resolved
	// does not know is not an error.
	revert(ctx context.Context, ifindex int) error
	close()
}

var errNoLink = errors.New("systemd-resolved does not know the link")

// busResolved is resolvedAPI over the system bus.
type busResolved struct {
	conn *dbus.Conn
}

// connectResolved connects to the system bus under root. The socket is
// reached as a path, so it works under the unit's ProtectSystem=strict (a
// read-only /run still lets a client connect to a socket there) and
// RestrictAddressFamilies (AF_UNIX is allowed).
func connectResolved(ctx context.Context, root string) (resolvedAPI, error) {
	conn, err := dbus.Connect("unix:path="+hostPath(root, systemBusPath), dbus.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("connect to the system bus (%s): %w", systemBusPath, err)
	}
	return &busResolved{conn: conn}, nil
}

func (b *busResolved) close() { b.conn.Close() }

func (b *busResolved) manager() dbus.BusObject { return b.conn.Object(resolve1Name, resolve1Path) }

func (b *busResolved) settings(ctx context.Context, ifindex int) (linkSettings, error) {
	var path dbus.ObjectPath
	if err := b.manager().CallWithContext(ctx, resolve1Manager+".GetLink", 0, int32(ifindex)).Store(&path); err != nil {
		if isDBusError(err, "org.freedesktop.resolve1.NoSuchLink") {
			return linkSettings{}, fmt.Errorf("link %d: %w", ifindex, errNoLink)
		}
		return linkSettings{}, fmt.Errorf("resolve1 GetLink %d: %w", ifindex, err)
	}
	var props map[string]dbus.Variant
	err := b.conn.Object(resolve1Name, path).CallWithContext(ctx, "org.freedesktop.DBus.Properties.GetAll", 0, resolve1Link).Store(&props)
	if err != nil {
		return linkSettings{}, fmt.Errorf("resolve1 link %d properties: %w", ifindex, err)
	}
	return parseLinkProps(props), nil
}

// parseLinkProps reads the org.freedesktop.resolve1.Link properties the
// backend sets. DNSEx (v246) carries ports; DNS, on older versions, does
// not (port 53). Missing properties read as unset.
func parseLinkProps(props map[string]dbus.Variant) linkSettings {
	var s linkSettings
	addr := func(b []byte) (netip.Addr, bool) {
		a, ok := netip.AddrFromSlice(b)
		return a.Unmap(), ok
	}
	if v, ok := props["DNSEx"]; ok {
		var servers []struct {
			Family int32
			Addr   []byte
			Port   uint16
			Name   string
		}
		if dbus.Store([]any{v.Value()}, &servers) == nil {
			for _, x := range servers {
				if a, ok := addr(x.Addr); ok {
					port := x.Port
					if port == 0 {
						port = 53
					}
					s.Servers = append(s.Servers, netip.AddrPortFrom(a, port))
				}
			}
		}
	} else if v, ok := props["DNS"]; ok {
		var servers []struct {
			Family int32
			Addr   []byte
		}
		if dbus.Store([]any{v.Value()}, &servers) == nil {
			for _, x := range servers {
				if a, ok := addr(x.Addr); ok {
					s.Servers = append(s.Servers, netip.AddrPortFrom(a, 53))
				}
			}
		}
	}
	if v, ok := props["Domains"]; ok {
		var domains []struct {
			Name      string
			RouteOnly bool
		}
		if dbus.Store([]any{v.Value()}, &domains) == nil {
			for _, d := range domains {
				name := strings.TrimSuffix(d.Name, ".")
				if !d.RouteOnly {
					// A search domain: not what we set; it forces a rewrite.
					name = "+" + name
				}
				s.Domains = append(s.Domains, name)
			}
		}
	}
	if v, ok := props["DefaultRoute"]; ok {
		b, _ := v.Value().(bool)
		s.DefaultRoute = &b
	}
	for key, dst := range map[string]*string{"LLMNR": &s.LLMNR, "MulticastDNS": &s.MulticastDNS, "DNSSEC": &s.DNSSEC, "DNSOverTLS": &s.DNSOverTLS} {
		if v, ok := props[key]; ok {
			*dst, _ = v.Value().(string)
		}
	}
	return s
}

func (b *busResolved) set(ctx context.Context, ifindex int, s step) error {
	idx := int32(ifindex)
	var call *dbus.Call
	m := b.manager()
	switch s.Kind {
	case stepDNS:
		if allPort53(s.Servers) {
			type server struct {
				Family int32
				Addr   []byte
			}
			var arg []server
			for _, a := range s.Servers {
				arg = append(arg, server{family(a.Addr()), a.Addr().AsSlice()})
			}
			call = m.CallWithContext(ctx, resolve1Manager+".SetLinkDNS", 0, idx, arg)
		} else {
			type server struct {
				Family int32
				Addr   []byte
				Port   uint16
				Name   string
			}
			var arg []server
			for _, a := range s.Servers {
				arg = append(arg, server{family(a.Addr()), a.Addr().AsSlice(), a.Port(), ""})
			}
			call = m.CallWithContext(ctx, resolve1Manager+".SetLinkDNSEx", 0, idx, arg)
		}
	case stepDomains:
		type domain struct {
			Name      string
			RouteOnly bool
		}
		arg := []domain{}
		for _, d := range s.Domains {
			arg = append(arg, domain{d, true})
		}
		call = m.CallWithContext(ctx, resolve1Manager+".SetLinkDomains", 0, idx, arg)
	case stepDefaultRoute:
		call = m.CallWithContext(ctx, resolve1Manager+".SetLinkDefaultRoute", 0, idx, false)
	case stepLLMNR, stepMulticastDNS, stepDNSSEC, stepDNSOverTLS:
		call = m.CallWithContext(ctx, resolve1Manager+".SetLink"+string(s.Kind), 0, idx, s.Value)
	default:
		return fmt.Errorf("unknown step %q", s.Kind)
	}
	if call.Err != nil {
		if isDBusError(call.Err, "org.freedesktop.resolve1.LinkBusy") {
			return fmt.Errorf("resolve1 SetLink%s on %d: the link is managed by systemd-networkd (a .network file matches %s); exclude it there: %w", s.Kind, ifindex, LinkName, call.Err)
		}
		if isDBusError(call.Err, "org.freedesktop.DBus.Error.UnknownMethod") {
			return fmt.Errorf("resolve1 SetLink%s: this systemd-resolved is too old for it: %w", s.Kind, errUnsupported)
		}
		return fmt.Errorf("resolve1 SetLink%s on %d: %w", s.Kind, ifindex, call.Err)
	}
	return nil
}

// errUnsupported is a setting this systemd-resolved has no method for.
var errUnsupported = errors.New("unsupported")

func (b *busResolved) revert(ctx context.Context, ifindex int) error {
	err := b.manager().CallWithContext(ctx, resolve1Manager+".RevertLink", 0, int32(ifindex)).Err
	if err != nil && !isDBusError(err, "org.freedesktop.resolve1.NoSuchLink") {
		return fmt.Errorf("resolve1 RevertLink %d: %w", ifindex, err)
	}
	return nil
}

func isDBusError(err error, name string) bool {
	var e dbus.Error
	if errors.As(err, &e) {
		return e.Name == name
	}
	var pe *dbus.Error
	return errors.As(err, &pe) && pe.Name == name
}

func family(a netip.Addr) int32 {
	if a.Is4() {
		return 2 // AF_INET
	}
	return 10 // AF_INET6
}

func allPort53(as []netip.AddrPort) bool {
	for _, a := range as {
		if a.Port() != 53 {
			return false
		}
	}
	return true
}

// waitSettings reads the link's settings, waiting up to a few seconds for
// resolved to learn of a link just created (it hears of links over
// rtnetlink, asynchronously).
func waitSettings(ctx context.Context, api resolvedAPI, ifindex int) (linkSettings, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := api.settings(ctx, ifindex)
		if !errors.Is(err, errNoLink) || time.Now().After(deadline) {
			return s, err
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
