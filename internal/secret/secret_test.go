package secret

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValueNeverPrints(t *testing.T) {
	const text = "hunter2-very-secret"
	v := New(text)
	type wrapper struct{ Token Value }
	outs := []string{
		fmt.Sprint(v), fmt.Sprintf("%v %s %q %x %+v %#v %d", v, v, v, v, v, v, v),
		fmt.Sprintf("%+v %#v", wrapper{v}, &wrapper{v}),
	}
	b, _ := json.Marshal(wrapper{v})
	outs = append(outs, string(b))
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "v", v, "w", wrapper{v})
	outs = append(outs, buf.String())
	for _, o := range outs {
		if strings.Contains(o, text) {
			t.Errorf("output %d leaks the secret", len(o))
		}
	}
	if v.Reveal() != text {
		t.Error("Reveal() did not return the secret")
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "s")
	if err := os.WriteFile(good, []byte("a+b%c:d!e^f= g\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l := Loader{LookupEnv: func(k string) (string, bool) {
		if k == "SET" {
			return "from-env", true
		}
		return "", false
	}}
	tests := []struct {
		name    string
		ref     Ref
		want    string
		wantErr string
	}{
		{"file", Ref{File: good}, "a+b%c:d!e^f= g", ""},
		{"env", Ref{Env: "SET"}, "from-env", ""},
		{"missing file", Ref{File: filepath.Join(dir, "nope")}, "", "no such file"},
		{"empty file", Ref{File: empty}, "", "secret is empty"},
		{"unset env", Ref{Env: "UNSET"}, "", "UNSET is not set"},
		{"none", Ref{}, "", "one of file or env is required"},
		{"both", Ref{File: good, Env: "SET"}, "", "mutually exclusive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := l.Load(tt.ref)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Load() error = %v; want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load() error = %v", err)
			}
			if got.Reveal() != tt.want {
				t.Errorf("Load() returned the wrong secret")
			}
		})
	}
}
