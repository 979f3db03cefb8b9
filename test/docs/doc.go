// Package docs runs the README's shell examples against a broker built from
// this tree, so the documentation cannot rot.
//
// The convention: a fenced sh block right after the line
// "<!-- test: demo -->" in README.md is run, whole, by bash -euo pipefail
// against `broker -demo`; any failing command fails the test. The demo's
// fixed addresses in the text (127.0.0.1:9090, :9091, :8081) are replaced by
// the free ports the test's broker listens on. The blocks need grpcurl
// (make tools puts it in ./bin) and jq (make deps installs it).
package docs
