package streams

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// The attributes of export metrics: the export's level (system, patient,
// group) and the state it reached.
const (
	AttrExportLevel = "flatfhir.export.level"
	AttrExportState = "flatfhir.export.state"
)

// ExportsEnded is the counter of exports that reached an end state
// (complete, failed, cancelled), by level and state. The planner, writers
// and API each count the ends they make.
func ExportsEnded(m metric.Meter) (metric.Int64Counter, error) {
	return m.Int64Counter("flatfhir.export.jobs.ended", metric.WithDescription("exports that completed, failed or were cancelled"))
}

// ExportAttrs are the attributes of an export of level in state.
func ExportAttrs(level, state string) metric.MeasurementOption {
	return metric.WithAttributes(attribute.String(AttrExportLevel, level), attribute.String(AttrExportState, state))
}
