// Package chartest renders the tokenbroker Helm chart with the pinned helm
// binary and checks what comes out: every object decodes strictly into its
// Kubernetes API type, the defaults are hardened, the config checksum follows
// the config, secret values stay out of ConfigMaps and env values, and
// templates/validate.yaml refuses impossible values.
//
// It is a module of its own so that the broker's module does not depend on
// the Kubernetes API packages. Run it with `make helm-test`, or with
// `go test ./...` here once `make helm-tools` has installed ./bin/helm.
package chartest
