package server

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/config"
)

// validName must agree with config.NamePattern on every input.
func TestValidNameAgreesWithNamePattern(t *testing.T) {
	check := func(s string) {
		t.Helper()
		if got, want := validName(s), config.NamePattern.MatchString(s); got != want {
			t.Fatalf("validName(%q) = %v; config.NamePattern says %v", s, got, want)
		}
	}
	// Every string of up to 4 bytes over an alphabet with each class.
	alphabet := []byte{'a', 'z', '0', '9', '.', '_', '-', 'A', ' ', '\n', '/', 0, 0xc3, '{'}
	var gen func(prefix []byte, n int)
	gen = func(prefix []byte, n int) {
		check(string(prefix))
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			gen(append(prefix, c), n-1)
		}
	}
	gen(nil, 4)
	// Lengths around the limit, and random strings.
	for _, n := range []int{62, 63, 64, 65, 66, 200} {
		check(strings.Repeat("a", n))
		check("a" + strings.Repeat("-", n-2) + "a")
		check("a" + strings.Repeat("-", n-1))
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200_000 {
		b := make([]byte, r.IntN(70))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		check(string(b))
	}
}
