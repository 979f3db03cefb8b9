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
