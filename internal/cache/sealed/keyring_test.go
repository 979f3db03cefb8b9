package sealed_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/cache/sealed"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// material derives a test key's 32 bytes from a label.
func material(label string) []byte {
	m := sha256.Sum256([]byte("sealed test key " + label))
	return m[:]
}

// testKey is the key id with material derived from the id.
func testKey(id string) sealed.Key {
	return sealed.Key{ID: id, Material: secret.New(string(material(id)))}
}

// newKeyring returns a keyring of test keys with the last one primary.
func newKeyring(t testing.TB, ids ...string) *sealed.Keyring {
	t.Helper()
	var keys []sealed.Key
	for _, id := range ids {
		keys = append(keys, testKey(id))
	}
	kr, err := sealed.NewKeyring(keys, "")
	if err != nil {
		t.Fatalf("NewKeyring(%v) = %v", ids, err)
	}
	return kr
}

// header splits a sealed value's header: its format version and key id.
func header(t *testing.T, v []byte) (version byte, keyID string) {
	t.Helper()
	if len(v) < 2 || len(v) < 2+int(v[1]) {
		t.Fatalf("sealed value of %d bytes has no complete header", len(v))
	}
	return v[0], string(v[2 : 2+int(v[1])])
}

type vector struct {
	Name          string `json:"name"`
	KeyHex        string `json:"key_hex"`
	KeyID         string `json:"key_id"`
	NonceHex      string `json:"nonce_hex"`
	StorageKeyHex string `json:"storage_key_hex"`
	PlaintextHex  string `json:"plaintext_hex"`
	SealedHex     string `json:"sealed_hex"`
}

// TestVectors checks the format byte for byte against values made by
// pyca/cryptography (testdata/gen_vectors.py), so that values stored by one
// version of the broker stay readable by the next.
func TestVectors(t *testing.T) {
	data, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vectors []vector
	if err := json.Unmarshal(data, &vectors); err != nil {
		t.Fatalf("testdata/vectors.json: %v", err)
	}
	if len(vectors) == 0 {
		t.Fatal("testdata/vectors.json holds no vectors")
	}
	unhex := func(t *testing.T, s string) []byte {
		t.Helper()
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, v := range vectors {
		t.Run(v.Name, func(t *testing.T) {
			key := sealed.Key{ID: v.KeyID, Material: secret.New(string(unhex(t, v.KeyHex)))}
			kr, err := sealed.NewKeyring([]sealed.Key{testKey("other"), key}, "")
			if err != nil {
				t.Fatal(err)
			}
			storageKey := string(unhex(t, v.StorageKeyHex))
			plaintext, want := unhex(t, v.PlaintextHex), unhex(t, v.SealedHex)

			got, err := kr.Seal(bytes.NewReader(unhex(t, v.NonceHex)), storageKey, plaintext)
			if err != nil {
				t.Fatalf("Seal() error = %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Seal() = %x; want %x", got, want)
			}
			opened, err := kr.Open(storageKey, want)
			if err != nil {
				t.Fatalf("Open(vector) error = %v", err)
			}
			if !bytes.Equal(opened, plaintext) {
				t.Errorf("Open(vector) = %x; want %x", opened, plaintext)
			}
		})
	}
}

func TestSealOpen(t *testing.T) {
	kr := newKeyring(t, "k1")
	for _, tt := range []struct {
		name      string
		key       string
		plaintext []byte
	}{
		{"empty", "k", []byte{}},
		{"nil", "k", nil},
		{"text", "token:conn\x00a b", []byte(`{"access_token":"x"}`)},
		{"large", "grant:conn", bytes.Repeat([]byte{0, 1, 2, 0xff}, 1<<16)},
		{"empty storage key", "", []byte("v")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := bytes.Clone(tt.plaintext)
			v1, err := kr.Seal(rand.Reader, tt.key, in)
			if err != nil {
				t.Fatalf("Seal() error = %v", err)
			}
			if !bytes.Equal(in, tt.plaintext) {
				t.Error("Seal() modified its plaintext")
			}
			if got, want := len(v1), 2+len("k1")+12+len(tt.plaintext)+16; got != want || cap(v1) != want {
				t.Errorf("len, cap of Seal() = %d, %d; want %d, %d", got, cap(v1), want, want)
			}
			if ver, id := header(t, v1); ver != 1 || id != "k1" {
				t.Errorf("header of Seal() = version %d, key id %q; want 1, %q", ver, id, "k1")
			}
			v2, err := kr.Seal(rand.Reader, tt.key, tt.plaintext)
			if err != nil {
				t.Fatalf("Seal() error = %v", err)
			}
			if bytes.Equal(v1, v2) {
				t.Error("two Seal() calls of one plaintext gave the same value; want fresh nonces")
			}
			sealedCopy := bytes.Clone(v1)
			got, err := kr.Open(tt.key, v1)
			if err != nil {
				t.Fatalf("Open() error = %v", err)
			}
			if !bytes.Equal(got, tt.plaintext) {
				t.Errorf("Open() = <%d bytes>; want the <%d bytes> sealed", len(got), len(tt.plaintext))
			}
			if !bytes.Equal(v1, sealedCopy) {
				t.Error("Open() modified its input")
			}
		})
	}
}

