package config

import (
	"strings"
	"testing"
)

// TestCallbackAddr: listen.callback defaults to :8081 only when an
// authorization-code connection needs it; "off" turns it off; an address
// is checked.
func TestCallbackAddr(t *testing.T) {
	for _, tc := range []struct {
		set    string
		needed bool
		want   string
	}{
		{"", true, DefaultCallbackAddr},
		{"", false, ""},
		{"off", true, ""},
		{"127.0.0.1:9000", false, "127.0.0.1:9000"},
		{":8443", true, ":8443"},
	} {
		if got := (Listen{Callback: tc.set}).CallbackAddr(tc.needed); got != tc.want {
			t.Errorf("listen.callback %q, needed %v: CallbackAddr = %q; want %q", tc.set, tc.needed, got, tc.want)
		}
	}
	const conn = "\nconnections: [{name: a, type: fake, token_url: 'https://a.example/t'}]\n"
	for _, ok := range []string{"off", ":8081", "0.0.0.0:8081"} {
		if _, err := Parse([]byte("listen: {callback: '"+ok+"'}"+conn), registry()); err != nil {
			t.Errorf("listen.callback %q: %v", ok, err)
		}
	}
	_, err := Parse([]byte("listen: {callback: 'on'}"+conn), registry())
	if err == nil || !strings.Contains(err.Error(), `listen.callback: invalid address "on"`) {
		t.Errorf("listen.callback on: err = %v; want an invalid address", err)
	}
}
