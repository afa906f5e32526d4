package streams

import (
	"context"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
)

// propagator carries W3C trace context in message headers so that one
// export is one trace from kick-off to the last file.
var propagator = propagation.TraceContext{}

// InjectTrace writes the span context of ctx into h.
func InjectTrace(ctx context.Context, h nats.Header) {
	propagator.Inject(ctx, propagation.HeaderCarrier(h))
}

// ExtractTrace returns ctx carrying the remote span context found in h.
func ExtractTrace(ctx context.Context, h nats.Header) context.Context {
	return propagator.Extract(ctx, propagation.HeaderCarrier(h))
}
