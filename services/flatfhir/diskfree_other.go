//go:build !linux

package flatfhir

import "errors"

// diskSpace is not measured on this system: the disk guard stays off.
func diskSpace(string) (free, size int64, err error) {
	return 0, 0, errors.New("free disk space is measured on Linux only")
}
