package api

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestAPILimitsHold: a client sending its headers one byte at a time
// (slowloris) is cut off after RequestTimeout while others are served;
// headers over MaxHeaderBytes get 431 and a long kick-off URL under it is
// read; connections from one address beyond MaxConnsPerIP get 429 with an
// OperationOutcome, and a slot comes back when a connection closes.
func TestAPILimitsHold(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t, func(c *Config) {
		c.Auth, c.RequestTimeout, c.MaxConnsPerIP = false, time.Second, 4
	})
	addr := strings.TrimPrefix(base, "http://")

	t.Run("slowloris", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		closed := make(chan error, 1)
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err := io.ReadAll(c) // the 408, then the close
			closed <- err
		}()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		header := []byte("GET /metadata HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 1000))
	send:
		for i, b := range header {
			select {
			case err := <-closed:
				// EOF, or a reset over the bytes never read: closed.
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("the connection was not closed: %v", err)
				}
				break send
			case <-tick.C:
				if _, err := c.Write([]byte{b}); err != nil {
					break send // closed under us
				}
			}
			if d := time.Since(start); d > 15*time.Second {
				t.Fatalf("a client sending a byte every 100 ms still holds its connection after %s", d)
			}
			if i == 3 { // meanwhile a normal client is served
				resp, err := http.Get(base + "/metadata")
				if err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("a normal request during the slow one: %v %v", resp, err)
				}
				resp.Body.Close()
			}
		}
	})

	t.Run("header size", func(t *testing.T) {
		long := base + "/$export?_typeFilter=" + strings.Repeat("Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C1234-5%2C", 150)
		req, _ := http.NewRequest(http.MethodGet, long, nil)
		req.Header.Set("Prefer", "respond-async")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("a kick-off URL of %d bytes was refused as too large", len(long))
		}
		req, _ = http.NewRequest(http.MethodGet, base+"/metadata", nil)
		req.Header.Set("X-Huge", strings.Repeat("h", 70<<10))
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		checkOutcome(t, resp, http.StatusRequestHeaderFieldsTooLarge)
	})

	t.Run("connections per address", func(t *testing.T) {
		var held []net.Conn
		for range 4 {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		// The fifth is answered 429 and closed.
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		checkOutcome(t, resp, http.StatusTooManyRequests)
		if resp.Header.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
		c.Close()
		// One closes: a new connection is served.
		held[0].Close()
		var ok bool
		for range 50 {
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			r, err := client.Get(base + "/metadata")
			if err == nil {
				r.Body.Close()
				if ok = r.StatusCode == http.StatusOK; ok {
					break
				}
			}
			<-time.After(20 * time.Millisecond)
		}
		if !ok {
			t.Error("no connection was served after one of the four closed")
		}
		for _, c := range held[1:] {
			c.Close()
		}
	})
}

// checkOutcome checks resp has status and an OperationOutcome body.
func checkOutcome(t *testing.T, resp *http.Response, status int) {
	t.Helper()
	body, _ := io.ReadAll(resp.Body)
	var oo struct {
		ResourceType string
		Issue        []struct{ Diagnostics string }
	}
	if resp.StatusCode != status || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/fhir+json") ||
		json.Unmarshal(body, &oo) != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Fatalf("%d %q %s; want %d with an OperationOutcome", resp.StatusCode, resp.Header.Get("Content-Type"), body, status)
	}
}

// TestKickoffJobIDsAreUnguessable: a job id is the key to an export's
// status and files, so a client must not infer another's from its own: each
// is 26 base32 characters of crypto/rand (130 bits), and ids made one after
// the other share no prefix or sequence (NUIDs, used before, shared a
// 12-character prefix within a process and counted up).
func TestKickoffJobIDsAreUnguessable(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t, func(c *Config) { c.Auth = false })
	var ids []string
	for _, typ := range []string{"Patient", "Observation", "Condition", "Encounter", "Procedure", "Immunization", "CarePlan", "Claim"} {
		resp, body := kickoffWith(t, base, "", "?_type="+typ)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("kick-off: %d %s", resp.StatusCode, body)
		}
		loc := resp.Header.Get("Content-Location")
		ids = append(ids, loc[strings.LastIndex(loc, "/")+1:])
	}
	for i, id := range ids {
		if len(id) != 26 || strings.Trim(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") != "" {
			t.Errorf("job id %q is not 26 base32 characters", id)
		}
		for _, other := range ids[:i] {
			n := 0
			for n < len(id) && n < len(other) && id[n] == other[n] {
				n++
			}
			if n >= 6 {
				t.Errorf("job ids %s and %s share a prefix of %d characters", other, id, n)
			}
		}
	}
}

