package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// GhzResult is a cross-check run of ghz against one target.
type GhzResult struct {
	Target      string  `json:"target"`
	Concurrency int     `json:"concurrency"`
	RPS         float64 `json:"rps"`
	P50US       float64 `json:"p50_us"`
	P99US       float64 `json:"p99_us"`
	Count       int64   `json:"count"`
	Errors      int64   `json:"errors"`
}

// runGhz drives t with ghz for d at concurrency c over conns connections,
// pinned like the load generator.
func runGhz(ctx context.Context, ghz, cpus string, t *target, c, conns int, d time.Duration) (*GhzResult, error) {
	args := []string{"--insecure", "--proto", "api/proto/tokenbroker/v1/tokenbroker.proto", "--import-paths", "api/proto",
		"--call", "tokenbroker.v1.TokenBrokerService.GetToken", "-d", `{"connection":"demo-cc","scopes":["read"]}`,
		"-c", strconv.Itoa(c), "--connections", strconv.Itoa(conns), "-z", d.String(), "--format", "json", t.addr}
	bin := ghz
	if cpus != "" {
		args = append([]string{"-c", cpus, bin}, args...)
		bin = "taskset"
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ghz: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var r struct {
		Count        int64          `json:"count"`
		RPS          float64        `json:"rps"`
		ErrorDist    map[string]int `json:"errorDistribution"`
		LatencyDistr []struct {
			Percentage int   `json:"percentage"`
			Latency    int64 `json:"latency"`
		} `json:"latencyDistribution"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("ghz output: %w", err)
	}
	g := &GhzResult{Target: t.name, Concurrency: c, RPS: r.RPS, Count: r.Count}
	for _, n := range r.ErrorDist {
		g.Errors += int64(n)
	}
	for _, l := range r.LatencyDistr {
		switch l.Percentage {
		case 50:
			g.P50US = float64(l.Latency) / 1e3
		case 99:
			g.P99US = float64(l.Latency) / 1e3
		}
	}
	return g, nil
}
