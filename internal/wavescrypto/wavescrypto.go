// Package wavescrypto implements Waves account keys, addresses and the
// "Curve25519" signatures used by the Waves blockchain and by the WX Network
// gateway password grant.
//
// The scheme follows @waves/ts-lib-crypto (which signs with axlsign, a port
// of the libsignal "curve_sigs" construction by Trevor Perrin; it is not
// XEdDSA):
//
//   - Account seed: Keccak-256(Blake2b-256(nonce ‖ seed)), where seed is the
//     UTF-8 encoding of the seed phrase (no trimming or normalisation) and
//     nonce is a 4-byte big-endian account index (0 for the first account).
//     Keccak-256 is the original Keccak padding, not FIPS-202 SHA3-256.
//   - Private key: SHA-256(account seed), clamped as for X25519.
//   - Public key: X25519(private key, 9), the 32-byte Montgomery u-coordinate.
//   - Address: 0x01 ‖ chain ‖ Keccak256(Blake2b256(public key))[:20] ‖
//     checksum, where the checksum is the first 4 bytes of
//     Keccak256(Blake2b256(the preceding 22 bytes)), written in base58
//     (Bitcoin alphabet).
//   - Signature: an Ed25519-style signature with the clamped private key a
//     used directly as the scalar (it is never hashed or negated). With
//     A = a·B, r = SHA-512(0xFE ‖ 0xFF×31 ‖ a ‖ M ‖ Z) mod L for 64 random
//     bytes Z, R = r·B, k = SHA-512(R ‖ A ‖ M) mod L and S = r + k·a mod L,
//     the signature is R ‖ S with the sign bit of A's Edwards encoding stored
//     in the top bit of the last byte. Verification maps u to the Edwards
//     y = (u−1)/(u+1), takes the sign bit from the signature, and performs an
//     ordinary (cofactorless) Ed25519 check.
//
// # Differences from the reference
//
// Verify is deliberately stricter than axlsign (and hence ts-lib-crypto's
// verifySignature). No signature produced by a conforming signer is affected:
//
//   - A non-canonical S (S ≥ L, e.g. S+L) is rejected; axlsign accepts it,
//     which makes its signatures malleable. gowaves rejects it too.
//   - A public key that is not a canonical field encoding (bit 255 set, or
//     u ≥ 2^255−19) is rejected; axlsign silently ignores bit 255 and reduces
//     u modulo p, so distinct key encodings verify the same signatures.
//   - A public key whose Edwards point has small order (u = 0, u = 1 and the
//     other 8-torsion points) is rejected, as is u = −1, which axlsign maps
//     to y = 0 by inverting zero; axlsign accepts such keys, for which
//     forging a signature is trivial.
//
// Like axlsign, Verify compares R byte for byte with the encoding of
// [S]B − [k]A, so a non-canonical R encoding never verifies.
//
// Mixed-order public keys (a prime-order point plus a torsion component) are
// not rejected, as in Ed25519 implementations generally; honest keys are
// always in the prime-order subgroup.
//
// All curve and field arithmetic comes from filippo.io/edwards25519.
package wavescrypto

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"

	"filippo.io/edwards25519"
	"github.com/mr-tron/base58"
	"golang.org/x/crypto/blake2b"
	"golang.org/x/crypto/sha3"
)

// Sizes of the encoded values, in bytes.
const (
	PrivateKeySize = 32
	PublicKeySize  = 32
	AddressSize    = 26
	SignatureSize  = 64
)

// Address version byte, the first byte of every Waves address.
const addressVersion = 0x01

const redacted = "[REDACTED]"

// Errors returned by ParsePrivateKey and ParsePublicKey. They never contain
// the input.
var (
	ErrEmptyKey    = errors.New("wavescrypto: empty key")
	ErrKeyEncoding = errors.New("wavescrypto: key is not valid base58")
	ErrKeyLength   = errors.New("wavescrypto: key has the wrong length")
)

// PrivateKey is a Waves (X25519) private key. It is clamped before use, so a
// key and its clamped form sign and derive identically, as in axlsign.
//
// The formatting, JSON, text and slog methods all print "[REDACTED]"; to
// get at the bytes, index or slice the array explicitly.
type PrivateKey [PrivateKeySize]byte

// PublicKey is a Waves public key: the Montgomery u-coordinate of the
// X25519 public key, little-endian.
type PublicKey [PublicKeySize]byte

// Address is a binary Waves address: version, chain byte, public key hash
// and checksum.
type Address [AddressSize]byte

