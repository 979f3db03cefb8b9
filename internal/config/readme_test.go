package config_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/config"
	"github.com/tokenbroker/tokenbroker/internal/providers/builtin"
)

// TestReadmeExamples: every YAML block of the README is a valid
// configuration (a block without connections borrows the first block's),
// also with anonymous access turned on as its example shows: an example an
// operator copies must not give PERMISSION_DENIED everywhere (issue 15,
// finding 9). Secrets are not read: the paths are the examples'.
func TestReadmeExamples(t *testing.T) {
	text, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(text), -1)
	if len(blocks) < 2 {
		t.Fatalf("README has %d yaml blocks; want the configuration and security examples", len(blocks))
	}
	_, conns, ok := strings.Cut(blocks[0][1], "\nconnections:\n")
	if !ok {
		t.Fatal("the README's first yaml block has no connections")
	}
	anonymous := 0
	reg := builtin.Registry()
	for i, b := range blocks {
		doc := b[1]
		if !strings.Contains(doc, "\nconnections:\n") {
			doc += "\nconnections:\n" + conns
		}
		if _, err := config.Parse([]byte(doc), reg); err != nil {
			t.Errorf("README yaml block %d does not parse:\n%v", i, err)
		}
		if on := regexp.MustCompile(`(?m)^(  allow_anonymous:.*\n    enabled: )false`); on.MatchString(doc) {
			anonymous++
			if _, err := config.Parse([]byte(on.ReplaceAllString(doc, "${1}true")), reg); err != nil {
				t.Errorf("README yaml block %d with allow_anonymous.enabled: true does not parse:\n%v", i, err)
			}
		}
	}
	if anonymous == 0 {
		t.Error("no README example of allow_anonymous (enabled: false on its own line)")
	}
}
