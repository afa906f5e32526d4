// Command flatfhir runs the flatfhir Bulk Data export engine: every service
// in one process (FLATFHIR_ROLE=all, the default), or one role per process.
// Subcommands manage SMART clients and signing keys and fetch tokens
// (flatfhir help).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/shared/telemetry"
)

func main() {
	if args := os.Args[1:]; flatfhir.IsCommand(args) {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := flatfhir.Command(ctx, args, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	cfg, err := flatfhir.FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "flatfhir: configuration:", err)
		os.Exit(2)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "flatfhir: FLATFHIR_LOG_LEVEL:", err)
		os.Exit(2)
	}
	log := telemetry.NewLogger(os.Stderr, level)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := flatfhir.Main(ctx, cfg, log, os.Stdout); err != nil {
		log.Error("flatfhir stopped", slog.Any("error", err))
		os.Exit(1)
	}
}
