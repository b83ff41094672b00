package routes

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/bridge-agent/bridge-agent/internal/config"
)

// Cleanup removes every route with the given protocol from every table of
// both families in this network namespace, and nothing else. It returns
// the routes removed, described.
func Cleanup(protocol int) ([]string, error) {
	if err := config.CheckRouteProtocol(protocol); err != nil {
		return nil, fmt.Errorf("clean up routes: protocol %d: %w", protocol, err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("clean up routes: open netlink: %w", err)
	}
	defer h.Close()
	return cleanup(h, protocol)
}

func cleanup(h netlinkHandle, protocol int) ([]string, error) {
	all, err := listRoutes(h)
	if err != nil {
		return nil, fmt.Errorf("clean up routes: %w", err)
	}
	names := listLinkNames(h)
	var removed []string
	var errs []error
	for i := range all {
		r := &all[i]
		if int(r.Protocol) != protocol {
			continue
		}
		if err := h.RouteDel(deletion(r)); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", describe(r, names), err))
			continue
		}
		removed = append(removed, describe(r, names)+" table "+tableName(tableOf(r)))
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("clean up routes: %w", err)
	}
	return removed, nil
}
