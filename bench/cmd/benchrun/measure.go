package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tokenbrokerv1 "github.com/tokenbroker/tokenbroker/api/proto/tokenbroker/v1"
	"github.com/tokenbroker/tokenbroker/bench/internal/heapcheck"
	"github.com/tokenbroker/tokenbroker/bench/internal/hist"
	"github.com/tokenbroker/tokenbroker/internal/emulator/ccemu"
)

// emulator is the client_credentials upstream of connection bench-cc,
// served by this process so that the raw upstream call can be timed.
type emulator struct {
	srv                    *http.Server
	tokenURL               string
	clientID, clientSecret string
}

func startEmulator() (*emulator, error) {
	sec := make([]byte, 24)
	_, _ = rand.Read(sec)
	e := &emulator{clientID: "bench-client", clientSecret: base64.RawURLEncoding.EncodeToString(sec)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.srv = &http.Server{Handler: ccemu.New(ccemu.Options{ClientID: e.clientID, ClientSecret: e.clientSecret}),
		ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = e.srv.Serve(lis) }()
	e.tokenURL = "http://" + lis.Addr().String() + ccemu.TokenPath
	return e, nil
}

func (e *emulator) Close() { _ = e.srv.Close() }

// post is the raw upstream call: what the provider sends (HTTP Basic with
// form-encoded credentials, grant_type and scope), on a kept-alive
// connection.
func (e *emulator) post(ctx context.Context, c *http.Client) error {
	body := "grant_type=client_credentials&scope=read"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.tokenURL, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(e.clientID), url.QueryEscape(e.clientSecret))
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(data), "access_token") {
		return fmt.Errorf("emulator answered %d: %.200s", resp.StatusCode, data)
	}
	return nil
}

// measureLoad is one load run of ts (interleaved when there are several);
// for broker-redis it also counts the Redis commands and GetToken outcomes
// in the same window (only broker-redis talks to that redis-server).
func measureLoad(ctx context.Context, bins *binaries, cpus string, ts []*target, l loadSpec) ([]*LoadResult, error) {
	var rt *target
	for _, t := range ts {
		if t.redis != nil {
			rt = t
		}
	}
	var before map[string]int64
	var outcomes0 map[string]int64
	if rt != nil {
		var err error
		if outcomes0, err = scrapeOutcomes(ctx, rt.admin); err != nil {
			return nil, err
		}
		if before, err = rt.redis.commandStats(ctx); err != nil {
			return nil, err
		}
	}
	rs, err := loadRun(ctx, bins, cpus, ts, l)
	if err != nil {
		return nil, err
	}
	if rt != nil {
		after, err := rt.redis.commandStats(ctx)
		if err != nil {
			return nil, err
		}
		outcomes1, err := scrapeOutcomes(ctx, rt.admin)
		if err != nil {
			return nil, err
		}
		u := &RedisUse{Commands: map[string]int64{}}
		for name, n := range after {
			if d := n - before[name]; d > 0 {
				u.Commands[name] = d
			}
		}
		// The first INFO is counted in the second one's numbers.
		if u.Commands["info"]--; u.Commands["info"] <= 0 {
			delete(u.Commands, "info")
		}
		u.L1Hits = outcomes1["l1_hit"] - outcomes0["l1_hit"]
		u.SharedHits = outcomes1["shared_hit"] - outcomes0["shared_hit"]
		u.Fetched = outcomes1["fetched"] - outcomes0["fetched"]
		for i, t := range ts {
			if t == rt {
				rs[i].Redis = u
			}
		}
	}
	return rs, nil
}

// scrapeOutcomes reads tokenbroker_get_token_total for connection demo-cc
// from the broker's /metrics, by outcome.
func scrapeOutcomes(ctx context.Context, admin string) (map[string]int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s/metrics: %w", admin, err)
	}
	defer resp.Body.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "tokenbroker_get_token_total{") || !strings.Contains(line, `connection="demo-cc"`) {
			continue
		}
		i := strings.Index(line, `outcome="`)
		j := strings.LastIndexByte(line, ' ')
		if i < 0 || j < 0 {
			continue
		}
		outcome, _, _ := strings.Cut(line[i+len(`outcome="`):], `"`)
		v, err := strconv.ParseFloat(line[j+1:], 64)
		if err == nil {
			out[outcome] = int64(v)
		}
	}
	return out, sc.Err()
}

// ColdMiss compares GetToken with force_refresh (which always goes to the
// upstream) with the raw upstream call, both timed from this process, one
// call at a time, alternating.
type ColdMiss struct {
	Target      string  `json:"target"`
	Samples     int     `json:"samples"`
	BrokerP50US float64 `json:"broker_p50_us"`
	BrokerP90US float64 `json:"broker_p90_us"`
	BrokerMean  float64 `json:"broker_mean_us"`
	RawP50US    float64 `json:"raw_p50_us"`
	RawP90US    float64 `json:"raw_p90_us"`
	RawMean     float64 `json:"raw_mean_us"`
	// OverheadP50US is BrokerP50US - RawP50US.
	OverheadP50US  float64 `json:"overhead_p50_us"`
	OverheadMeanUS float64 `json:"overhead_mean_us"`
}

func measureColdMiss(ctx context.Context, t *target, emu *emulator, n int) (*ColdMiss, error) {
	cc, err := grpc.NewClient(t.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	client := tokenbrokerv1.NewTokenBrokerServiceClient(cc)
	httpc := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone(), Timeout: 10 * time.Second}
	defer httpc.CloseIdleConnections()
	req := &tokenbrokerv1.GetTokenRequest{Connection: "bench-cc", Scopes: []string{"read"}, ForceRefresh: true}
	var brokerH, rawH hist.Histogram
	const warm = 10
	for i := range n + warm {
		start := time.Now()
		if err := emu.post(ctx, httpc); err != nil {
			return nil, fmt.Errorf("raw upstream call: %w", err)
		}
		raw := time.Since(start)
		start = time.Now()
		if _, err := client.GetToken(ctx, req); err != nil {
			return nil, fmt.Errorf("GetToken force_refresh: %w", err)
		}
		brk := time.Since(start)
		if i >= warm {
			rawH.Record(int64(raw))
			brokerH.Record(int64(brk))
		}
	}
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	c := &ColdMiss{Target: t.name, Samples: n,
		BrokerP50US: us(brokerH.Quantile(0.5)), BrokerP90US: us(brokerH.Quantile(0.9)), BrokerMean: brokerH.Mean() / 1e3,
		RawP50US: us(rawH.Quantile(0.5)), RawP90US: us(rawH.Quantile(0.9)), RawMean: rawH.Mean() / 1e3}
	c.OverheadP50US = c.BrokerP50US - c.RawP50US
	c.OverheadMeanUS = c.BrokerMean - c.RawMean
	return c, nil
}

var heapTargets = []heapcheck.Shared{heapcheck.InProcess, heapcheck.Remote}

func measureHeap(ctx context.Context, n int, shared heapcheck.Shared) (heapcheck.Result, error) {
	return heapcheck.Measure(ctx, n, shared)
}
