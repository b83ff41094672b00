package hostdns

// StateFiles returns the names of the files this package keeps in the
// state directory (the record of what Apply changed and the backup of the
// original resolv.conf), so that the agent's record of its own files lists
// them. Cleanup removes them itself once the host is restored.
func StateFiles() []string { return []string{recordName, backupName} }
