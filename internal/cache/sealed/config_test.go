package sealed_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenbroker/tokenbroker/internal/cache/sealed"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

func TestConfigValidate(t *testing.T) {
	env := func(name string) secret.Ref { return secret.Ref{Env: name} }
	for _, tt := range []struct {
		name string
		c    sealed.Config
		want []string // one line per problem; nil: valid
	}{
		{name: "one key", c: sealed.Config{Keys: []sealed.KeyConfig{{ID: "k1", Secret: env("K1")}}}},
		{name: "two keys, primary the first", c: sealed.Config{
			Keys:    []sealed.KeyConfig{{ID: "k1", Secret: env("K1")}, {ID: "2026-01_b.c", Secret: secret.Ref{File: "/k2"}}},
			Primary: "k1",
		}},
		{name: "longest id", c: sealed.Config{Keys: []sealed.KeyConfig{{ID: strings.Repeat("a", 32), Secret: env("K")}}}},
		{name: "no keys", c: sealed.Config{}, want: []string{"keys: at least one key is required"}},
		{name: "id too long", c: sealed.Config{Keys: []sealed.KeyConfig{{ID: strings.Repeat("a", 33), Secret: env("K")}}},
			want: []string{"keys[0].id: must be 1 to 32 characters of [A-Za-z0-9._-]"}},
		{name: "primary unknown", c: sealed.Config{Keys: []sealed.KeyConfig{{ID: "k1", Secret: env("K")}}, Primary: "k2"},
			want: []string{`primary: "k2" is not the id of a key in keys`}},
		{name: "every problem at once", c: sealed.Config{
			Keys: []sealed.KeyConfig{
				{},
				{ID: "bad id!", Secret: secret.Ref{File: "/a", Env: "A"}},
				{ID: "k1", Secret: env("K1")},
				{ID: "k1", Secret: env("K1b")},
			},
			Primary: "nope",
		}, want: []string{
			"keys[0].id: required",
			"keys[0].secret: one of file or env is required",
			"keys[1].id: must be 1 to 32 characters of [A-Za-z0-9._-]",
			"keys[1].secret: file and env are mutually exclusive",
			`keys[3].id: duplicate: "k1" is also keys[2].id`,
			`primary: "nope" is not the id of a key in keys`,
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate()
			var got []string
			if err != nil {
				got = strings.Split(err.Error(), "\n")
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Validate() problems (-want +got):\n%s", diff)
			}
		})
	}
}

// TestConfigValidateQuotesNoMaterial: key material pasted into the id or
// primary field by mistake is not echoed.
func TestConfigValidateQuotesNoMaterial(t *testing.T) {
	m := material("pasted")
	b64 := base64.StdEncoding.EncodeToString(m)
	c := sealed.Config{
		Keys:    []sealed.KeyConfig{{ID: b64, Secret: secret.Ref{Env: "K"}}, {ID: hex.EncodeToString(m)[:32], Secret: secret.Ref{Env: "K"}}},
		Primary: b64,
	}
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate() = nil; want errors")
	}
	assertNoMaterial(t, err.Error(), m)
	if strings.Contains(err.Error(), b64[:20]) {
		t.Errorf("Validate() error quotes part of a misplaced secret: %d bytes of message", len(err.Error()))
	}
}

