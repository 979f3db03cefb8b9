# tokenbroker — build, test and check.
#
#   make run     run the broker with the built-in demo upstreams
#   make test    install what the tests need, check everything, run all tests (what CI runs)
#
# Tools are pinned here and installed into ./bin with `go install`.

SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GRPCURL_VERSION            := v1.9.3

VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.revision=$(REVISION)

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build run test test-go deps tools generate check-generated lint fmt vet clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/broker ./cmd/broker

run:
	$(GO) run ./cmd/broker -demo

## test: everything CI checks. Installs redis-server if missing (Debian).
test: deps tools check-generated lint test-go

## GO_MODULES: the server module and api/ (a module of its own, so callers import the client
## without the server's dependencies); deploy/helm/chartest is run by helm-test.
GO_MODULES := . api

test-go:
	@set -e; for m in $(GO_MODULES); do echo "go test -race ./... ($$m)"; (cd $$m && $(GO) test -race -count=1 ./...); done

## bench-accounts: 100 000 accounts on one connection in Redis mode (heap per idle account, ListAccounts
## page latency, keep-alive work); figures in BENCHMARKS.md.
.PHONY: bench-accounts
bench-accounts: deps
	TOKENBROKER_ACCOUNTS=100000 $(GO) test -count=1 -run '^TestAccountsAtScale$$' -v ./internal/broker

## test-slow: tests that need minutes of real time (an idle grant kept alive for 3 minutes through the binary).
.PHONY: test-slow
test-slow: deps
	TOKENBROKER_SLOW_TESTS=1 $(GO) test -count=1 -run '^TestIdleGrantKeptAliveThroughTheBinary$$' -v ./cmd/broker

## test-stress: the shared-work stress test at full scale (upstream latency up to 2 s,
## caller deadlines up to 5 s); `make test` runs it scaled down.
.PHONY: test-stress
test-stress: deps
	TOKENBROKER_STRESS=full $(GO) test -race -count=1 -run '^TestStressSharedWork$$' -v ./internal/broker

deps:
	@command -v redis-server >/dev/null && command -v redis-sentinel >/dev/null && command -v redis-cli >/dev/null && command -v jq >/dev/null || { \
		echo "installing redis-server, redis-sentinel, redis-tools, jq (test/docs runs the README's jq)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server redis-sentinel redis-tools jq; }

tools: $(BIN)/.buf-$(BUF_VERSION) $(BIN)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION) \
	$(BIN)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION) $(BIN)/.grpcurl-$(GRPCURL_VERSION)

$(BIN)/.buf-%:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$*
	@touch $@
$(BIN)/.protoc-gen-go-%:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$*
	@touch $@
$(BIN)/.protoc-gen-go-grpc-%:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$*
	@touch $@
$(BIN)/.grpcurl-%:
	GOBIN=$(BIN) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$*
	@touch $@

generate: tools
	buf generate

## check-generated fails when the committed protobuf code is not what buf generates.
check-generated: tools
	buf generate
	@git diff --exit-code -- api/proto || { echo "generated code is stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- api/proto)" || { git status --porcelain -- api/proto; echo "untracked generated files: run 'make generate' and commit"; exit 1; }
	@cd api && $(GO) mod tidy -diff || { echo "api/go.mod is not tidy: run 'cd api && go mod tidy' (keep its go line as low as its dependencies allow)"; exit 1; }

lint: tools
	buf lint
	@out=$$(gofmt -l $$(git ls-files '*.go')); test -z "$$out" || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	@set -e; for m in $(GO_MODULES); do echo "go vet ./... ($$m)"; (cd $$m && $(GO) vet ./...); done

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)

# ---------------------------------------------------------------------------
# Helm chart and container image (issue 7)
#
#   make helm-test   lint the chart, render it for every deploy/helm/tokenbroker/ci/*.yaml,
#                    validate the manifests offline against the Kubernetes 1.30 schemas,
#                    and run the chart tests (deploy/helm/chartest, a Go module of its own)
#   make image       build the container image with `docker build`. The CI and development
#                    machines have no Docker engine, so this target cannot run there; `make build`
#                    builds the same static binary the Dockerfile does.

