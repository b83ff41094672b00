// Package fuzz holds fuzz targets that cross packages: a saved snapshot
// file, mutated and re-sealed, fed to every consumer of the snapshot (the
// DNS zone, both proxy renderers, the routes). It has no code of its own
// outside its tests.
package fuzz
