package sealed

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Config is the encryption section of the configuration file:
//
//	keys:
//	  - id: k2025
//	    secret: {file: /run/secrets/cache-key-2025}
//	  - id: k2026
//	    secret: {env: TOKENBROKER_CACHE_KEY_2026}
//	primary: k2026 # optional; default: the last key
//
// Each secret holds 32 random bytes as base64 (standard or URL alphabet,
// padded or not) or as 64 hex characters, e.g. from `openssl rand -base64 32`.
type Config struct {
	Keys []KeyConfig `yaml:"keys"`
	// Primary is the id of the key new values are sealed with; empty means
	// the last of Keys.
	Primary string `yaml:"primary"`
}

// KeyConfig names one key and where its material is read from.
type KeyConfig struct {
	// ID is stored in every value sealed with the key: 1 to 32 characters
	// of [A-Za-z0-9._-]. Never reuse an id for other material.
	ID     string     `yaml:"id"`
	Secret secret.Ref `yaml:"secret"`
}

// Validate reports every problem at once, each prefixed with its YAML path
// (keys[1].id: …). It reads no secret.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Keys) == 0 {
		errs = append(errs, errors.New("keys: at least one key is required"))
	}
	first := make(map[string]int, len(c.Keys))
	for i, k := range c.Keys {
		switch j, dup := first[k.ID]; {
		case k.ID == "":
			errs = append(errs, fmt.Errorf("keys[%d].id: required", i))
		case !validKeyID(k.ID):
			// Not quoted: a misplaced secret would land here.
			errs = append(errs, fmt.Errorf("keys[%d].id: %s", i, keyIDRule))
		case dup:
			errs = append(errs, fmt.Errorf("keys[%d].id: duplicate: %q is also keys[%d].id", i, k.ID, j))
		default:
			first[k.ID] = i
		}
		if err := k.Secret.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("keys[%d].secret: %w", i, err))
		}
	}
	if c.Primary != "" {
		if _, ok := first[c.Primary]; !ok {
			if validKeyID(c.Primary) {
				errs = append(errs, fmt.Errorf("primary: %q is not the id of a key in keys", c.Primary))
			} else {
				errs = append(errs, fmt.Errorf("primary: %s, and must be the id of a key in keys", keyIDRule))
			}
		}
	}
	return errors.Join(errs...)
}

// Load validates c, reads every key's material with loader and returns the
// keyring. It reports every problem at once; errors name the key's path,
// id and source (file or environment variable), never the material.
func (c *Config) Load(loader secret.Loader) (*Keyring, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var errs []error
	keys := make([]Key, 0, len(c.Keys))
	for i, k := range c.Keys {
		v, err := loader.Load(k.Secret)
		if err == nil {
			v, err = parseMaterial(v)
			if err != nil {
				err = fmt.Errorf("%s: %w", k.Secret.Source(), err)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("keys[%d].secret (key %q): %w", i, k.ID, err))
			continue
		}
		keys = append(keys, Key{ID: k.ID, Material: v})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return NewKeyring(keys, c.Primary)
}

// parseMaterial decodes KeySize bytes written as 64 hex characters or as
// base64. Its errors give lengths only.
func parseMaterial(v secret.Value) (secret.Value, error) {
	s := strings.TrimSpace(v.Reveal())
	// Hex first: 64 hex characters are also valid base64, of 48 bytes.
	if b, err := hex.DecodeString(s); err == nil {
		if len(b) != KeySize {
			return secret.Value{}, fmt.Errorf("%d hex characters; want %d (or base64 of %d bytes)", len(s), 2*KeySize, KeySize)
		}
		return secret.New(string(b)), nil
	}
	for _, enc := range []*base64.Encoding{
		base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding,
	} {
		b, err := enc.DecodeString(s)
		if err != nil {
			continue
		}
		if len(b) != KeySize {
			return secret.Value{}, fmt.Errorf("%d characters of base64 decode to %d bytes; want %d", len(s), len(b), KeySize)
		}
		return secret.New(string(b)), nil
	}
	return secret.Value{}, fmt.Errorf("%d characters that are neither base64 nor hex; want %d bytes as base64 or hex",
		len(s), KeySize)
}
