package providers

import (
	"errors"
	"fmt"
	"net/url"
)

// CheckEndpointURL checks a configured endpoint (token, authorize or
// redirect URL): absolute http(s) with a host, no credentials, no fragment.
func CheckEndpointURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return errors.New("not a valid URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("must be an absolute http or https URL, got scheme %q", u.Scheme)
	case u.Host == "":
		return errors.New("must be an absolute URL with a host")
	case u.User != nil:
		return errors.New("must not contain credentials")
	case u.Fragment != "":
		return errors.New("must not contain a fragment")
	}
	return nil
}

// CheckScope applies RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
func CheckScope(s string) error {
	if s == "" {
		return errors.New("empty scope")
	}
	for _, r := range s {
		if r < 0x21 || r > 0x7e || r == '"' || r == '\\' {
			return fmt.Errorf("scope %q contains a character RFC 6749 §3.3 does not allow", s)
		}
	}
	return nil
}
