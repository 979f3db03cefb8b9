package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// A Toxiproxy is an embedded Toxiproxy server (github.com/Shopify/toxiproxy/v2)
// whose proxies listen on loopback, for putting faults between the brokers
// and Redis or an upstream: latency, timeout (black hole), bandwidth,
// slow_close, reset_peer, limit_data.
type Toxiproxy struct {
	t   testing.TB
	srv *toxiproxy.ApiServer
}

// StartToxiproxy makes an embedded Toxiproxy server. Its proxies stop when t
// ends. It serves no HTTP API: tests drive it through Proxy.
func StartToxiproxy(t testing.TB) *Toxiproxy {
	return &Toxiproxy{t: t, srv: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())}
}

// A Proxy forwards TCP connections from Addr to its upstream, through the
// toxics added to it.
type Proxy struct {
	t     testing.TB
	p     *toxiproxy.Proxy
	count atomic.Int64
}

// Proxy starts a proxy named name on a free loopback port in front of
// upstream (host:port).
func (x *Toxiproxy) Proxy(name, upstream string) *Proxy {
	x.t.Helper()
	p := toxiproxy.NewProxy(x.srv, name, "127.0.0.1:0", upstream)
	if err := x.srv.Collection.Add(p, true); err != nil {
		x.t.Fatalf("toxiproxy: proxy %s: %v", name, err)
	}
	x.t.Cleanup(p.Stop)
	return &Proxy{t: x.t, p: p}
}

// Addr is the proxy's listen address (host:port).
func (p *Proxy) Addr() string { return p.p.Listen }

// A Toxic is one toxic to add: Type such as "latency", its Attributes
// (Toxiproxy's names: latency, jitter, timeout, rate, delay, …), and the
// Stream it acts on, "downstream" (server to client, the default) or
// "upstream".
type Toxic struct {
	Type       string
	Stream     string
	Attributes map[string]any
}

func (tx Toxic) String() string {
	var b strings.Builder
	b.WriteString(tx.Type)
	for _, k := range slices.Sorted(maps.Keys(tx.Attributes)) {
		fmt.Fprintf(&b, " %s=%v", k, tx.Attributes[k])
	}
	return b.String()
}

// Add adds tx to the proxy and returns its name, for Remove. Established
// connections get it too.
func (p *Proxy) Add(tx Toxic) string {
	p.t.Helper()
	stream := tx.Stream
	if stream == "" {
		stream = "downstream"
	}
	name := fmt.Sprintf("%s_%s_%d", tx.Type, stream, p.count.Add(1))
	body, err := json.Marshal(map[string]any{
		"name": name, "type": tx.Type, "stream": stream, "toxicity": 1.0, "attributes": tx.Attributes,
	})
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.p.Toxics.AddToxicJson(bytes.NewReader(body)); err != nil {
		p.t.Fatalf("toxiproxy: add %s to %s: %v", tx, p.p.Name, err)
	}
	return name
}

// Remove removes the toxic name. Some toxics (timeout) close the
// connections they held when removed, as Toxiproxy does.
func (p *Proxy) Remove(name string) {
	p.t.Helper()
	if err := p.p.Toxics.RemoveToxic(p.t.Context(), name); err != nil {
		p.t.Fatalf("toxiproxy: remove %s from %s: %v", name, p.p.Name, err)
	}
}
