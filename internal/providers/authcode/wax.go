package authcode

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/tokenbroker/tokenbroker/internal/providers"
)

// WAX All Access endpoints (PROTOCOLS.md §2).
const (
	WAXProductionAuthorizeURL = "https://oauth.opskins.com/v1/authorize"
	WAXProductionTokenURL     = "https://oauth.opskins.com/v1/access_token"
	WAXSandboxAuthorizeURL    = "https://oauth.wax-sandbox.com/v1/authorize"
	WAXSandboxTokenURL        = "https://oauth.wax-sandbox.com/v1/access_token"
	// The revocation endpoints are not in the WAX page in specs/; public
	// WAX clients use them (PROTOCOLS.md §2), with WAX's own form.
	WAXProductionRevocationURL = "https://oauth.opskins.com/v1/revoke_token"
	WAXSandboxRevocationURL    = "https://oauth.wax-sandbox.com/v1/revoke_token"
)

// waxRevokeForm is WAX's revocation request, not RFC 7009's.
func waxRevokeForm(rt string) url.Values {
	return url.Values{"token_type": {"refresh"}, "token": {rt}}
}

// Values of WAXConfig.Environment and WAXConfig.Duration.
const (
	WAXProduction = "production"
	WAXSandbox    = "sandbox"
	// WAXPermanent asks for a refresh token (duration=permanent).
	WAXPermanent = "permanent"
	// WAXTemporary sends no duration: the grant ends with its first token,
	// after 30 minutes, and a person must authorize again.
	WAXTemporary = "temporary"
)

// WAXDefaultScope is asked for when no scopes are configured.
const WAXDefaultScope = "identity_basic"

// WAXConfig is one WAX All Access connection (type wax). It has the settings
// of Config, with these differences:
//
//   - authorize_url and token_url default to the environment's endpoints
//     (set them only to point at an emulator or a proxy);
//   - revocation_url defaults to the environment's /v1/revoke_token when
//     token_url is not set (pointing token_url elsewhere drops the default,
//     so a grant from an emulator is never sent to the real WAX), and the
//     revocation request is WAX's token_type=refresh&token=<refresh token>
//     rather than RFC 7009's token_type_hint;
//   - basic_encoding defaults to raw, as WAX clients send it;
//   - scopes default to identity_basic;
//   - redirect_url is informational: WAX fixes the redirect URI at client
//     registration, so no redirect_uri parameter is ever sent;
//   - client_authentication cannot be none: WAX's way for a client without
//     a secret is device_secret;
//   - duration and redirect_uri cannot be set in extra_authorize_params
//     (mobile: "1" can).
type WAXConfig struct {
	// Environment is "production" (the default) or "sandbox".
	Environment string `yaml:"environment"`
	// Duration is "permanent" (the default: a refresh token is issued) or
	// "temporary" (none: a person authorizes again every 30 minutes).
	Duration string `yaml:"duration"`
	Config   `yaml:",inline"`
}

var _ providers.Config = (*WAXConfig)(nil)

// Validate reports every problem at once, each prefixed with its YAML key.
// It reads no files and dials nothing.
func (c *WAXConfig) Validate() error {
	g, f, errs := c.resolve()
	return errors.Join(append(errs, g.problems(f)...)...)
}

// Open validates the configuration, applies the WAX defaults, reads the
// client secret through env.Secrets and returns the provider.
func (c *WAXConfig) Open(env providers.Env) (providers.Provider, error) {
	g, f, errs := c.resolve()
	if len(errs) > 0 {
		return nil, errors.Join(append(errs, g.problems(f)...)...)
	}
	return g.open(env, f)
}

// resolve returns the generic configuration and flavor c stands for, and the
// problems with the WAX-only settings.
func (c *WAXConfig) resolve() (Config, flavor, []error) {
	var errs []error
	g := c.Config
	authorize, token, revocation := WAXProductionAuthorizeURL, WAXProductionTokenURL, WAXProductionRevocationURL
	switch c.Environment {
	case "", WAXProduction:
	case WAXSandbox:
		authorize, token, revocation = WAXSandboxAuthorizeURL, WAXSandboxTokenURL, WAXSandboxRevocationURL
	default:
		errs = append(errs, fmt.Errorf("environment: must be %q or %q, got %q", WAXProduction, WAXSandbox, c.Environment))
	}
	if g.AuthorizeURL == "" {
		g.AuthorizeURL = authorize
	}
	if g.TokenURL == "" {
		g.TokenURL = token
		if g.RevocationURL == "" {
			g.RevocationURL = revocation
		}
	}
	if len(g.Scopes) == 0 {
		g.Scopes = []string{WAXDefaultScope}
	}
	f := flavor{
		name:            "wax",
		defaultEncoding: BasicRaw,
		reserved:        []string{"client_id", "response_type", "state", "scope", "redirect_uri", "duration", "code_challenge", "code_challenge_method"},
		details:         map[string]string{},
		noPKCE:          true,
		noPublic:        true,
		revokeForm:      waxRevokeForm,
	}
	if c.AuthorizeURL == "" && c.TokenURL == "" {
		// With either overridden, the environment says nothing true.
		f.details["environment"] = WAXProduction
		if c.Environment != "" {
			f.details["environment"] = c.Environment
		}
	}
	switch c.Duration {
	case "", WAXPermanent:
		f.authorizeParams = map[string]string{"duration": WAXPermanent}
		f.details["duration"] = WAXPermanent
	case WAXTemporary:
		f.details["duration"] = WAXTemporary
	default:
		errs = append(errs, fmt.Errorf("duration: must be %q or %q, got %q", WAXPermanent, WAXTemporary, c.Duration))
	}
	return g, f, errs
}
