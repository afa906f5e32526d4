package api

import (
	"strconv"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"golang.org/x/time/rate"

	"github.com/flatfhir/flatfhir/shared/fhir"
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
