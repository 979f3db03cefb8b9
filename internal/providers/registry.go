package providers

import (
	"fmt"
	"sort"
)

// A Registry maps provider type names to factories of their Config.
// Build it once at start-up; it is not safe for concurrent registration.
type Registry struct {
	factories map[string]func() Config
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{factories: make(map[string]func() Config)}
}

// MustRegister adds a provider type. It panics on an empty name, a nil
// factory or a duplicate: all three are programmer errors.
func (r *Registry) MustRegister(name string, newConfig func() Config) {
	if name == "" || newConfig == nil {
		panic("providers: MustRegister with empty name or nil factory")
	}
	if _, dup := r.factories[name]; dup {
		panic("providers: MustRegister called twice for " + name)
	}
	r.factories[name] = newConfig
}

// NewConfig returns a fresh, zero Config for the type, or an error wrapping
// ErrUnknownType that lists the known types.
func (r *Registry) NewConfig(name string) (Config, error) {
	f, ok := r.factories[name]
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %v)", ErrUnknownType, name, r.Types())
	}
	return f(), nil
}

// Types returns the registered type names, sorted.
func (r *Registry) Types() []string {
	names := make([]string, 0, len(r.factories))
	for n := range r.factories {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