HELM_VERSION             := v3.22.0
KUBECTL_VALIDATE_VERSION := v0.0.4
KUBE_VERSION             := 1.30
CHART        := deploy/helm/tokenbroker
CHART_VALUES := $(sort $(wildcard $(CHART)/ci/*.yaml))
HELM_OUT     := $(CURDIR)/.cache/helm
IMAGE        ?= ghcr.io/tokenbroker/tokenbroker
DOCKER       ?= docker

.PHONY: image helm-tools helm-lint helm-template helm-validate helm-test

## CI (`make test`) checks the chart as well.
test: helm-test

image:
	$(DOCKER) build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE):$(VERSION) .

helm-tools: $(BIN)/.helm-$(HELM_VERSION) $(BIN)/.kubectl-validate-$(KUBECTL_VALIDATE_VERSION)

$(BIN)/.helm-%:
	GOBIN=$(BIN) $(GO) install helm.sh/helm/v3/cmd/helm@$*
	@touch $@
$(BIN)/.kubectl-validate-%:
	GOBIN=$(BIN) $(GO) install sigs.k8s.io/kubectl-validate@$*
	@touch $@

## helm-lint: `helm lint` ignores `fail` (templates/validate.yaml); helm-template catches those.
helm-lint: helm-tools
	@set -e; for f in $(CHART_VALUES); do echo "helm lint --strict $(CHART) -f $$f"; helm lint --strict $(CHART) -f $$f; done

helm-template: helm-tools
	@rm -rf $(HELM_OUT) && mkdir -p $(HELM_OUT)
	@set -e; for f in $(CHART_VALUES); do \
		echo "helm template tokenbroker $(CHART) -f $$f"; \
		helm template tokenbroker $(CHART) --namespace tokenbroker -f $$f > $(HELM_OUT)/$$(basename $$f); done

## helm-validate: kubectl-validate has no CRDs built in; the ServiceMonitor's trimmed schema is in chartest/testdata/crds.
helm-validate: helm-template
	kubectl-validate --version $(KUBE_VERSION) --local-crds deploy/helm/chartest/testdata/crds $(HELM_OUT)

helm-test: helm-lint helm-validate
	cd deploy/helm/chartest && HELM=$(BIN)/helm $(GO) test -count=1 ./...

# --- fuzzing (issue 6) -------------------------------------------------------
# `make fuzz` runs every fuzz target for FUZZTIME each (`make fuzz FUZZTIME=10m`).
# Not part of `make test`, whose `go test` runs only the seed corpora (the
# f.Add seeds and testdata/fuzz/<FuzzName>/ of each package).
FUZZTIME ?= 60s

.PHONY: fuzz
fuzz:
	$(GO) test -run=^$$ -fuzz=^FuzzPost$$ -fuzztime=$(FUZZTIME) ./internal/providers/tokenhttp
	$(GO) test -run=^$$ -fuzz=^FuzzDecode$$ -fuzztime=$(FUZZTIME) ./internal/providers/wx
	$(GO) test -run=^$$ -fuzz=^FuzzParse$$ -fuzztime=$(FUZZTIME) ./internal/config
	$(GO) test -run=^$$ -fuzz=^FuzzCallback$$ -fuzztime=$(FUZZTIME) ./internal/server

# --- benchmarks (issue 8) -----------------------------------------------------
#   make bench        baseline (a do-nothing gRPC server) vs the broker (memory cache, and Redis-backed), same load
#                     generator, BENCH_DURATION each (default 10s) at c=16 and 64, servers and load generator pinned
#                     to different CPUs; plus Redis round trips per L1 hit, cold-miss overhead, heap per token.
#                     One table; BENCHMARKS.md says how to read it. BENCH_ROUNDS=4 repeats every run (medians).
#                     The targets of a concurrency are interleaved by one load generator, BENCH_SLICE (500ms)
#                     each in turn; BENCH_INTERLEAVE=0 measures them one after the other.
#   make bench-smoke  one very short pass (1s at c=16, ~10s warm); fails on errors or heap per token over 1 KiB,
#                     never on speed
#   make bench-go     the Go benchmarks of the hit path (-benchmem)
#   make bench-ghz    cross-check: ghz (pinned) against the baseline and the broker
BENCH_DURATION ?= 10s
GHZ_VERSION    := v0.121.0
BENCH_GO_PKGS  := ./internal/broker ./internal/server ./internal/incoming ./internal/cache/memory ./internal/cache/sealed ./internal/wavescrypto

.PHONY: bench bench-smoke bench-go bench-ghz

## CI (`make test`) runs the smoke pass so the harness cannot rot.
test: bench-smoke

bench: deps
	BENCH_DURATION=$(BENCH_DURATION) $(GO) run ./bench/cmd/benchrun

bench-smoke: deps
	$(GO) run ./bench/cmd/benchrun -smoke

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem $(BENCH_GO_PKGS)

$(BIN)/.ghz-%:
	GOBIN=$(BIN) $(GO) install github.com/bojand/ghz/cmd/ghz@$*
	@touch $@

bench-ghz: deps $(BIN)/.ghz-$(GHZ_VERSION)
	BENCH_DURATION=$(BENCH_DURATION) $(GO) run ./bench/cmd/benchrun -ghz $(BIN)/ghz

# ---- faults (issue 13) --------------------------------------------------------
#   make test-faults  TestFaults with every fault held the full 10 s of issue 13 (about 2.5 minutes on 2 cores):
#                     Redis and upstream faults through an embedded Toxiproxy, SIGSTOP of redis-server, a Sentinel
#                     and a Redis Cluster failover, under load on 3 replicas. Prints the table kept in
#                     docs/RELIABILITY.md and writes it to $(FAULT_TABLE).
# `make test` runs the same scenarios with faults held 2 s (TOKENBROKER_FAULT_DURATION unset): about 1 minute more.
FAULT_DURATION ?= 10s
FAULT_TABLE    ?= $(CURDIR)/.cache/faults.md

.PHONY: test-faults
test-faults: deps
	@mkdir -p $(dir $(FAULT_TABLE))
	TOKENBROKER_FAULT_DURATION=$(FAULT_DURATION) TOKENBROKER_FAULT_TABLE=$(FAULT_TABLE) \
		$(GO) test -count=1 -v -timeout 15m -run '^TestFaults$$' ./test/replicas/

# ---- replicas: the multi-process harness by hand ------------------------------
.PHONY: cluster
## cluster: N brokers + redis-server + emulators on loopback; type commands (kill N, term N, redis-kill, …)
cluster: deps
	$(GO) run ./internal/testutil/cluster/cmd/cluster -replicas $(or $(REPLICAS),3)
