# syntax=docker/dockerfile:1
#
# tokenbroker: a static broker binary on a distroless non-root base.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) --build-arg REVISION=$(git rev-parse HEAD) -t tokenbroker .
#   (or `make image`)
#
# The binary answers `-version`, /healthz on the admin port reports the same version, and /metrics
# exports tokenbroker_build_info{version,revision,goversion} 1.

# Build on the build machine's platform and cross-compile for the target: no emulation.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
ARG REVISION=
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
# api/ is a module of its own that go.mod replaces with the directory.
COPY api/go.mod api/go.sum ./api/
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=$VERSION -X main.revision=$REVISION" -o /out/broker ./cmd/broker

# static-debian12: CA certificates, tzdata, /etc/passwd with nonroot (65532); no shell.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="tokenbroker" \
      org.opencontainers.image.description="gRPC OAuth2 token broker" \
      org.opencontainers.image.source="https://github.com/tokenbroker/tokenbroker" \
      org.opencontainers.image.version="$VERSION"
COPY --from=build /out/broker /broker
USER 65532:65532
# 9090 gRPC API (grpc.health.v1 included), 9091 admin HTTP (/healthz, /readyz, /metrics, OAuth callback).
EXPOSE 9090 9091
ENTRYPOINT ["/broker"]
CMD ["-config", "/etc/tokenbroker/config/config.yaml"]
