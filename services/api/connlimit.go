package api

import (
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// perIPListener bounds the connections one client address holds at once.
// A connection over the bound is answered 429 with Retry-After and an
// OperationOutcome, and closed (fasthttp's own limit answers in plain
// text, which clients that parse every body as JSON choke on).
type perIPListener struct {
	net.Listener
	max int
	log *slog.Logger

	mu    sync.Mutex
	conns map[string]int
}

func newPerIPListener(ln net.Listener, max int, log *slog.Logger) *perIPListener {
	return &perIPListener{Listener: ln, max: max, log: log, conns: map[string]int{}}
}

// tooManyConns is the whole answer to a connection over the bound.
var tooManyConns = func() []byte {
	body := fhir.Outcome(fhir.SeverityError, fhir.CodeThrottled,
		"too many connections from this address at once; close some, or retry later").JSON()
	return fmt.Appendf(nil, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/fhir+json\r\n"+
		"Retry-After: 5\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}()

func (l *perIPListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c)
		l.mu.Lock()
		over := l.conns[ip] >= l.max
		if !over {
			l.conns[ip]++
		}
		l.mu.Unlock()
		if !over {
			return &countedConn{Conn: c, l: l, ip: ip}, nil
		}
		l.log.Warn("connection refused: too many from one address", slog.String("ip", ip), slog.Int("max", l.max))
		go refuse(c)
	}
}

// refuse answers c 429 and closes it, without waiting on a slow client.
func refuse(c net.Conn) {
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write(tooManyConns)
	_ = c.Close()
}

func remoteIP(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// countedConn gives its address's slot back when closed.
type countedConn struct {
	net.Conn
	l    *perIPListener
	ip   string
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		defer c.l.mu.Unlock()
		if c.l.conns[c.ip]--; c.l.conns[c.ip] <= 0 {
			delete(c.l.conns, c.ip)
		}
	})
	return c.Conn.Close()
}
