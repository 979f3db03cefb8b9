// Command broker serves OAuth2 access tokens to internal services over gRPC.
//
//	broker -config /etc/tokenbroker/config.yaml
//	broker -demo                  # built-in upstream emulators, no accounts needed
//	broker -config FILE -check-config
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "broker:", err)
		os.Exit(1)
	}
}