// PrivateKeyFromSeed derives the private key of account number nonce from a
// seed phrase. The phrase is used exactly as given (as UTF-8 bytes).
func PrivateKeyFromSeed(seed string, nonce uint32) PrivateKey {
	as := accountSeed(seed, nonce)
	sk := PrivateKey(sha256.Sum256(as[:]))
	clear(as[:])
	clamp(&sk)
	return sk
}

// ParsePrivateKey decodes a base58 private key. The key is returned as
// encoded (not clamped). The error never contains the input.
func ParsePrivateKey(s string) (PrivateKey, error) {
	var sk PrivateKey
	err := decodeKey(sk[:], s)
	return sk, err
}

// ParsePublicKey decodes a base58 public key. Only the encoding and length
// are checked; Verify rejects keys that are not valid curve points. The error
// never contains the input.
func ParsePublicKey(s string) (PublicKey, error) {
	var pk PublicKey
	err := decodeKey(pk[:], s)
	return pk, err
}

func decodeKey(dst []byte, s string) error {
	if s == "" {
		return ErrEmptyKey
	}
	b, err := base58.Decode(s)
	if err != nil {
		// The base58 error quotes the offending character; drop it.
		return ErrKeyEncoding
	}
	if len(b) != len(dst) {
		clear(b)
		return fmt.Errorf("%w: decoded to %d bytes, want %d", ErrKeyLength, len(b), len(dst))
	}
	copy(dst, b)
	clear(b)
	return nil
}

// Public returns the public key of sk: X25519(clamp(sk), 9).
func (sk PrivateKey) Public() PublicKey {
	s := privateScalar(&sk)
	return PublicKey(new(edwards25519.Point).ScalarBaseMult(s).BytesMontgomery())
}

// String returns "[REDACTED]".
func (PrivateKey) String() string { return redacted }

// GoString returns "[REDACTED]".
func (PrivateKey) GoString() string { return redacted }

// Format implements fmt.Formatter; every verb prints "[REDACTED]".
func (PrivateKey) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// MarshalJSON returns the JSON string "[REDACTED]".
func (PrivateKey) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText returns "[REDACTED]", so that text-based encoders (YAML, JSON
// map keys, ...) do not print the key either.
func (PrivateKey) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// LogValue implements slog.LogValuer; the key is logged as "[REDACTED]".
func (PrivateKey) LogValue() slog.Value { return slog.StringValue(redacted) }

// String returns the base58 encoding of the public key.
func (pk PublicKey) String() string { return base58.Encode(pk[:]) }

// NewAddress returns the address of pk on the network with the given chain
// byte ('W' for mainnet, 'T' for testnet).
func NewAddress(pk PublicKey, chain byte) Address {
	var a Address
	a[0] = addressVersion
	a[1] = chain
	h := secureHash(pk[:])
	copy(a[2:22], h[:20])
	c := secureHash(a[:22])
	copy(a[22:], c[:4])
	return a
}

// String returns the base58 encoding of the address.
func (a Address) String() string { return base58.Encode(a[:]) }

// hashInput returns nonce (4 bytes, big-endian) ‖ UTF-8(seed).
func hashInput(seed string, nonce uint32) []byte {
	b := make([]byte, 4, 4+len(seed))
	binary.BigEndian.PutUint32(b, nonce)
	return append(b, seed...)
}

// accountSeed returns Keccak256(Blake2b256(nonce ‖ seed)).
func accountSeed(seed string, nonce uint32) [32]byte {
	in := hashInput(seed, nonce)
	h := secureHash(in)
	clear(in)
	return h
}

// secureHash is the Waves "secure hash": Keccak256(Blake2b256(b)).
func secureHash(b []byte) [32]byte {
	h := blake2b.Sum256(b)
	k := keccak256(h[:])
	clear(h[:])
	return k
}

func keccak256(b []byte) [32]byte {
	var out [32]byte
	h := sha3.NewLegacyKeccak256()
	h.Write(b)
	h.Sum(out[:0])
	return out
}

// clamp applies the X25519 clamping to k in place.
func clamp(k *PrivateKey) {
	k[0] &= 248
	k[31] &= 127
	k[31] |= 64
}

// privateScalar returns clamp(sk) mod L.
func privateScalar(sk *PrivateKey) *edwards25519.Scalar {
	s, err := new(edwards25519.Scalar).SetBytesWithClamping(sk[:])
	if err != nil {
		panic("wavescrypto: " + err.Error()) // unreachable: sk is 32 bytes
	}
	return s
}