// TestOpenRejects: every change to a sealed value, or to the storage key it
// is opened under, is an error wrapping ErrDecrypt that quotes no value.
func TestOpenRejects(t *testing.T) {
	const plaintext = "rt-TESTSECRET-refresh-token"
	kr := newKeyring(t, "k1")
	good, err := kr.Seal(rand.Reader, "grant:a", []byte(plaintext))
	if err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, what, key string, v []byte, wantMsg string) {
		t.Helper()
		got, err := kr.Open(key, v)
		if !errors.Is(err, sealed.ErrDecrypt) {
			t.Errorf("Open(%s) = <%d bytes>, %v; want error wrapping ErrDecrypt", what, len(got), err)
			return
		}
		if got != nil {
			t.Errorf("Open(%s) returned <%d bytes> with its error; want nil", what, len(got))
		}
		if !strings.Contains(err.Error(), wantMsg) {
			t.Errorf("Open(%s) error = %q; want it to contain %q", what, err, wantMsg)
		}
		if msg := err.Error(); strings.Contains(msg, plaintext) || strings.Contains(msg, "grant:") {
			t.Errorf("Open(%s) error quotes the value or the storage key", what)
		}
	}

	t.Run("other storage key", func(t *testing.T) {
		for _, key := range []string{"grant:b", "grant:a ", "grant:", "", "Grant:a"} {
			check(t, fmt.Sprintf("under %q", key), key, good, "authentication failed")
		}
	})
	t.Run("every byte flipped", func(t *testing.T) {
		for i := range good {
			for _, bit := range []byte{0x01, 0x80} {
				v := bytes.Clone(good)
				v[i] ^= bit
				// Which message depends on the byte: header, id, nonce, body or tag.
				got, err := kr.Open("grant:a", v)
				if !errors.Is(err, sealed.ErrDecrypt) {
					t.Errorf("Open(byte %d ^ %#x) = <%d bytes>, %v; want error wrapping ErrDecrypt", i, bit, len(got), err)
				}
			}
		}
	})
	t.Run("truncated", func(t *testing.T) {
		for n := range len(good) {
			check(t, fmt.Sprintf("first %d bytes", n), "grant:a", good[:n], "")
		}
	})
	t.Run("extended", func(t *testing.T) {
		check(t, "with a byte appended", "grant:a", append(bytes.Clone(good), 0), "authentication failed")
	})
	t.Run("unknown key id", func(t *testing.T) {
		other := newKeyring(t, "k2")
		v, err := other.Seal(rand.Reader, "grant:a", []byte(plaintext))
		if err != nil {
			t.Fatal(err)
		}
		check(t, "sealed with k2", "grant:a", v, `unknown key id "k2"`)
	})
	t.Run("same id, other material", func(t *testing.T) {
		impostor, err := sealed.NewKeyring([]sealed.Key{{ID: "k1", Material: secret.New(string(material("not k1")))}}, "")
		if err != nil {
			t.Fatal(err)
		}
		v, err := impostor.Seal(rand.Reader, "grant:a", []byte(plaintext))
		if err != nil {
			t.Fatal(err)
		}
		check(t, "sealed with other material under k1", "grant:a", v, "authentication failed")
	})
	t.Run("never sealed", func(t *testing.T) {
		for _, v := range [][]byte{
			[]byte(`{"access_token":"` + plaintext + `"}`),
			// Looks like a header whose key id is not one: not quoted.
			append([]byte{1, 30}, "rt:"+plaintext+strings.Repeat(".", 40)...),
			{},
			nil,
		} {
			check(t, fmt.Sprintf("plaintext of %d bytes", len(v)), "grant:a", v, "")
		}
	})
}

