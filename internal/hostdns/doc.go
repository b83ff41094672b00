// Package hostdns wires the host's resolver to the agent's DNS stub
// (internal/dnsstub), tells the stub which resolvers the host used before,
// and undoes all of it on cleanup.
//
// # Contract
//
// Apply makes the host send the cluster's names to the stub in one of two
// ways, the backends:
//
//   - systemd-resolved: a drop-in, /etc/systemd/resolved.conf.d/bridge-agent.conf,
//     with the stub as a global DNS server and the cluster's domains
//     (cluster.local, svc, ...) as routing-only domains, then a reload of
//     resolved. Only names under those domains are routed to the stub; the
//     host's links keep their servers for everything else. See
//     resolvedBackend for why a global drop-in and not per-link settings,
//     and for the caveat that other names may reach the stub too.
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
// wants and writes only the difference, and reloads resolved only when the
// drop-in changed (or an earlier reload failed). Calling it on every sync
// is how a replaced /etc/resolv.conf gets noticed: when our file is gone,
// the new one becomes the original and ours is written again.
//
// Upstreams returns the host's original resolvers for the stub to forward
// to: resolved's uplink servers, or the original resolv.conf's nameservers.
// Never the stub and never 127.0.0.53/54, which would loop back to the stub.
//
// # Ownership
//
// Every file written on the host starts with the Marker line and is written
// atomically (a temporary file renamed over the target). Before changing the
// host, Apply records what it is about to change in a small JSON file in the
// state directory (hostdns.json), with the original /etc/resolv.conf backed
// up beside it (resolv.conf.orig): its content and mode, or the fact that
// it was a symlink and to where, or that there was none. Cleanup reads that
// record and undoes exactly it: it removes a drop-in only when it carries
// the marker, restores /etc/resolv.conf only while the file there is still
// ours (a file someone wrote over ours is theirs), removes directories it
// created only when empty, and deletes the record last. Cleanup is safe to
// run twice, and when nothing was done. Apply followed by Cleanup leaves the
// host's files as they were.
//
// Every path is taken under Options.HostRoot ("/" in production); symlinks
// in /etc/resolv.conf are followed inside that root. systemd-resolved is
// reloaded through the Reloader interface; the real one runs systemctl only
// when the root is "/".
package hostdns
