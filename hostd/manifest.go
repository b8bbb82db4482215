package hostd

import "github.com/symvirt/symvirt/hostd/manifest"

// A checkpoint's manifest and its confined files live in hostd/manifest;
// these keep hostd's API as it was. Signing them is sign.go's.
type (
	Manifest   = manifest.Manifest
	FileDigest = manifest.FileDigest
)

const (
	manifestName = manifest.Name
	stateName    = manifest.StateName
)

// ReadManifest loads a checkpoint's manifest, unverified (manifest.Read).
func ReadManifest(dir string) (Manifest, error) { return manifest.Read(dir) }

// VerifyCheckpoint checks every file against the manifest (manifest.Verify).
func VerifyCheckpoint(dir string) (Manifest, error) { return manifest.Verify(dir) }
