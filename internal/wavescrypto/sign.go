package wavescrypto

import (
	"crypto/sha512"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"strconv"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

// randomSize is the number of random bytes Sign reads.
const randomSize = 64

// tokenPrefix starts every WX gateway token message.
var tokenPrefix = [...]byte{255, 255, 255, 1}

// nonceDomain is the hash separation prefix of the randomised nonce:
// 0xFE followed by 31 bytes of 0xFF.
var nonceDomain = [32]byte{
	0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
}

// TokenMessage returns the message signed for the WX Network gateway
// password grant: [255, 255, 255, 1] ‖ "<chain>:<clientID>:<expiry>", where
// chain is the network byte (e.g. 'W') written as a single byte and expiry
// is in Unix seconds, in decimal.
func TokenMessage(chain byte, clientID string, expiry int64) []byte {
	m := make([]byte, 0, len(tokenPrefix)+len(clientID)+24)
	m = append(m, tokenPrefix[:]...)
	m = append(m, chain, ':')
	m = append(m, clientID...)
	m = append(m, ':')
	return strconv.AppendInt(m, expiry, 10)
}

// Sign signs message with sk, reading exactly 64 bytes from random (use
// crypto/rand.Reader). It returns a 64-byte signature in the axlsign format
// (see the package documentation); it fails only if random does.
func Sign(sk PrivateKey, message []byte, random io.Reader) ([]byte, error) {
	if random == nil {
		return nil, errors.New("wavescrypto: nil random source")
	}
	var z [randomSize]byte
	if _, err := io.ReadFull(random, z[:]); err != nil {
		return nil, fmt.Errorf("wavescrypto: reading random bytes: %w", err)
	}
	sig := sign(&sk, message, z[:])
	clear(z[:])
	clear(sk[:])
	return sig[:], nil
}

// sign computes the signature. If random is nil, the nonce is the
// deterministic axlsign one, SHA-512(a ‖ M); otherwise it is
// SHA-512(0xFE ‖ 0xFF×31 ‖ a ‖ M ‖ random). In both cases a is the clamped
// key bytes, not the key reduced modulo L.
func sign(sk *PrivateKey, message, random []byte) [SignatureSize]byte {
	a := *sk
	clamp(&a)
	s := privateScalar(&a)
	pub := new(edwards25519.Point).ScalarBaseMult(s).Bytes()

	h := sha512.New()
	if random != nil {
		h.Write(nonceDomain[:])
	}
	h.Write(a[:])
	h.Write(message)
	h.Write(random)
	var digest [sha512.Size]byte
	r, err := new(edwards25519.Scalar).SetUniformBytes(h.Sum(digest[:0]))
	if err != nil {
		panic("wavescrypto: " + err.Error()) // unreachable: 64-byte input
	}
	clear(a[:])
	clear(digest[:])

	var sig [SignatureSize]byte
	copy(sig[:32], new(edwards25519.Point).ScalarBaseMult(r).Bytes())
	k := challenge(sig[:32], pub, message)
	copy(sig[32:], new(edwards25519.Scalar).MultiplyAdd(k, s, r).Bytes())
	sig[63] |= pub[31] & 0x80
	return sig
}

// Verify reports whether sig is a valid signature of message by pk. It is
// stricter than the reference in the ways listed in the package
// documentation: non-canonical S, non-canonical public key encodings and
// small-order public keys are rejected.
func Verify(pk PublicKey, message, sig []byte) bool {
	if len(sig) != SignatureSize {
		return false
	}
	encA, A, ok := edwardsPublicKey(&pk, sig[63]>>7)
	if !ok {
		return false
	}
	var sBytes [32]byte
	copy(sBytes[:], sig[32:])
	sBytes[31] &= 0x7f
	S, err := new(edwards25519.Scalar).SetCanonicalBytes(sBytes[:])
	if err != nil {
		return false
	}
	k := challenge(sig[:32], encA[:], message)
	minusA := new(edwards25519.Point).Negate(A)
	R := new(edwards25519.Point).VarTimeDoubleScalarBaseMult(k, minusA, S)
	// Comparing encodings also rejects a non-canonical R, as axlsign does.
	return subtle.ConstantTimeCompare(sig[:32], R.Bytes()) == 1
}

// edwardsPublicKey converts the Montgomery public key to its Edwards point,
// y = (u−1)/(u+1), with the given sign bit (0 or 1) for x. It returns the
// encoding (as hashed by signer and verifier) and the point; ok is false for
// non-canonical u, u = −1, u not on the curve, and small-order points.
func edwardsPublicKey(pk *PublicKey, signBit byte) (enc [32]byte, p *edwards25519.Point, ok bool) {
	u, err := new(field.Element).SetBytes(pk[:])
	if err != nil || subtle.ConstantTimeCompare(u.Bytes(), pk[:]) != 1 {
		return enc, nil, false // bit 255 set, or u ≥ p
	}
	one := new(field.Element).One()
	den := new(field.Element).Add(u, one)
	if den.Equal(new(field.Element)) == 1 {
		return enc, nil, false // u = −1 has no Edwards image (axlsign maps it to y = 0)
	}
	y := new(field.Element).Subtract(u, one)
	y.Multiply(y, den.Invert(den))
	copy(enc[:], y.Bytes())
	enc[31] |= signBit << 7
	p, err = new(edwards25519.Point).SetBytes(enc[:])
	if err != nil {
		return enc, nil, false // u is on the twist
	}
	if new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1 {
		return enc, nil, false // small order
	}
	return enc, p, true
}

// challenge returns SHA-512(R ‖ A ‖ M) mod L.
func challenge(encR, encA, message []byte) *edwards25519.Scalar {
	h := sha512.New()
	h.Write(encR)
	h.Write(encA)
	h.Write(message)
	var digest [sha512.Size]byte
	k, err := new(edwards25519.Scalar).SetUniformBytes(h.Sum(digest[:0]))
	if err != nil {
		panic("wavescrypto: " + err.Error()) // unreachable: 64-byte input
	}
	return k
}
