package api

import (
	"context"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/flatfhir/flatfhir/streams"
)

// metrics are the API's instruments. Requests are measured as OpenTelemetry's
// HTTP semantic conventions name them (http.server.request.duration by
// method, route and status code): kick-offs, status polls and their 429s,
// downloads and token requests are each a route of it.
type metrics struct {
	requests metric.Float64Histogram
	tokens   metric.Int64Counter
	ingested metric.Int64Counter
	ended    metric.Int64Counter
}

func newMetrics(mp metric.MeterProvider) (metrics, error) {
	m := mp.Meter("flatfhir/api")
	var out metrics
	var err error
	if out.requests, err = m.Float64Histogram("http.server.request.duration", metric.WithUnit("s"),
		metric.WithDescription("duration of HTTP server requests"),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60)); err != nil {
		return out, err
	}
	if out.tokens, err = m.Int64Counter("flatfhir.auth.tokens", metric.WithDescription("token requests: issued, or refused by OAuth error code (flatfhir.token.reason)")); err != nil {
		return out, err
	}
	// Shown as 0 from the start, not missing until the first token.
	out.tokens.Add(context.Background(), 0, metric.WithAttributes(attribute.String("flatfhir.token.outcome", "issued")))
	if out.ingested, err = m.Int64Counter("flatfhir.ingest.accepted", metric.WithDescription("resources accepted into the change stream by $ingest")); err != nil {
		return out, err
	}
	if out.ended, err = streams.ExportsEnded(m); err != nil {
		return out, err
	}
	return out, nil
}

// measureRequests records each request's duration with its route and
// status. An error a handler returns is turned into its response here,
// so that the status recorded (and the trace's, outside) is the one sent.
func (s *Server) measureRequests(c *fiber.Ctx) error {
	start := time.Now()
	if err := c.Next(); err != nil {
		if err := c.App().Config().ErrorHandler(c, err); err != nil {
			return err
		}
	}
	route := c.Route().Path
	if route == "/" && c.Path() != "/" {
		route = "" // no route matched: keep unmatched paths out of the labels
	}
	s.metrics.requests.Record(c.UserContext(), time.Since(start).Seconds(), metric.WithAttributes(
		attribute.String("http.request.method", c.Method()),
		attribute.String("http.route", route),
		attribute.String("http.response.status_code", strconv.Itoa(c.Response().StatusCode())),
	))
	return nil
}
