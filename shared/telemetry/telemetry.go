// Package telemetry sets up OpenTelemetry tracing and metrics and the
// structured logger of a flatfhir service. With no OTLP endpoint configured
// spans are still created (their ids appear in logs) but nothing is
// exported.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
)

// Config selects where telemetry goes.
type Config struct {
	ServiceName string
	// OTLPEndpoint is host:port of an OTLP/HTTP collector; empty exports nothing.
	OTLPEndpoint string
	// Insecure uses plain HTTP to the collector.
	Insecure bool
}

// Providers are what components take to instrument themselves.
type Providers struct {
	Tracer   trace.TracerProvider
	Meter    metric.MeterProvider
	shutdown []func(context.Context) error
}

// Setup builds the providers.
func Setup(ctx context.Context, cfg Config) (*Providers, error) {
	res := resource.NewSchemaless(semconv.ServiceName(cfg.ServiceName))
	topts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	mopts := []sdkmetric.Option{sdkmetric.WithResource(res)}
	if cfg.OTLPEndpoint != "" {
		te := []otlptracehttp.Option{otlptracehttp.WithEndpoint(cfg.OTLPEndpoint)}
		me := []otlpmetrichttp.Option{otlpmetrichttp.WithEndpoint(cfg.OTLPEndpoint)}
		if cfg.Insecure {
			te = append(te, otlptracehttp.WithInsecure())
			me = append(me, otlpmetrichttp.WithInsecure())
		}
		texp, err := otlptracehttp.New(ctx, te...)
		if err != nil {
			return nil, fmt.Errorf("create otlp trace exporter: %w", err)
		}
		mexp, err := otlpmetrichttp.New(ctx, me...)
		if err != nil {
			return nil, fmt.Errorf("create otlp metric exporter: %w", err)
		}
		topts = append(topts, sdktrace.WithBatcher(texp))
		mopts = append(mopts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(mexp)))
	}
	tp := sdktrace.NewTracerProvider(topts...)
	mp := sdkmetric.NewMeterProvider(mopts...)
	return &Providers{Tracer: tp, Meter: mp, shutdown: []func(context.Context) error{tp.Shutdown, mp.Shutdown}}, nil
}

// FromProviders wraps providers built elsewhere (tests, embedding
// programs); Shutdown leaves them alone.
func FromProviders(tp trace.TracerProvider, mp metric.MeterProvider) *Providers {
	return &Providers{Tracer: tp, Meter: mp}
}

// Shutdown flushes and stops the providers.
func (p *Providers) Shutdown(ctx context.Context) error {
	var errs []error
	for _, f := range p.shutdown {
		errs = append(errs, f(ctx))
	}
	return errors.Join(errs...)
}

// NewLogger returns a JSON slog logger that adds trace_id and span_id of the
// context's span to every record.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(traceHandler{slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})})
}

type traceHandler struct{ slog.Handler }

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(a)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}
