// Package secret keeps credentials out of logs, errors and dumps.
//
// A Value prints as a redaction with every fmt verb, in JSON and in log/slog;
// only Reveal returns the text. A Ref names where a secret comes from (a file
// or an environment variable) so that configuration files never hold one.
package secret

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// Redacted is what a Value prints as.
const Redacted = "[REDACTED]"

// A Value is a secret string. Its zero value is the empty secret.
// Keep Values in exported fields or pass them directly: fmt only calls a
// Formatter on values it can reach through exported fields.
type Value struct{ s string }

// New wraps s.
func New(s string) Value { return Value{s: s} }

// Reveal returns the secret text. Call it only where the text is sent to the
// party it is meant for.
func (v Value) Reveal() string { return v.s }

// IsZero reports whether the secret is empty.
func (v Value) IsZero() bool { return v.s == "" }

// Equal reports whether two secrets hold the same text.
func (v Value) Equal(o Value) bool { return v.s == o.s }

func (v Value) String() string             { return Redacted }
func (v Value) GoString() string           { return Redacted }
func (v Value) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(Redacted)) }
func (v Value) LogValue() slog.Value       { return slog.StringValue(Redacted) }
func (v Value) MarshalJSON() ([]byte, error) {
	return []byte(`"` + Redacted + `"`), nil
}
func (v Value) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

// A Ref says where a secret is read from: exactly one of File or Env.
type Ref struct {
	// File is a path whose contents, less one trailing newline, are the secret.
	File string `yaml:"file"`
	// Env is the name of an environment variable holding the secret.
	Env string `yaml:"env"`
}

// IsZero reports whether the reference names no source.
func (r Ref) IsZero() bool { return r.File == "" && r.Env == "" }

// Validate checks that exactly one source is named. It reads nothing.
func (r Ref) Validate() error {
	switch {
	case r.File == "" && r.Env == "":
		return errors.New("one of file or env is required")
	case r.File != "" && r.Env != "":
		return errors.New("file and env are mutually exclusive")
	}
	return nil
}

// Source describes the reference for messages: never the secret itself.
func (r Ref) Source() string {
	if r.File != "" {
		return "file " + r.File
	}
	return "environment variable " + r.Env
}

// Loader reads referenced secrets. The zero Loader uses the process
// environment and file system.
type Loader struct {
	LookupEnv func(string) (string, bool)
	ReadFile  func(string) ([]byte, error)
}

// ErrEmpty is returned when a referenced secret is empty.
var ErrEmpty = errors.New("secret is empty")

// Load reads the secret r names. Errors name the source, never its contents.
func (l Loader) Load(r Ref) (Value, error) {
	if err := r.Validate(); err != nil {
		return Value{}, err
	}
	var s string
	if r.File != "" {
		read := l.ReadFile
		if read == nil {
			read = os.ReadFile
		}
		b, err := read(r.File)
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err // the path is already in our message
			}
			return Value{}, fmt.Errorf("read %s: %w", r.Source(), err)
		}
		s = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	} else {
		lookup := l.LookupEnv
		if lookup == nil {
			lookup = os.LookupEnv
		}
		v, ok := lookup(r.Env)
		if !ok {
			return Value{}, fmt.Errorf("%s is not set", r.Source())
		}
		s = v
	}
	if s == "" {
		return Value{}, fmt.Errorf("%s: %w", r.Source(), ErrEmpty)
	}
	return Value{s: s}, nil
}
