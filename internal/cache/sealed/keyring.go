package sealed

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Format of a sealed value:
//
//	version (1 byte, 1) ‖ len(keyID) (1 byte) ‖ keyID ‖ nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)
//
// The associated data is the header (version ‖ len(keyID) ‖ keyID) followed
// by the storage key. The header carries its own length, so the pair is
// unambiguous.
const (
	version   = 1
	nonceSize = 12 // the GCM standard nonce
	tagSize   = 16
	maxKeyID  = 32 // the longest key id, in bytes
)

// KeySize is the length of AES-256 key material, in bytes.
const KeySize = 32

// A Key is one AES-256 key and the id that sealed values carry to name it.
type Key struct {
	// ID is 1 to 32 characters of [A-Za-z0-9._-]. It is stored in
	// plain text in every value sealed with the key.
	ID string
	// Material is KeySize raw bytes. A secret.Value prints as a redaction,
	// so a Key can be logged or printed by mistake without harm.
	Material secret.Value
}

// A Keyring holds the keys values are sealed and opened with: values are
// sealed with the primary key, and opened with whichever key their id names,
// so that adding a key (and making it primary) rotates writes while older
// values stay readable. Make one with NewKeyring or Config.Load; it is
// immutable and safe for concurrent use.
type Keyring struct {
	aeads   map[string]cipher.AEAD
	ids     []string // in the order given
	primary string
	seal    cipher.AEAD // aeads[primary]
	header  []byte      // version ‖ len(primary) ‖ primary
}

// NewKeyring returns a keyring of keys. primary is the id of the key used
// for writes; "" means the last key. It reports every problem at once: no
// keys, an invalid or duplicate id, material that is not KeySize bytes, an
// unknown primary. Errors name key ids, never material.
func NewKeyring(keys []Key, primary string) (*Keyring, error) {
	var errs []error
	if len(keys) == 0 {
		errs = append(errs, errors.New("sealed: at least one key is required"))
	}
	kr := &Keyring{aeads: make(map[string]cipher.AEAD, len(keys))}
	seen := make(map[string]bool, len(keys))
	for i, k := range keys {
		if !validKeyID(k.ID) {
			errs = append(errs, fmt.Errorf("sealed: keys[%d]: id %s", i, keyIDRule))
			continue
		}
		if seen[k.ID] {
			errs = append(errs, fmt.Errorf("sealed: keys[%d]: duplicate id %q", i, k.ID))
			continue
		}
		seen[k.ID] = true
		m := k.Material.Reveal()
		if len(m) != KeySize {
			errs = append(errs, fmt.Errorf("sealed: key %q: material is %d bytes; want %d", k.ID, len(m), KeySize))
			continue
		}
		block, err := aes.NewCipher([]byte(m))
		if err != nil { // unreachable with 32 bytes
			errs = append(errs, fmt.Errorf("sealed: key %q: %w", k.ID, err))
			continue
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			errs = append(errs, fmt.Errorf("sealed: key %q: %w", k.ID, err))
			continue
		}
		kr.aeads[k.ID] = aead
		kr.ids = append(kr.ids, k.ID)
	}
	switch {
	case primary != "" && !slices.ContainsFunc(keys, func(k Key) bool { return k.ID == primary }):
		if validKeyID(primary) {
			errs = append(errs, fmt.Errorf("sealed: primary %q is not the id of a key", primary))
		} else {
			errs = append(errs, errors.New("sealed: primary is not the id of a key"))
		}
	case primary == "" && len(keys) > 0:
		primary = keys[len(keys)-1].ID
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	kr.primary = primary
	kr.seal = kr.aeads[primary]
	kr.header = append([]byte{version, byte(len(primary))}, primary...)
	return kr, nil
}

// Primary returns the id of the key new values are sealed with.
func (kr *Keyring) Primary() string { return kr.primary }

// IDs returns the ids of every key, in the order they were given.
func (kr *Keyring) IDs() []string { return slices.Clone(kr.ids) }

// String names the keys, never their material, e.g. for a start-up log line.
func (kr *Keyring) String() string {
	return fmt.Sprintf("keys %s, primary %s", strings.Join(kr.ids, ","), kr.primary)
}

// Seal encrypts plaintext with the primary key for storage under key,
// reading a fresh nonce from rand. The result is a new slice; plaintext is
// not modified. It fails only when rand does.
//
// Nonces are random, so one key should seal well under 2^32 values; rotate
// keys long before that.
func (kr *Keyring) Seal(rand io.Reader, key string, plaintext []byte) ([]byte, error) {
	h := len(kr.header)
	n := h + nonceSize + len(plaintext) + tagSize
	// One allocation: the associated data is built in spare capacity after
	// the value, which the returned slice's capacity then excludes.
	buf := make([]byte, n, n+h+len(key))
	copy(buf, kr.header)
	nonce := buf[h : h+nonceSize]
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return nil, fmt.Errorf("sealed: read nonce: %w", err)
	}
	ad := append(append(buf[n:n], kr.header...), key...)
	kr.seal.Seal(buf[:h+nonceSize], nonce, plaintext, ad)
	return buf[:n:n], nil
}

// Open decrypts a value that Seal made for storage under key and returns
// the plaintext in a new slice; value is not modified. Any failure wraps
// ErrDecrypt and says why (malformed value, unknown key id, failed
// authentication), quoting neither the value nor the storage key.
func (kr *Keyring) Open(key string, value []byte) ([]byte, error) {
	if len(value) < 2 {
		return nil, fmt.Errorf("%w: too short to be a sealed value", ErrDecrypt)
	}
	if value[0] != version {
		return nil, fmt.Errorf("%w: unknown format version %d", ErrDecrypt, value[0])
	}
	h := 2 + int(value[1])
	if value[1] == 0 || value[1] > maxKeyID || len(value) < h+nonceSize+tagSize {
		return nil, fmt.Errorf("%w: malformed header or truncated value", ErrDecrypt)
	}
	id := value[2:h]
	aead, ok := kr.aeads[string(id)]
	if !ok {
		if validKeyID(string(id)) {
			return nil, fmt.Errorf("%w: unknown key id %q", ErrDecrypt, id)
		}
		// Not quoted: these bytes may be a plaintext that was never sealed.
		return nil, fmt.Errorf("%w: malformed key id", ErrDecrypt)
	}
	ciphertext := value[h+nonceSize:]
	m := len(ciphertext) - tagSize
	// One allocation, as in Seal: the plaintext, then the associated data.
	// GCM reads all of the associated data before writing any plaintext.
	buf := make([]byte, m, m+h+len(key))
	ad := append(append(buf[m:m], value[:h]...), key...)
	plaintext, err := aead.Open(buf[:0], value[h:h+nonceSize], ciphertext, ad)
	if err != nil {
		return nil, fmt.Errorf("%w: authentication failed under key id %q "+
			"(stored under another key, tampered with, or sealed with other material)", ErrDecrypt, id)
	}
	return plaintext[:m:m], nil
}

const keyIDRule = "must be 1 to 32 characters of [A-Za-z0-9._-]"

// validKeyID reports whether id can name a key.
func validKeyID(id string) bool {
	if len(id) == 0 || len(id) > maxKeyID {
		return false
	}
	for i := range len(id) {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
