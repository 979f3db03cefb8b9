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

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build run test test-go deps tools generate check-generated lint fmt vet clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/broker ./cmd/broker

run:
	$(GO) run ./cmd/broker -demo

## test: everything CI checks. Installs redis-server if missing (Debian).
test: deps tools check-generated lint test-go

test-go:
	$(GO) test -race -count=1 ./...

deps:
	@command -v redis-server >/dev/null && command -v redis-sentinel >/dev/null && command -v redis-cli >/dev/null || { \
		echo "installing redis-server, redis-sentinel, redis-tools"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server redis-sentinel redis-tools; }

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

lint: tools
	buf lint
	@out=$$(gofmt -l $$(git ls-files '*.go')); test -z "$$out" || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)
