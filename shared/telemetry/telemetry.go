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
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
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
	// Prometheus has the metrics also read by a Prometheus exporter,
	// served by Providers.MetricsHandler: the same instruments feed both.
	Prometheus bool
}

// Providers are what components take to instrument themselves.
type Providers struct {
	Tracer trace.TracerProvider
	Meter  metric.MeterProvider
	// MetricsHandler serves the metrics in Prometheus's text format when
	// Config.Prometheus was set, and is nil otherwise.
	MetricsHandler http.Handler
	shutdown       []func(context.Context) error
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
	var handler http.Handler
	if cfg.Prometheus {
		// A registry of its own: the process's default one would mix in
		// whatever a library registers there.
		reg := prometheus.NewRegistry()
		if err := reg.Register(collectors.NewGoCollector()); err != nil {
			return nil, fmt.Errorf("register go collector: %w", err)
		}
		if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
			return nil, fmt.Errorf("register process collector: %w", err)
		}
		exp, err := otelprom.New(otelprom.WithRegisterer(reg))
		if err != nil {
			return nil, fmt.Errorf("create prometheus exporter: %w", err)
		}
		mopts = append(mopts, sdkmetric.WithReader(exp))
		handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	}
	tp := sdktrace.NewTracerProvider(topts...)
	mp := sdkmetric.NewMeterProvider(mopts...)
	return &Providers{Tracer: tp, Meter: mp, MetricsHandler: handler, shutdown: []func(context.Context) error{tp.Shutdown, mp.Shutdown}}, nil
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