func TestRotation(t *testing.T) {
	old := newKeyring(t, "k1")
	v1, err := old.Seal(rand.Reader, "grant:a", []byte("sealed with k1"))
	if err != nil {
		t.Fatal(err)
	}

	// Step 1 on every replica: add k2, keep k1 primary.
	added, err := sealed.NewKeyring([]sealed.Key{testKey("k1"), testKey("k2")}, "k1")
	if err != nil {
		t.Fatal(err)
	}
	if got := added.Primary(); got != "k1" {
		t.Errorf("Primary() = %q; want %q", got, "k1")
	}
	// Step 2: k2 primary (the last key, by default).
	rotated := newKeyring(t, "k1", "k2")
	if got := rotated.Primary(); got != "k2" {
		t.Errorf("Primary() = %q; want %q", got, "k2")
	}
	if got, want := rotated.IDs(), []string{"k1", "k2"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("IDs() = %v; want %v", got, want)
	}

	for _, kr := range []*sealed.Keyring{added, rotated} {
		if got, err := kr.Open("grant:a", v1); err != nil || string(got) != "sealed with k1" {
			t.Errorf("keyring %v: Open(value sealed with k1) = <%d bytes>, %v; want the value", kr, len(got), err)
		}
	}
	v, err := added.Seal(rand.Reader, "grant:b", []byte("b"))
	if err != nil {
		t.Fatal(err)
	}
	if _, id := header(t, v); id != "k1" {
		t.Errorf("key id of a value sealed with primary k1 = %q; want %q", id, "k1")
	}
	v2, err := rotated.Seal(rand.Reader, "grant:b", []byte("sealed with k2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, id := header(t, v2); id != "k2" {
		t.Errorf("key id of a value sealed after rotation = %q; want %q", id, "k2")
	}
	for _, kr := range []*sealed.Keyring{added, rotated} {
		if got, err := kr.Open("grant:b", v2); err != nil || string(got) != "sealed with k2" {
			t.Errorf("keyring %v: Open(value sealed with k2) = <%d bytes>, %v; want the value", kr, len(got), err)
		}
	}
	// A replica that skipped step 1 cannot read it, and says which key it lacks.
	if _, err := old.Open("grant:b", v2); !errors.Is(err, sealed.ErrDecrypt) || !strings.Contains(err.Error(), `"k2"`) {
		t.Errorf("old keyring: Open(value sealed with k2) error = %v; want ErrDecrypt naming k2", err)
	}
}

func TestNewKeyringErrors(t *testing.T) {
	short := sealed.Key{ID: "short", Material: secret.New(string(material("short")[:16]))}
	for _, tt := range []struct {
		name    string
		keys    []sealed.Key
		primary string
		want    []string // each must appear in the error
	}{
		{"no keys", nil, "", []string{"at least one key"}},
		{"empty id", []sealed.Key{{Material: secret.New(string(material("x")))}}, "", []string{"keys[0]: id must be"}},
		{"id too long", []sealed.Key{testKey(strings.Repeat("a", 33))}, "", []string{"keys[0]: id must be"}},
		{"id charset", []sealed.Key{testKey("a/b")}, "", []string{"keys[0]: id must be"}},
		{"duplicate", []sealed.Key{testKey("k1"), testKey("k1")}, "", []string{`keys[1]: duplicate id "k1"`}},
		{"short material", []sealed.Key{short}, "", []string{`key "short": material is 16 bytes; want 32`}},
		{"no material", []sealed.Key{{ID: "k"}}, "", []string{`key "k": material is 0 bytes`}},
		{"unknown primary", []sealed.Key{testKey("k1")}, "k2", []string{`primary "k2" is not the id of a key`}},
		{"all at once", []sealed.Key{testKey("k1"), testKey("k1"), short}, "zz", []string{
			`keys[1]: duplicate id "k1"`, `key "short": material is 16 bytes`, `primary "zz"`,
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			kr, err := sealed.NewKeyring(tt.keys, tt.primary)
			if err == nil {
				t.Fatalf("NewKeyring() = %v, nil; want an error", kr)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("NewKeyring() error = %q; want it to contain %q", err, w)
				}
			}
			assertNoMaterial(t, err.Error(), material("short"), material("k1"), material("x"))
		})
	}
}

// TestNothingPrintsMaterial: a Key or a Keyring printed, logged or encoded
// by mistake shows no key material.
func TestNothingPrintsMaterial(t *testing.T) {
	k := testKey("k1")
	kr := newKeyring(t, "k1")
	var out strings.Builder
	for _, v := range []any{k, &k, []sealed.Key{k}, kr, *kr} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%q"} {
			fmt.Fprintf(&out, verb+"\n", v)
		}
	}
	j, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	out.Write(j)
	slog.New(slog.NewJSONHandler(&out, nil)).Info("keys", "key", k, "keyring", kr)
	slog.New(slog.NewTextHandler(&out, nil)).Info("keys", "key", k, "keyring", kr)
	assertNoMaterial(t, out.String(), material("k1"))
	if got, want := kr.String(), "keys k1, primary k1"; got != want {
		t.Errorf("Keyring.String() = %q; want %q", got, want)
	}
}

// assertNoMaterial fails t if s holds any of the materials raw, in hex or
// in base64.
func assertNoMaterial(t *testing.T, s string, materials ...[]byte) {
	t.Helper()
	for i, m := range materials {
		for _, form := range []string{
			string(m), hex.EncodeToString(m), strings.ToUpper(hex.EncodeToString(m)), fmt.Sprint(m),
			base64.StdEncoding.EncodeToString(m), base64.RawURLEncoding.EncodeToString(m),
		} {
			if strings.Contains(s, form) {
				t.Errorf("output (%d bytes) contains key material #%d", len(s), i)
				break
			}
		}
	}
}

func BenchmarkSeal(b *testing.B) {
	kr := newKeyring(b, "k1", "k2")
	value := bytes.Repeat([]byte("v"), 256)
	b.SetBytes(int64(len(value)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kr.Seal(rand.Reader, "token:connection\x00scope-a scope-b", value); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	kr := newKeyring(b, "k1", "k2")
	const key = "token:connection\x00scope-a scope-b"
	v, err := kr.Seal(rand.Reader, key, bytes.Repeat([]byte("v"), 256))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(256)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kr.Open(key, v); err != nil {
			b.Fatal(err)
		}
	}
}
