package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/streams"
)

// throttled is a 429 with Retry-After.
func throttled(c *fiber.Ctx, retryAfter time.Duration, msg string) error {
	secs := int(retryAfter.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	c.Set(fiber.HeaderRetryAfter, strconv.Itoa(secs))
	return &problem{fiber.StatusTooManyRequests, fhir.SeverityError, fhir.CodeThrottled, msg}
}

// pollLimiter rate-limits status requests per export, in this replica.
// Clients that honour Retry-After never meet it.
type pollLimiter struct {
	mu      sync.Mutex
	every   rate.Limit
	burst   int
	byJob   map[string]*rate.Limiter
	touched map[string]time.Time
}

func newPollLimiter(perSecond float64, burst int) *pollLimiter {
	return &pollLimiter{every: rate.Limit(perSecond), burst: burst, byJob: map[string]*rate.Limiter{}, touched: map[string]time.Time{}}
}

// allow reports whether a poll of job may proceed now, and otherwise how
// long to wait.
func (p *pollLimiter) allow(job string, now time.Time) (bool, time.Duration) {
	if p.every <= 0 {
		return true, 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.byJob[job]
	if l == nil {
		if len(p.byJob) > 100000 { // forget idle exports
			for id, at := range p.touched {
				if now.Sub(at) > time.Hour {
					delete(p.byJob, id)
					delete(p.touched, id)
				}
			}
		}
		l = rate.NewLimiter(p.every, p.burst)
		p.byJob[job] = l
	}
	p.touched[job] = now
	r := l.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

var keyUnsafe = regexp.MustCompile(`[^A-Za-z0-9_-]`)

// activeKey names the KV entry that marks a client's running export of one
// request.
func activeKey(client, request string) string {
	if client == "" {
		client = "anonymous"
	}
	sum := sha256.Sum256([]byte(request))
	return "active." + keyUnsafe.ReplaceAllString(client, "_") + "." + hex.EncodeToString(sum[:16])
}

// claimRequest records job as the client's running export of request. It
// fails with ok=false, naming the running job, when the same client already
// runs the same request: such a kick-off gets a 429.
func (s *Server) claimRequest(ctx context.Context, client, request, job string) (running string, ok bool, err error) {
	key := activeKey(client, request)
	for range 5 {
		_, err := s.jobs.KV.Create(ctx, key, []byte(job))
		if err == nil {
			return "", true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return "", false, err
		}
		e, err := s.jobs.KV.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return "", false, err
		}
		other := string(e.Value())
		j, _, err := s.jobs.Get(ctx, other)
		if err == nil && (j.Status == streams.JobAccepted || j.Status == streams.JobRunning) {
			return other, false, nil
		}
		// The earlier export finished or is gone: take the slot over.
		if _, err := s.jobs.KV.Update(ctx, key, []byte(job), e.Revision()); err == nil {
			return "", true, nil
		}
	}
	return "", false, errors.New("claim export slot: too much contention")
}
