package planner

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/flatfhir/flatfhir/streams"
)

// metrics are the planner's instruments.
type metrics struct {
	planned  metric.Int64Counter
	ended    metric.Int64Counter
	duration metric.Float64Histogram
	meter    metric.Meter
}

func newMetrics(mp metric.MeterProvider) (metrics, error) {
	m := metrics{meter: mp.Meter("flatfhir/planner")}
	var err error
	if m.planned, err = m.meter.Int64Counter("flatfhir.export.tasks_planned", metric.WithDescription("export tasks published for writers")); err != nil {
		return m, err
	}
	if m.ended, err = streams.ExportsEnded(m.meter); err != nil {
		return m, err
	}
	if m.duration, err = m.meter.Float64Histogram("flatfhir.export.duration", metric.WithUnit("s"),
		metric.WithDescription("time from kick-off to the manifest of completed exports"),
		metric.WithExplicitBucketBoundaries(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)); err != nil {
		return m, err
	}
	return m, nil
}

// completed counts a completed export and its time.
func (m metrics) completed(ctx context.Context, job streams.Job, at time.Time) {
	m.ended.Add(ctx, 1, streams.ExportAttrs(job.Level, streams.JobComplete))
	if !job.SubmittedAt.IsZero() {
		m.duration.Record(ctx, at.Sub(job.SubmittedAt).Seconds(), metric.WithAttributes(attribute.String(streams.AttrExportLevel, job.Level)))
	}
}

// observeStores reports the export files' bytes and the tasks waiting for
// writers at each collection, until the returned func is called.
func (p *Planner) observeStores() (func(), error) {
	files, err := p.metrics.meter.Int64ObservableGauge("flatfhir.export.files.size", metric.WithUnit("By"),
		metric.WithDescription("bytes held by the export files' object store"))
	if err != nil {
		return nil, err
	}
	pending, err := p.metrics.meter.Int64ObservableGauge("flatfhir.export.tasks.pending",
		metric.WithDescription("export tasks published and not yet done (waiting or being written)"))
	if err != nil {
		return nil, err
	}
	reg, err := p.metrics.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if st, err := p.files.Status(ctx); err == nil {
			o.ObserveInt64(files, int64(st.Size())) //nolint:gosec // a store's size fits
		}
		if c, err := p.deps.JS.Consumer(ctx, streams.StreamExportTasks, streams.ConsumerWriters); err == nil {
			if info, err := c.Info(ctx); err == nil {
				o.ObserveInt64(pending, int64(info.NumPending)+int64(info.NumAckPending)) //nolint:gosec // counts fit
			}
		}
		return nil
	}, files, pending)
	if err != nil {
		return nil, err
	}
	return func() { _ = reg.Unregister() }, nil
}
