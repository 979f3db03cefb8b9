package providers

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
)

// CheckEndpointURL checks a configured endpoint (token, authorize or
// redirect URL): absolute https with a host (http only to a loopback host),
// no credentials, no fragment.
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
	case u.Scheme == "http" && !loopbackHost(u.Hostname()):
		// RFC 6749 §3.1, §3.2: these requests carry client credentials,
		// codes and tokens. Plain http only stays on the machine.
		return fmt.Errorf("must be https: plain http is allowed only to a loopback host (127.0.0.1, ::1, localhost), got host %q", u.Hostname())
	}
	return nil
}

func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
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

// MaxTokenTypeBytes is the longest token type accepted, configured or sent.
const MaxTokenTypeBytes = 64

// CheckTokenType checks a token type (RFC 6749 §5.1 token_type, or a
// configured default for one): a type-name of RFC 6749 §11.1,
// 1*( ALPHA / DIGIT / "-" / "." / "_" ), such as "Bearer", "bearer" or
// "DPoP", at most MaxTokenTypeBytes long. Callers put it in an
// Authorization header as the scheme, so nothing else may pass. The error
// does not quote s: it may come from an upstream.
func CheckTokenType(s string) error {
	switch {
	case s == "":
		return errors.New("empty token type")
	case len(s) > MaxTokenTypeBytes:
		return fmt.Errorf("token type longer than %d bytes", MaxTokenTypeBytes)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '-' && c != '.' && c != '_' {
			return fmt.Errorf("token type has a character RFC 6749 §11.1 does not allow (A-Z a-z 0-9 - . _) at byte %d", i)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
