package wx

import (
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/providers/tokenhttp"
	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// Signature parts of the fuzzed tokens: no error may quote them.
const (
	fuzzAccessSig  = "fzAccessSig0a1b2c3d4e5f"
	fuzzRefreshSig = "fzRefreshSig9f8e7d6c5b4a"
	fuzzJWTHeader  = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9" // {"alg":"RS256","typ":"JWT"}
)

func fuzzJWT(payload []byte, sig string) string {
	return fuzzJWTHeader + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + sig
}

// FuzzDecode feeds decode, the WX expiry logic, with a fuzzed access token
// (a JWT built around a fuzzed payload, or fuzzed text), a fuzzed
// expires_in (read by tokenhttp.ParseExpiresIn first, as in a real
// response), a fuzzed refresh token payload and scope, and the timing of a
// password grant (lifetime > 0: the signed expiry) or a refresh (0).
//
// decode must not panic; an error wraps ErrInvalidResponse and quotes no
// token; a token expires after now, no later than the signed expiry (or the
// gateway's maximum for a refresh), no later than its JWT exp and no later
// than what expires_in says. jwtExp is checked on the way: ok and err are
// never both set, and an exp it reports is positive.
func FuzzDecode(f *testing.F) {
	type seed struct {
		access    string
		raw       string
		expiresIn string
		refresh   string
		scope     string
		elapsedMS uint32
		lifetimeS uint32
	}
	for _, s := range []seed{
		{`{"exp":1772368800}`, "", `1772368800`, `{"exp":1774960800}`, "general", 150, 604800},
		{`{"exp":1772368800}`, "", `604800`, ``, "", 150, 604800},
		{`{"exp":1772368800}`, "", ``, ``, "general general", 0, 0},
		{`{"exp":1772368800.5}`, "", `"3600"`, `{"exp":"soon"}`, "", 10, 3600},
		{`{"exp":"1772368800"}`, "", `3600`, ``, "", 10, 3600},
		{`{"exp":-1}`, "", `3600`, ``, "", 10, 3600},
		{`{"exp":1e300}`, "", `3600`, ``, "", 10, 3600},
		{`{"exp":9223372036854775807}`, "", ``, ``, "", 10, 0},
		{`{"exp":null}`, "", `null`, ``, "", 10, 0},
		{`{"sub":"x"}`, "", `1000000001`, ``, "", 10, 0},
		{`[]`, "", `0`, ``, "", 10, 60},
		{``, "opaque-token-without-dots", `3600`, ``, "", 10, 3600},
		{``, "a.%%%.c", `3600`, ``, "", 10, 3600},
		{``, "a.eyJleHAiOjF9.c", `3600`, ``, "", 10, 3600},
		{`{"exp":1772368800}`, "", `1772368860`, ``, "", 599000, 60},
		// An answer read 90 s after a 60 s expiry was signed: the signed
		// expiry has passed, though expires_in points just ahead.
		{`{}`, "", `100`, ``, "", 90000, 60},
	} {
		f.Add([]byte(s.access), s.raw, []byte(s.expiresIn), []byte(s.refresh), s.scope, s.elapsedMS, s.lifetimeS)
	}

	// now is a whole second plus a fraction, like a real clock.
	now := time.Date(2026, 3, 1, 12, 0, 0, 400_000_000, time.UTC)
	f.Fuzz(func(t *testing.T, access []byte, raw string, expiresIn []byte, refresh []byte, scope string, elapsedMS, lifetimeS uint32) {
		at := raw
		if at == "" {
			at = fuzzJWT(access, fuzzAccessSig)
		}
		var rt string
		if len(refresh) > 0 {
			rt = fuzzJWT(refresh, fuzzRefreshSig)
		}

		exp, jwtOK, jwtErr := jwtExp(at)
		switch {
		case jwtOK && jwtErr != nil:
			t.Fatalf("jwtExp() = ok and error %v", jwtErr)
		case jwtOK && exp.Unix() <= 0:
			t.Fatalf("jwtExp() = %v, ok; want a positive time", exp)
		case jwtErr != nil && strings.Contains(jwtErr.Error(), at):
			t.Fatalf("jwtExp() error quotes the token: %v", jwtErr)
		}

		// The timing of a real exchange: the expiry is signed, the request
		// sent, and the answer read at most 10 minutes later.
		elapsed := time.Duration(elapsedMS%600_000) * time.Millisecond
		sent := now.Add(-elapsed)
		var signed time.Time
		if lifetimeS > 0 {
			lifetime := time.Duration(lifetimeS) * time.Second
			lifetime = max(MinTokenLifetime, min(lifetime, MaxTokenLifetime))
			signed = time.Unix(sent.Add(lifetime).Unix(), 0)
		}
		n, present, err := tokenhttp.ParseExpiresIn(expiresIn)
		if err != nil {
			return // tokenhttp refuses the response before decode sees it
		}
		resp := &tokenhttp.Response{Sent: sent, Status: 200, AccessToken: secret.New(at),
			RefreshToken: secret.New(rt), TokenType: "bearer", Scope: scope}
		if present {
			resp.ExpiresIn = &n
		}

		p := &refresher{now: func() time.Time { return now }}
		tok, err := p.decode(resp, signed)
		if err != nil {
			if !errors.Is(err, providers.ErrInvalidResponse) {
				t.Fatalf("decode() error %q does not wrap ErrInvalidResponse", err)
			}
			for _, s := range []string{fuzzAccessSig, fuzzRefreshSig, at, rt} {
				if len(s) >= 8 && strings.Contains(err.Error(), s) {
					t.Fatalf("decode() error quotes a token: %q", err)
				}
			}
			return
		}

		if !tok.Expiry.After(now) {
			t.Errorf("expiry %v is not after now %v", tok.Expiry, now)
		}
		if !signed.IsZero() && tok.Expiry.After(signed) {
			t.Errorf("expiry %v is after the signed expiry %v", tok.Expiry, signed)
		}
		if signed.IsZero() && tok.Expiry.After(now.Add(MaxTokenLifetime+clockTolerance)) {
			t.Errorf("refresh: expiry %v is more than the gateway's maximum ahead", tok.Expiry)
		}
		if jwtOK && tok.Expiry.After(exp) {
			t.Errorf("expiry %v is after the JWT exp %v", tok.Expiry, exp)
		}
		if present {
			var said time.Time
			if n > absoluteThreshold {
				said = time.Unix(n, 0)
			} else {
				said = sent.Add(time.Duration(n) * time.Second)
			}
			if tok.Expiry.After(said) {
				t.Errorf("expiry %v is after what expires_in %d says, %v", tok.Expiry, n, said)
			}
		}
		if !present && !jwtOK {
			t.Errorf("a token with neither expires_in nor a JWT exp was accepted")
		}
		if tok.AccessToken.Reveal() != at || tok.Grant == nil || tok.Grant.RefreshToken.Reveal() != rt {
			t.Errorf("decode() changed the tokens")
		}
		if tok.TokenType == "" || len(tok.Scopes) == 0 || !slices.IsSorted(tok.Scopes) || len(slices.Compact(slices.Clone(tok.Scopes))) != len(tok.Scopes) {
			t.Errorf("decode() = type %q, scopes %q; want a type and sorted unique scopes", tok.TokenType, tok.Scopes)
		}
	})
}
