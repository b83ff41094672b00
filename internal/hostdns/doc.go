// Package hostdns wires the host's resolver to the agent's DNS stub
// (internal/dnsstub), tells the stub which resolvers the host used before,
// and undoes all of it on cleanup.
//
// # Contract
//
// Apply makes the host send the cluster's names to the stub in one of two
// ways, the backends:
//
//   - systemd-resolved: per-link settings over D-Bus
//     (org.freedesktop.resolve1), on a link the agent creates, LinkName
//     (a veth pair, address LinkAddr, where the stub also listens): the
//     stub as the link's DNS server, the cluster's domains (cluster.local,
//     svc, ...) as routing-only domains, never the default route. Only
//     names under those domains reach the stub; the host's links keep
//     their servers for everything else. resolved is never restarted or
//     reloaded for it. See resolvedBackend and link.go for why a link of
//     our own and that address.
//   - resolv.conf: /etc/resolv.conf replaced by a file naming the stub as
//     the only nameserver, keeping the original's search, domain, options
//     and sortlist lines. The stub then sees every name and forwards what is
//     not the cluster's. resolv.conf cannot name a port: the stub must be on
//     port 53 (ErrStubPort otherwise).
//
// Mode auto picks one with Detect, a pure decision over facts read from the
// host's files: systemd-resolved when /etc/resolv.conf points into
// /run/systemd/resolve/ or names only 127.0.0.53, and resolved is running
// (/run/systemd/resolve exists); resolv.conf otherwise, with a note when
// another program (NetworkManager, resolvconf, ...) owns the file and may
// overwrite it. Mode none wires nothing. Whatever the mode, Apply first
// undoes what an earlier run did in another mode, so changing the mode in
// the configuration leaves no trace of the old one.
//
// Apply is level-triggered and idempotent: it compares the host with what it
// wants and writes only the difference; an Apply with nothing to repair
// makes no change and no D-Bus set call. Calling it on every sync period
// is how a replaced /etc/resolv.conf gets noticed (when our file is gone,
// the new one becomes the original and ours is written again), and how
// resolved's link settings come back after resolved restarted or someone
// deleted the link.
//
// Verify checks the wiring end to end: a cluster name resolved through the
// host's own path (getent ahosts: nsswitch.conf and the C library) must
// give what the stub answers.
//
// Upstreams returns the host's original resolvers for the stub to forward
// to: resolved's uplink servers, or the original resolv.conf's nameservers.
// Never the stub and never 127.0.0.53/54, which would loop back to the stub.
//
// # Ownership
//
// Every file written on the host starts with the Marker line and is written
// atomically (a temporary file renamed over the target), with explicit
// modes whatever the process's umask (the unit runs with UMask=0077). The
// link carries our alias (IFLA_IFALIAS); a link of its name without it is
// never changed or deleted. Before changing the
// host, Apply records what it is about to change in a small JSON file in the
// state directory (hostdns.json), with the original /etc/resolv.conf backed
// up beside it (resolv.conf.orig): its content and mode, or the fact that
// it was a symlink and to where, or that there was none. Cleanup reads that
// record and undoes exactly it: it reverts and deletes the link, removes
// the global drop-in older versions wrote only when it carries the marker
// (reloading resolved only where it can reload without a restart),
// restores /etc/resolv.conf only while the file there is still
// ours (a file someone wrote over ours is theirs), removes directories it
// created only when empty, and deletes the record last. Cleanup is safe to
// run twice, and when nothing was done. Apply followed by Cleanup leaves the
// host's files as they were.
//
// Every path is taken under Options.HostRoot ("/" in production), the
// system bus's socket included; symlinks in /etc/resolv.conf are followed
// inside that root. The link lives in the calling process's network
// namespace. systemd-resolved is reloaded (for a legacy drop-in only)
// through the Reloader interface; the real one runs systemctl only when the
// root is "/".
package hostdns