// TestAPIBoundsEachClientsDownloadsAndWrites: a client with its bound of
// downloads (or writes) in progress gets 429 with Retry-After and an
// OperationOutcome for the next, and is served again once one ends.
func TestAPIBoundsEachClientsDownloadsAndWrites(t *testing.T) {
	bus := newAuthBus(t)
	base, _ := bus.startAPI(t, func(c *Config) {
		c.Auth, c.MaxDownloadsPerClient, c.MaxWritesPerClient = false, 2, 1
	})
	addr := strings.TrimPrefix(base, "http://")
	bigFile(t, bus, base, 12<<20)
	file := base + "/files/long/Observation.ndjson"
	// retried sends req (made anew by mk) until it is not a 429.
	retried := func(mk func() *http.Request) *http.Response {
		t.Helper()
		for range 100 {
			resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(mk())
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusTooManyRequests {
				return resp
			}
			resp.Body.Close()
			<-time.After(50 * time.Millisecond)
		}
		t.Fatal("still 429 after 5 s")
		return nil
	}

	t.Run("downloads", func(t *testing.T) {
		// Two downloads that read nothing: the server's sends block.
		var held []net.Conn
		for range 2 {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.(*net.TCPConn).SetReadBuffer(16 << 10)
			if _, err := c.Write([]byte("GET /files/long/Observation.ndjson HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
			// Its answer has begun: it holds a slot.
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			status, err := bufio.NewReaderSize(c, 16).ReadString('\n')
			if err != nil || !strings.Contains(status, " 200 ") {
				t.Fatalf("a held download: %q %v", status, err)
			}
			held = append(held, c)
		}
		resp, err := http.Get(file)
		if err != nil {
			t.Fatal(err)
		}
		checkOutcome(t, resp, http.StatusTooManyRequests)
		resp.Body.Close()
		if resp.Header.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
		held[0].Close()
		resp = retried(func() *http.Request { r, _ := http.NewRequest(http.MethodGet, file, nil); return r })
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || n < 12<<20 {
			t.Errorf("after one download ended: %d, %d bytes", resp.StatusCode, n)
		}
		held[1].Close()
	})

	t.Run("writes", func(t *testing.T) {
		// An $ingest whose large body never finishes arriving holds the one
		// write (a small body is read whole before any handler runs).
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		line := `{"resourceType":"Patient","id":"w1"}` + "\n"
		if _, err := fmt.Fprintf(c, "POST /$ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+ndjson\r\nContent-Length: %d\r\n\r\n%s",
			64<<20, strings.Repeat(line, 30000)); err != nil {
			t.Fatal(err)
		}
		ingest := func() *http.Request {
			r, _ := http.NewRequest(http.MethodPost, base+"/$ingest", strings.NewReader(`{"resourceType":"Patient","id":"w2"}`+"\n"))
			r.Header.Set("Content-Type", "application/fhir+ndjson")
			return r
		}
		var resp *http.Response
		for range 500 { // until the slow one holds its slot (10 s: slow under a loaded make test)
			if resp, err = http.DefaultClient.Do(ingest()); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode == http.StatusTooManyRequests {
				break
			}
			resp.Body.Close()
			<-time.After(20 * time.Millisecond)
		}
		checkOutcome(t, resp, http.StatusTooManyRequests)
		resp.Body.Close()
		c.Close()
		resp = retried(ingest)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("after the slow write ended: %d", resp.StatusCode)
		}
	})
}
