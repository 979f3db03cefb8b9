package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"

	"github.com/tokenbroker/tokenbroker/bench/internal/heapcheck"
)

// Goals from issue 8.
const (
	goalRPSRatio     = 0.90
	goalP99Ratio     = 1.5
	goalColdMissUS   = 1000
	goalHeapPerToken = 1024
)

// Results is everything one run measured.
type Results struct {
	Machine    string  `json:"machine"`
	Settings   string  `json:"settings"`
	ServerCPUs string  `json:"server_cpus"`
	ClientCPUs string  `json:"client_cpus"`
	Seconds    float64 `json:"seconds"`
	// LoadAvg is /proc/loadavg before and after: other work on the
	// machine shows up here, and in every wall-clock number.
	LoadAvg [2]string          `json:"loadavg"`
	Load    []*LoadResult      `json:"load"`
	Cold    []*ColdMiss        `json:"cold_miss"`
	Heap    []heapcheck.Result `json:"heap"`
	Ghz     []*GhzResult       `json:"ghz,omitempty"`
	Notes   []string           `json:"notes,omitempty"`
	Rows    []Row              `json:"rows"`
}

// Row is one line of the table: medians over rounds.
type Row struct {
	Target      string  `json:"target"`
	Concurrency int     `json:"concurrency"`
	RPS         float64 `json:"rps"`
	P50US       float64 `json:"p50_us"`
	P99US       float64 `json:"p99_us"`
	RPSRatio    float64 `json:"rps_ratio"`
	P99Ratio    float64 `json:"p99_ratio"`
	// RPSRatioWorkers and P99RatioWorkers are against baseline+tuning (0
	// when it did not run): the broker's runtime settings.
	RPSRatioWorkers float64 `json:"rps_ratio_baseline_tuned,omitempty"`
	P99RatioWorkers float64 `json:"p99_ratio_baseline_tuned,omitempty"`
	// ServerCPUUS is the server's CPU time per request.
	ServerCPUUS float64 `json:"server_cpu_us_per_req"`
	ClientCPU   float64 `json:"client_cpu_share"`
	Errors      uint64  `json:"errors"`
}

func (s *settings) describe() string {
	order := "one target after the other"
	if s.interleave {
		order = fmt.Sprintf("targets interleaved, %v slices", s.slice)
	}
	return fmt.Sprintf("duration %v, warm-up %v, concurrency %v, %d connections, %d round(s), %s, %d cold-miss samples, %d keys for heap",
		s.duration, s.warmup, s.concurrency, s.conns, s.rounds, order, s.coldN, s.heapKeys)
}

func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := ""
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(data))
	}
	return fmt.Sprintf("%d CPUs (%s), %s %s/%s%s", runtime.NumCPU(), model, runtime.Version(), runtime.GOOS, runtime.GOARCH, kernel)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	xs = slices.Clone(xs)
	slices.Sort(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

// summarize builds the table rows: per target and concurrency, medians over
// rounds, with ratios taken against the baseline of the same round.
func (r *Results) summarize() {
	type key struct {
		target string
		c      int
	}
	base := map[[2]int]*LoadResult{}        // (round, c)
	baseWorkers := map[[2]int]*LoadResult{} // (round, c)
	var order []key
	groups := map[key][]*LoadResult{}
	for _, l := range r.Load {
		k := key{l.Target, l.Concurrency}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], l)
		switch l.Target {
		case "baseline":
			base[[2]int{l.Round, l.Concurrency}] = l
		case baselineTuned:
			baseWorkers[[2]int{l.Round, l.Concurrency}] = l
		}
	}
	sort.SliceStable(order, func(i, j int) bool { return order[i].c < order[j].c })
	for _, k := range order {
		var rps, p50, p99, rr, pr, rrw, prw, cpu, ccpu []float64
		row := Row{Target: k.target, Concurrency: k.c}
		for _, l := range groups[k] {
			rps, p50, p99 = append(rps, l.RPS), append(p50, l.P50US), append(p99, l.P99US)
			if l.Requests > 0 {
				cpu = append(cpu, l.ServerCPUSeconds/float64(l.Requests)*1e6)
			}
			ccpu = append(ccpu, l.CPUSeconds/l.Seconds)
			row.Errors += l.Errors
			if b := base[[2]int{l.Round, l.Concurrency}]; b != nil && b.RPS > 0 && b.P99US > 0 {
				rr, pr = append(rr, l.RPS/b.RPS), append(pr, l.P99US/b.P99US)
			}
			if b := baseWorkers[[2]int{l.Round, l.Concurrency}]; b != nil && b.RPS > 0 && b.P99US > 0 {
				rrw, prw = append(rrw, l.RPS/b.RPS), append(prw, l.P99US/b.P99US)
			}
		}
		row.RPS, row.P50US, row.P99US = median(rps), median(p50), median(p99)
		row.RPSRatio, row.P99Ratio, row.ServerCPUUS, row.ClientCPU = median(rr), median(pr), median(cpu), median(ccpu)
		if len(rrw) > 0 {
			row.RPSRatioWorkers, row.P99RatioWorkers = median(rrw), median(prw)
		}
		r.Rows = append(r.Rows, row)
	}
}