func TestConfigLoad(t *testing.T) {
	// 0xfb 0xff 0xbf is "+/+/" in standard base64 and "-_-_" in URL base64.
	m := bytes.Repeat([]byte{0xfb, 0xff, 0xbf}, 11)[:32]
	forms := map[string]string{
		"hex":                  hex.EncodeToString(m),
		"upper hex":            strings.ToUpper(hex.EncodeToString(m)),
		"base64":               base64.StdEncoding.EncodeToString(m),
		"base64 unpadded":      base64.RawStdEncoding.EncodeToString(m),
		"url base64":           base64.URLEncoding.EncodeToString(m),
		"url base64 unpadded":  base64.RawURLEncoding.EncodeToString(m),
		"base64 with newlines": base64.StdEncoding.EncodeToString(m) + "\r\n\n",
		"hex with spaces":      "  " + hex.EncodeToString(m) + " \n",
	}
	reference, err := sealed.NewKeyring([]sealed.Key{{ID: "k1", Material: secret.New(string(m))}}, "")
	if err != nil {
		t.Fatal(err)
	}
	for name, text := range forms {
		t.Run(name, func(t *testing.T) {
			for _, ref := range []secret.Ref{{Env: "KEY"}, {File: "/secrets/key"}} {
				l := loader(map[string]string{"KEY": text}, map[string]string{"/secrets/key": text})
				c := sealed.Config{Keys: []sealed.KeyConfig{{ID: "k1", Secret: ref}}}
				kr, err := c.Load(l)
				if err != nil {
					t.Fatalf("Load(%s) = %v", ref.Source(), err)
				}
				// Same material: each keyring opens what the other sealed.
				for _, pair := range [][2]*sealed.Keyring{{kr, reference}, {reference, kr}} {
					v, err := pair[0].Seal(rand.Reader, "k", []byte("v"))
					if err != nil {
						t.Fatal(err)
					}
					if got, err := pair[1].Open("k", v); err != nil || string(got) != "v" {
						t.Errorf("%s: keys loaded and given differ: Open() = <%d bytes>, %v", ref.Source(), len(got), err)
					}
				}
			}
		})
	}

	t.Run("several keys and primary", func(t *testing.T) {
		l := loader(map[string]string{
			"K1": hex.EncodeToString(material("k1")),
			"K2": base64.StdEncoding.EncodeToString(material("k2")),
			"K3": base64.RawURLEncoding.EncodeToString(material("k3")),
		}, nil)
		for _, tt := range []struct{ primary, want string }{{"", "k3"}, {"k2", "k2"}} {
			c := sealed.Config{Keys: []sealed.KeyConfig{
				{ID: "k1", Secret: secret.Ref{Env: "K1"}},
				{ID: "k2", Secret: secret.Ref{Env: "K2"}},
				{ID: "k3", Secret: secret.Ref{Env: "K3"}},
			}, Primary: tt.primary}
			kr, err := c.Load(l)
			if err != nil {
				t.Fatalf("Load() = %v", err)
			}
			if got := kr.Primary(); got != tt.want {
				t.Errorf("Load() with primary %q: Primary() = %q; want %q", tt.primary, got, tt.want)
			}
			// Material from each source matches the test key of that id.
			for _, id := range []string{"k1", "k2", "k3"} {
				v, err := newKeyring(t, id).Seal(rand.Reader, "k", []byte("v"))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := kr.Open("k", v); err != nil {
					t.Errorf("loaded keyring cannot open a value sealed with test key %s: %v", id, err)
				}
			}
		}
	})
}

