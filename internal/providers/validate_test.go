package providers_test

import (
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/providers"
)

func TestCheckEndpointURL(t *testing.T) {
	for _, ok := range []string{
		"https://auth.example/o/token/",
		"https://auth.example:8443/token?tenant=a",
		"http://127.0.0.1:8080/o/token/",
		"http://127.8.9.10/token",
		"http://[::1]:9091/oauth2/callback",
		"http://localhost:9091/oauth2/callback",
		"http://LOCALHOST/token",
	} {
		if err := providers.CheckEndpointURL(ok); err != nil {
			t.Errorf("CheckEndpointURL(%q) = %v; want nil", ok, err)
		}
	}
	for raw, want := range map[string]string{
		"http://auth.example/o/token/":    `must be https: plain http is allowed only to a loopback host (127.0.0.1, ::1, localhost), got host "auth.example"`,
		"http://10.0.0.7:8080/token":      `got host "10.0.0.7"`,
		"http://localhost.evil.example/t": `got host "localhost.evil.example"`,
		"http://[::ffff:10.0.0.1]/t":      `got host "::ffff:10.0.0.1"`,
		"ftp://auth.example/token":        `must be an absolute http or https URL, got scheme "ftp"`,
		"https:///token":                  "must be an absolute URL with a host",
		"https://user:pw@auth.example/t":  "must not contain credentials",
		"https://auth.example/t#fragment": "must not contain a fragment",
		"/o/token/":                       `got scheme ""`,
	} {
		err := providers.CheckEndpointURL(raw)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckEndpointURL(%q) = %v; want an error containing %q", raw, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "pw") {
			t.Errorf("CheckEndpointURL(%q) error %q repeats the password", raw, err)
		}
	}
}

func TestCheckTokenType(t *testing.T) {
	for _, ok := range []string{"Bearer", "bearer", "DPoP", "N_A", "mac-1.0", strings.Repeat("a", providers.MaxTokenTypeBytes)} {
		if err := providers.CheckTokenType(ok); err != nil {
			t.Errorf("CheckTokenType(%q) = %v; want nil", ok, err)
		}
	}
	for s, want := range map[string]string{
		"":                      "empty token type",
		"Bearer x":              "RFC 6749 §11.1 does not allow (A-Z a-z 0-9 - . _) at byte 6",
		"Bearer\r\nX-A: 1":      "does not allow",
		"Bearer:":               "does not allow",
		"B\u00e9arer":           "does not allow",
		"Bearer\x00":            "does not allow",
		strings.Repeat("a", 65): "token type longer than 64 bytes",
	} {
		err := providers.CheckTokenType(s)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckTokenType(%q) = %v; want an error containing %q", s, err, want)
		}
	}
}
