package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckSecretPermissions: secret files readable by others, or by a
// group the broker does not need, are reported with their setting's path
// (issue 15, finding 10); 0600 and 0400 files are not.
func TestCheckSecretPermissions(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("secret-value-123"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	world, group, owner, readOnly := write("world", 0o644), write("group", 0o640), write("owner", 0o600), write("ro", 0o400)
	key := write("tls.key", 0o604)
	// A Secret volume's layout: the file behind a symlink.
	link := filepath.Join(dir, "link")
	if err := os.Symlink(world, link); err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse([]byte(`
tls: {cert_file: `+owner+`, key_file: `+key+`}
encryption:
  keys: [{id: k1, secret: {file: `+group+`}}, {id: k2, secret: {file: `+readOnly+`}}]
connections:
  - name: a
    type: fake
    token_url: https://a.example/token
    client_secret: {file: `+world+`}
  - name: b
    type: fake
    token_url: https://b.example/token
    client_secret: {file: `+link+`}
  - name: c
    type: fake
    token_url: https://c.example/token
    client_secret: {file: `+owner+`}
secrets: {strict_permissions: true}
`), registry())
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if !cfg.Secrets.StrictPermissions {
		t.Errorf("secrets.strict_permissions not decoded")
	}
	got := errors.Join(CheckSecretPermissions(cfg)...)
	if got == nil {
		t.Fatal("CheckSecretPermissions = nil; want the world- and group-readable files")
	}
	msg := got.Error()
	for _, want := range []string{
		"encryption.keys[0].secret: file " + group + " is readable by its group (mode 0640)",
		"connections[0].client_secret: file " + world + " is readable by others (mode 0644)",
		"connections[1].client_secret: file " + link + " is readable by others (mode 0644)",
		"tls.key_file: file " + key + " is readable by others (mode 0604)",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("CheckSecretPermissions lacks %q:\n%s", want, msg)
		}
	}
	for _, clean := range []string{owner, readOnly} {
		if strings.Contains(msg, clean+" ") {
			t.Errorf("CheckSecretPermissions reports %s:\n%s", clean, msg)
		}
	}
	if strings.Contains(msg, "secret-value-123") {
		t.Errorf("CheckSecretPermissions quotes a secret")
	}
}