// TestConfigLoadErrors: each error names the key and its source, and none
// holds the material in any form.
func TestConfigLoadErrors(t *testing.T) {
	short := material("short")[:16]
	long := material("long")
	long = append(long, long[:8]...)
	secrets := map[string]string{
		"BAD_B64":      "c2VjcmV0LWtleS1tYXRlcmlhbA!!*",
		"SHORT_B64":    base64.StdEncoding.EncodeToString(short),
		"SHORT_HEX":    hex.EncodeToString(short),
		"LONG_B64":     base64.RawURLEncoding.EncodeToString(long),
		"HEX_63":       hex.EncodeToString(material("h"))[:63],
		"HEX_62":       hex.EncodeToString(material("h"))[:62],
		"HEX_BAD_CHAR": "zz" + hex.EncodeToString(material("h"))[2:],
		"EMPTY":        "",
		"GOOD":         hex.EncodeToString(material("good")),
	}
	for _, tt := range []struct {
		name string
		c    sealed.Config
		want []string // substrings, one per expected problem
	}{
		{"bad base64", cfg("k1", secret.Ref{Env: "BAD_B64"}),
			[]string{`keys[0].secret (key "k1"): environment variable BAD_B64: 29 characters that are neither base64 nor hex`}},
		{"short base64", cfg("k1", secret.Ref{Env: "SHORT_B64"}),
			[]string{`keys[0].secret (key "k1"): environment variable SHORT_B64: 24 characters of base64 decode to 16 bytes; want 32`}},
		{"short hex", cfg("k1", secret.Ref{File: "/keys/short"}),
			[]string{`keys[0].secret (key "k1"): file /keys/short: 32 hex characters; want 64`}},
		{"long base64", cfg("k1", secret.Ref{Env: "LONG_B64"}),
			[]string{`environment variable LONG_B64: 54 characters of base64 decode to 40 bytes; want 32`}},
		{"62 hex characters", cfg("k1", secret.Ref{Env: "HEX_62"}),
			[]string{`environment variable HEX_62: 62 hex characters; want 64`}},
		{"63 hex characters", cfg("k1", secret.Ref{Env: "HEX_63"}), // also unpadded base64
			[]string{`environment variable HEX_63: 63 characters of base64 decode to 47 bytes; want 32`}},
		{"64 characters, not hex", cfg("k1", secret.Ref{Env: "HEX_BAD_CHAR"}),
			[]string{`environment variable HEX_BAD_CHAR: 64 characters of base64 decode to 48 bytes; want 32`}},
		{"empty", cfg("k1", secret.Ref{Env: "EMPTY"}),
			[]string{`keys[0].secret (key "k1"): environment variable EMPTY: secret is empty`}},
		{"unset", cfg("k1", secret.Ref{Env: "UNSET"}),
			[]string{`keys[0].secret (key "k1"): environment variable UNSET is not set`}},
		{"missing file", cfg("k1", secret.Ref{File: "/keys/missing"}),
			[]string{`keys[0].secret (key "k1"): read file /keys/missing: file does not exist`}},
		{"every key's problem at once", sealed.Config{Keys: []sealed.KeyConfig{
			{ID: "a", Secret: secret.Ref{Env: "GOOD"}},
			{ID: "b", Secret: secret.Ref{Env: "SHORT_B64"}},
			{ID: "c", Secret: secret.Ref{Env: "BAD_B64"}},
			{ID: "d", Secret: secret.Ref{Env: "UNSET"}},
		}}, []string{
			`keys[1].secret (key "b"): environment variable SHORT_B64:`,
			`keys[2].secret (key "c"): environment variable BAD_B64:`,
			`keys[3].secret (key "d"): environment variable UNSET is not set`,
		}},
		{"duplicate ids: nothing read", sealed.Config{Keys: []sealed.KeyConfig{
			{ID: "a", Secret: secret.Ref{Env: "GOOD"}},
			{ID: "a", Secret: secret.Ref{Env: "SHORT_B64"}},
		}}, []string{`keys[1].id: duplicate: "a" is also keys[0].id`}},
		{"unknown primary", sealed.Config{Keys: []sealed.KeyConfig{{ID: "a", Secret: secret.Ref{Env: "GOOD"}}}, Primary: "b"},
			[]string{`primary: "b" is not the id of a key in keys`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := loader(secrets, map[string]string{"/keys/short": secrets["SHORT_HEX"]})
			kr, err := tt.c.Load(l)
			if err == nil {
				t.Fatalf("Load() = %v, nil; want an error", kr)
			}
			msg := err.Error()
			if got := len(strings.Split(msg, "\n")); got != len(tt.want) {
				t.Errorf("Load() reported %d problems; want %d:\n%s", got, len(tt.want), msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("Load() error = %q; want it to contain %q", msg, w)
				}
			}
			for name, s := range secrets {
				if s != "" && strings.Contains(fmt.Sprintf("%+v", err), s) {
					t.Errorf("Load() error contains the text of %s", name)
				}
			}
			assertNoMaterial(t, msg, short, long, material("good"), material("h"))
		})
	}
}

func cfg(id string, ref secret.Ref) sealed.Config {
	return sealed.Config{Keys: []sealed.KeyConfig{{ID: id, Secret: ref}}}
}

// loader reads secrets from the maps given instead of the environment and
// the file system.
func loader(env, files map[string]string) secret.Loader {
	return secret.Loader{
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
		ReadFile: func(name string) ([]byte, error) {
			if v, ok := files[name]; ok {
				return []byte(v), nil
			}
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		},
	}
}
