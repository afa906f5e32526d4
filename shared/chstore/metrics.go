package chstore

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// newOpsHistogram is the histogram of the store's operations' durations,
// as OpenTelemetry's database conventions name it
// (db.client.operation.duration, by db.operation.name).
func newOpsHistogram(mp metric.MeterProvider) (metric.Float64Histogram, error) {
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	return mp.Meter("flatfhir/chstore").Float64Histogram("db.client.operation.duration", metric.WithUnit("s"),
		metric.WithDescription("duration of ClickHouse operations by kind: inserts, export reads, bucket counts, reads of one resource"),
		metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
}

// measure records an operation that began at start; *err says whether it
// failed.
func (s *Store) measure(ctx context.Context, op string, start time.Time, err *error) {
	attrs := []attribute.KeyValue{attribute.String("db.system.name", "clickhouse"), attribute.String("db.operation.name", op)}
	if *err != nil {
		attrs = append(attrs, attribute.String("error.type", "error"))
	}
	s.ops.Record(context.WithoutCancel(ctx), time.Since(start).Seconds(), metric.WithAttributes(attrs...))
}
