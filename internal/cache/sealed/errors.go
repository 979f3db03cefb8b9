package sealed

import "errors"

var (
	// ErrDecrypt: a stored value cannot be decrypted. It was written under
	// another storage key (moved or copied), names a key id the keyring does
	// not hold, was written with different key material under the same id,
	// was tampered with or truncated, or is not a sealed value at all (say,
	// written before encryption was turned on). Callers treat it as a miss
	// for a cached token and as an error for a grant.
	ErrDecrypt = errors.New("sealed: stored value cannot be decrypted")
)
