package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestBuildInfo: tokenbroker_build_info carries the build's version,
// revision and Go version, with the value 1 (issue 15, finding 4).
func TestBuildInfo(t *testing.T) {
	m := New()
	m.SetBuildInfo("v1.2.3", "0123456789abcdef", "go1.26.0")
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(w.Result().Body)
	want := `tokenbroker_build_info{goversion="go1.26.0",revision="0123456789abcdef",version="v1.2.3"} 1` + "\n"
	if !strings.Contains(string(body), want) {
		t.Errorf("/metrics lacks %q:\n%s", want, body)
	}
	if !strings.Contains(string(body), "# TYPE tokenbroker_build_info gauge") {
		t.Errorf("tokenbroker_build_info is not a gauge")
	}
}
