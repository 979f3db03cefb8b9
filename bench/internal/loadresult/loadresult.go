// Package loadresult is the JSON line bench/loadgen prints after a load
// run, shared with bench/cmd/benchrun, which reads it.
package loadresult

// Result is the JSON line loadgen prints.
type Result struct {
	Label       string         `json:"label,omitempty"`
	Addr        string         `json:"addr"`
	Method      string         `json:"method"`
	Concurrency int            `json:"concurrency"`
	Conns       int            `json:"conns"`
	Seconds     float64        `json:"seconds"`
	Requests    uint64         `json:"requests"`
	Errors      uint64         `json:"errors"`
	ErrorCodes  map[string]int `json:"error_codes,omitempty"`
	RPS         float64        `json:"rps"`
	MeanUS      float64        `json:"mean_us"`
	P50US       float64        `json:"p50_us"`
	P90US       float64        `json:"p90_us"`
	P99US       float64        `json:"p99_us"`
	P999US      float64        `json:"p999_us"`
	MaxUS       float64        `json:"max_us"`
	// CPUSeconds is this process's user+system CPU during the measured
	// window: near Seconds × cores means the load generator, not the
	// server, was the limit.
	CPUSeconds float64 `json:"cpu_seconds"`
	// ServerCPUSeconds is the CPU time of process -server-pid (on this
	// machine) during the measured window.
	ServerCPUSeconds float64 `json:"server_cpu_seconds,omitempty"`
}
