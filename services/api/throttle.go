package api

import (
	"fmt"
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

// inFlight bounds how many requests of one kind a client has in progress
// at once, in this replica: a client is its client id when authorization
// is on, else its address. Beyond the bound the answer is 429 with
// Retry-After.
type inFlight struct {
	kind string
	max  int

	mu   sync.Mutex
	busy map[string]int
}

func newInFlight(kind string, max int) *inFlight {
	return &inFlight{kind: kind, max: max, busy: map[string]int{}}
}

// clientKey names the client of a request for the in-flight bounds.
func clientKey(c *fiber.Ctx) string {
	if id := clientOf(c); id != "" {
		return "client " + id
	}
	return "address " + c.IP()
}

// acquire takes a slot for c's client and returns the function that gives
// it back (call it once), or a 429 when the client has max in progress.
func (f *inFlight) acquire(c *fiber.Ctx) (release func(), err error) {
	if f.max <= 0 {
		return func() {}, nil
	}
	key := clientKey(c)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy[key] >= f.max {
		return nil, throttled(c, 2*time.Second, fmt.Sprintf("%d %s are in progress for this client already, the most at once; retry when one has finished", f.busy[key], f.kind))
	}
	f.busy[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.busy[key]--; f.busy[key] <= 0 {
				delete(f.busy, key)
			}
		})
	}, nil
}

// hold is a handler that keeps a slot for the rest of the request (writes,
// whose handlers answer when done).
func (f *inFlight) hold(c *fiber.Ctx) error {
	release, err := f.acquire(c)
	if err != nil {
		return err
	}
	defer release()
	return c.Next()
}