func ms(us float64) string {
	if us >= 1000 {
		return fmt.Sprintf("%.2f ms", us/1000)
	}
	return fmt.Sprintf("%.0f µs", us)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func (r *Results) print(w io.Writer) {
	fmt.Fprintf(w, "\nmachine: %s\nsettings: %s\n", r.Machine, r.Settings)
	if r.ServerCPUs != "" {
		fmt.Fprintf(w, "pinning: servers on CPU %s, load generator (and redis-server) on CPU %s\n", r.ServerCPUs, r.ClientCPUs)
	} else {
		fmt.Fprintln(w, "pinning: none")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | concurrency | rps | p50 | p99 | rps / baseline | p99 / baseline | rps / baseline+tuning | server CPU per call | loadgen CPU | errors |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, row := range r.Rows {
		same := "–"
		if row.RPSRatioWorkers > 0 {
			same = fmt.Sprintf("%.2f", row.RPSRatioWorkers)
		}
		fmt.Fprintf(w, "| %s | %d | %.0f | %s | %s | %.2f | %.2f | %s | %.1f µs | %.0f%% | %d |\n",
			row.Target, row.Concurrency, row.RPS, ms(row.P50US), ms(row.P99US), row.RPSRatio, row.P99Ratio, same,
			row.ServerCPUUS, row.ClientCPU*100, row.Errors)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Goals (issue 8; the baseline is a do-nothing grpc-go server with default settings):")
	for _, row := range r.Rows {
		if row.Target == "baseline" || row.Target == baselineTuned {
			continue
		}
		fmt.Fprintf(w, "- %s c=%d: rps %.0f%% of baseline (goal ≥ %.0f%%: %s); p99 %.2f× baseline (goal ≤ %.1f×: %s)",
			row.Target, row.Concurrency, row.RPSRatio*100, goalRPSRatio*100, verdict(row.RPSRatio >= goalRPSRatio),
			row.P99Ratio, goalP99Ratio, verdict(row.P99Ratio <= goalP99Ratio))
		if row.RPSRatioWorkers > 0 {
			fmt.Fprintf(w, "; against %s (the broker's stream workers and GOGC): rps %.0f%%, p99 %.2f×",
				baselineTuned, row.RPSRatioWorkers*100, row.P99RatioWorkers)
		}
		fmt.Fprintln(w)
	}
	r.printRedis(w)
	for _, c := range r.Cold {
		fmt.Fprintf(w, "- %s cold miss (force_refresh, %d sequential calls): p50 %s vs raw upstream %s → +%s (mean +%s; goal ≤ +1 ms: %s)\n",
			c.Target, c.Samples, ms(c.BrokerP50US), ms(c.RawP50US), ms(c.OverheadP50US), ms(c.OverheadMeanUS),
			verdict(c.OverheadP50US <= goalColdMissUS))
	}
	for _, h := range r.Heap {
		what := "memory cache: L1 + the shared store in process"
		if h.Shared == heapcheck.Remote {
			what = "shared cache out of process: L1 only"
		}
		fmt.Fprintf(w, "- heap per cached token (%s, %d tokens): %.0f B (goal ≤ %d B: %s)\n",
			what, h.Tokens, h.BytesPerToken, goalHeapPerToken, verdict(h.BytesPerToken <= goalHeapPerToken))
	}
	if len(r.Ghz) > 0 {
		fmt.Fprintln(w, "\nCross-check with ghz (same pinning; ghz uses more of its CPU, so it caps lower):")
		fmt.Fprintln(w, "\n| target | concurrency | rps | p50 | p99 | errors |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|")
		for _, g := range r.Ghz {
			fmt.Fprintf(w, "| %s | %d | %.0f | %s | %s | %d |\n", g.Target, g.Concurrency, g.RPS, ms(g.P50US), ms(g.P99US), g.Errors)
		}
		fmt.Fprintln(w)
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "- note:", n)
	}
	fmt.Fprintf(w, "\ntook %.0f s; load average before %s, after %s\n", r.Seconds, r.LoadAvg[0], r.LoadAvg[1])
}

// printRedis reports Redis commands per L1 hit over every broker-redis run.
func (r *Results) printRedis(w io.Writer) {
	cmds := map[string]int64{}
	var hits, shared, fetched, requests int64
	found := false
	for _, l := range r.Load {
		if l.Redis == nil {
			continue
		}
		found = true
		for k, v := range l.Redis.Commands {
			cmds[k] += v
		}
		hits += l.Redis.L1Hits
		shared += l.Redis.SharedHits
		fetched += l.Redis.Fetched
	}
	if !found {
		return
	}
	var names []string
	var total, health int64
	for k, v := range cmds {
		names = append(names, fmt.Sprintf("%s=%d", k, v))
		total += v
		switch k {
		case "ping", "hello", "auth", "client", "select", "zrange", "zcard":
			// The readiness checker and connection set-up (go-redis
			// sends HELLO on each new connection), including this
			// program's own INFO connection; the keep-alive's look at
			// its schedule (ZRANGE, every second) and the account
			// counts of a /metrics scrape (ZCARD): background work,
			// not calls.
			health += v
		}
	}
	sort.Strings(names)
	requests = hits + shared + fetched
	// Each shared hit is one GET (an L1 copy older than l1_max_age is
	// re-read); what is left would be round trips on L1 hits.
	perHit := 0.0
	if hits > 0 {
		perHit = float64(max(0, total-health-shared)) / float64(hits)
	}
	fmt.Fprintf(w, "- broker-redis Redis round trips per L1 hit: %.6f (goal 0: %s). INFO commandstats over the load runs (warm-up included): %s, for %d GetToken = %d L1 hits + %d shared hits (L1 copy older than l1_max_age, one GET each) + %d fetched; ping is the readiness checker, hello a new connection, zrange the keep-alive's schedule, zcard a metrics scrape\n",
		perHit, verdict(perHit == 0), strings.Join(cmp0(names), ", "), requests, hits, shared, fetched)
}

func cmp0(names []string) []string {
	if len(names) == 0 {
		return []string{"no commands"}
	}
	return names
}

func (r *Results) writeJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// smokeCheck fails a smoke pass on errors and on heap per token over
// budget (a count of bytes, steady from run to run), never on speed.
func (r *Results) smokeCheck() error {
	var problems []string
	for _, l := range r.Load {
		if l.Errors > 0 || l.Requests == 0 {
			problems = append(problems, fmt.Sprintf("%s c=%d: %d requests, %d errors %v", l.Target, l.Concurrency, l.Requests, l.Errors, l.ErrorCodes))
		}
		if l.Redis != nil && l.Redis.L1Hits == 0 {
			problems = append(problems, fmt.Sprintf("%s c=%d: no L1 hits counted", l.Target, l.Concurrency))
		}
	}
	for _, h := range r.Heap {
		if h.BytesPerToken > goalHeapPerToken {
			problems = append(problems, fmt.Sprintf("heap per token (%s): %.0f B, budget %d B", h.Shared, h.BytesPerToken, goalHeapPerToken))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w:\n  %s", errSmoke, strings.Join(problems, "\n  "))
	}
	return nil
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
