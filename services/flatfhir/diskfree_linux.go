package flatfhir

import "syscall"

// diskSpace is the space left to unprivileged writers on the filesystem
// holding dir, and the filesystem's size, in bytes.
func diskSpace(dir string) (free, size int64, err error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0, 0, err
	}
	return int64(fs.Bavail) * fs.Bsize, int64(fs.Blocks) * fs.Bsize, nil //nolint:gosec // block counts of a real filesystem fit
}
