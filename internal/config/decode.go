package config

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// decodeStrict decodes node into the struct v points to, field by field, so
// that every unknown key and every malformed value is reported with its path
// instead of stopping at the first. Field names come from `yaml` tags.
// skip names keys that the caller handles itself.
func decodeStrict(node *yaml.Node, v any, path string, skip ...string) []error {
	return decodeValue(node, reflect.ValueOf(v).Elem(), path, skip)
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

func decodeValue(node *yaml.Node, v reflect.Value, path string, skip []string) []error {
	if node.Kind == yaml.DocumentNode && len(node.Content) == 1 {
		node = node.Content[0]
	}
	if node.Kind == yaml.AliasNode {
		node = node.Alias
	}
	if node.Tag == "!!null" {
		return nil
	}
	// Types that decode themselves (durations, …) and plain scalars.
	if reflect.PointerTo(v.Type()).Implements(unmarshalerType) || isScalar(v.Kind()) {
		if err := node.Decode(v.Addr().Interface()); err != nil {
			return []error{fmt.Errorf("%s: %s", path, cleanYAMLError(err))}
		}
		return nil
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return decodeValue(node, v.Elem(), path, skip)
	case reflect.Struct:
		if node.Kind != yaml.MappingNode {
			return []error{fmt.Errorf("%s: must be a mapping", path)}
		}
		return decodeStruct(node, v, path, skip)
	case reflect.Slice:
		if node.Kind != yaml.SequenceNode {
			return []error{fmt.Errorf("%s: must be a list", path)}
		}
		s := reflect.MakeSlice(v.Type(), len(node.Content), len(node.Content))
		var errs []error
		for i, item := range node.Content {
			errs = append(errs, decodeValue(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i), nil)...)
		}
		v.Set(s)
		return errs
	case reflect.Map:
		if node.Kind != yaml.MappingNode {
			return []error{fmt.Errorf("%s: must be a mapping", path)}
		}
		if v.Type().Key().Kind() != reflect.String {
			return []error{fmt.Errorf("%s: unsupported map key type", path)}
		}
		m := reflect.MakeMap(v.Type())
		var errs []error
		for i := 0; i+1 < len(node.Content); i += 2 {
			k := node.Content[i].Value
			ev := reflect.New(v.Type().Elem()).Elem()
			errs = append(errs, decodeValue(node.Content[i+1], ev, join(path, k), nil)...)
			m.SetMapIndex(reflect.ValueOf(k).Convert(v.Type().Key()), ev)
		}
		v.Set(m)
		return errs
	}
	return []error{fmt.Errorf("%s: unsupported setting type %s", path, v.Type())}
}

func decodeStruct(node *yaml.Node, v reflect.Value, path string, skip []string) []error {
	fields := map[string]reflect.Value{}
	collectFields(v, fields)
	var errs []error
	seen := map[string]bool{}
	for i := 0; i+1 < len(node.Content); i += 2 {
		key := node.Content[i].Value
		if slices.Contains(skip, key) {
			continue
		}
		p := join(path, key)
		if seen[key] {
			errs = append(errs, fmt.Errorf("%s: set twice", p))
			continue
		}
		seen[key] = true
		f, ok := fields[key]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: unknown setting (known: %s)", p, strings.Join(sortedKeys(fields), ", ")))
			continue
		}
		errs = append(errs, decodeValue(node.Content[i+1], f, p, nil)...)
	}
	return errs
}

func collectFields(v reflect.Value, into map[string]reflect.Value) {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		tag := sf.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") && sf.Type.Kind() == reflect.Struct {
			collectFields(v.Field(i), into)
			continue
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		into[name] = v.Field(i)
	}
}

func isScalar(k reflect.Kind) bool {
	switch k {
	case reflect.Bool, reflect.String, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

func cleanYAMLError(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return strings.Join(te.Errors, "; ")
	}
	return err.Error()
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func sortedKeys(m map[string]reflect.Value) []string {
	return slices.Sorted(maps.Keys(m))
}
