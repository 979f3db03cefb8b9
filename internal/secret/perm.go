package secret

import (
	"fmt"
	"io/fs"
	"os"
)

// CheckPermissions reports whether the file at path is readable by more
// people than need it: by others, or by its group when the process is its
// owner (the group bit is then unneeded). A file the process reads only
// through its group (a Kubernetes Secret volume: owned by root, group
// fsGroup, mode 0440) passes. The error names the path and mode, never
// the contents; a file that cannot be stat'ed passes (Load reports it).
func CheckPermissions(path string) error {
	fi, err := os.Stat(path) // follows the symlinks of a Secret volume
	if err != nil {
		return nil
	}
	mode := fi.Mode().Perm()
	switch {
	case mode&0o004 != 0:
		return fmt.Errorf("file %s is readable by others (mode %04o): make it 0600 or 0400", path, mode)
	case mode&0o040 != 0 && !readThroughGroup(fi):
		return fmt.Errorf("file %s is readable by its group (mode %04o), which this process does not need: make it 0600 or 0400", path, mode)
	}
	return nil
}

// readThroughGroup reports whether the process is not fi's owner but in
// its group, so that the group bit is how it reads fi.
func readThroughGroup(fi fs.FileInfo) bool {
	uid, gid, ok := owner(fi)
	if !ok || uid == os.Geteuid() {
		return false
	}
	if gid == os.Getegid() {
		return true
	}
	groups, _ := os.Getgroups()
	for _, g := range groups {
		if g == gid {
			return true
		}
	}
	return false
}
