// Package ownfiles guards the files and directories bridge-agent keeps on
// its host, so that no configuration mistake can make it write or delete
// anywhere else.
//
//   - Paths: every path the agent writes (the state directory, the status
//     socket, the lock) is a host path that config.CheckOwnPath accepts:
//     inside a directory of the agent's own, /var/lib/bridge-agent* or
//     /run/bridge-agent*. At use time Dir checks it again on the host: the
//     prefix (/var/lib, /run, which may be the host's symlinks) resolves
//     inside the host root, and the agent's own directories below it are
//     real directories (never symbolic links), owned by the agent's user and
//     writable by nobody else.
//   - One agent per host root: Lock takes an exclusive flock on
//     /run/bridge-agent/lock, with the holder's PID in the file.
//   - A record of what the agent made: Prepare writes owned.json in the
//     state directory, listing the directories it created (or that systemd
//     created for its unit: StateDirectory=, RuntimeDirectory=) and the files
//     it writes, before it writes them. Cleanup removes exactly those (and
//     the files the agent knows by name, for state directories of versions
//     that kept no record), empties directories with rmdir only, and reports
//     everything it left and why. It never removes a directory tree.
package ownfiles
