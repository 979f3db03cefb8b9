package secret

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckPermissionsReadThroughGroup: a file the process reads only
// through its group (a Kubernetes Secret volume with fsGroup: owned by
// root, mode 0440) passes; the same file readable by others does not.
func TestCheckPermissionsReadThroughGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file another owner")
	}
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 65534, os.Getegid()); err != nil {
		t.Fatal(err)
	}
	for mode, wantErr := range map[os.FileMode]string{0o440: "", 0o444: "readable by others", 0o400: ""} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		err := CheckPermissions(p)
		if wantErr == "" && err != nil || wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)) {
			t.Errorf("mode %04o: CheckPermissions = %v; want %q", mode, err, wantErr)
		}
	}
	if err := os.Chown(p, os.Geteuid(), os.Getegid()); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(p, 0o440)
	if err := CheckPermissions(p); err == nil || !strings.Contains(err.Error(), "readable by its group") {
		t.Errorf("own file, mode 0440: CheckPermissions = %v; want the group bit reported", err)
	}
}
