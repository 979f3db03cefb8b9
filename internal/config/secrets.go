package config

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

var refType = reflect.TypeFor[secret.Ref]()

// CheckSecrets tries to read every secret the configuration references,
// wherever it sits, and reports each one that cannot be read with its path.
// It lets a configuration with other problems still report its unreadable
// secrets in the same run. Errors name the source, never a secret.
func CheckSecrets(c *Config, loader secret.Loader) []error {
	errs := CheckServiceSecrets(c, loader)
	for i, conn := range c.Connections {
		if conn.Provider != nil {
			walkRefs(reflect.ValueOf(conn.Provider).Elem(), fmt.Sprintf("connections[%d]", i), func(path string, r secret.Ref) {
				if r.IsZero() {
					return
				}
				if _, err := loader.Load(r); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", path, err))
				}
			})
		}
	}
	return errs
}

// CheckServiceSecrets is CheckSecrets for the service's own settings (cache,
// encryption, tracing, ...), leaving out the connections' secrets, which
// opening the providers reads.
func CheckServiceSecrets(c *Config, loader secret.Loader) []error {
	var errs []error
	walkRefs(reflect.ValueOf(c).Elem(), "", func(path string, r secret.Ref) {
		if r.IsZero() {
			return
		}
		if _, err := loader.Load(r); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	})
	return errs
}

// CheckSecretPermissions reports every secret file the configuration names
// (secret references, and the private keys of tls and cache.redis.tls) that
// is readable by more people than need it (secret.CheckPermissions), each
// with its path. The broker logs them as warnings, or refuses to start with
// secrets.strict_permissions. Files that cannot be read are left to
// CheckSecrets.
func CheckSecretPermissions(c *Config) []error {
	var errs []error
	check := func(path, file string) {
		if file == "" {
			return
		}
		if err := secret.CheckPermissions(file); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	visit := func(path string, r secret.Ref) { check(path, r.File) }
	walkRefs(reflect.ValueOf(c).Elem(), "", visit)
	for i, conn := range c.Connections {
		if conn.Provider != nil {
			walkRefs(reflect.ValueOf(conn.Provider).Elem(), fmt.Sprintf("connections[%d]", i), visit)
		}
	}
	check("tls.key_file", c.TLS.KeyFile)
	if c.Cache.Type == "redis" && c.Cache.Redis.TLS.Enabled {
		check("cache.redis.tls.key_file", c.Cache.Redis.TLS.KeyFile)
	}
	return errs
}

func walkRefs(v reflect.Value, path string, fn func(string, secret.Ref)) {
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == refType {
			fn(path, v.Interface().(secret.Ref))
			return
		}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" {
				continue
			}
			p := path
			if !strings.Contains(opts, "inline") {
				if name == "" {
					name = strings.ToLower(f.Name)
				}
				p = join(path, name)
			}
			walkRefs(v.Field(i), p, fn)
		}
	case reflect.Slice:
		for i := range v.Len() {
			walkRefs(v.Index(i), fmt.Sprintf("%s[%d]", path, i), fn)
		}
	case reflect.Pointer:
		if !v.IsNil() {
			walkRefs(v.Elem(), path, fn)
		}
	}
}
