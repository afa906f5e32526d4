package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/shared/testenv"
	"github.com/flatfhir/flatfhir/streams"
)

// bigFile stores a complete export "long" with one file of about size
// bytes, and returns its content.
func bigFile(t *testing.T, bus *authBus, base string, size int) []byte {
	t.Helper()
	var b bytes.Buffer
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, `{"resourceType":"Observation","id":"o%d","status":"final","code":{"text":"%s"}}`+"\n", i, strings.Repeat("x", 200))
	}
	job := streams.Job{ExportRequest: streams.ExportRequest{JobID: "long", SubmittedAt: time.Now(), BaseURL: base},
		Status: streams.JobComplete, TransactionTime: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}
	if err := streamsJobs(t, bus).Create(t.Context(), job); err != nil {
		t.Fatal(err)
	}
	files, err := bus.js.ObjectStore(t.Context(), streams.ObjectFiles)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := files.PutBytes(t.Context(), streams.ObjectName("long", "Observation.ndjson"), b.Bytes()); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// slowReader reads r in small pieces, pausing between them, as a client
// on a slow link does.
type slowReader struct {
	r     io.Reader
	pause time.Duration
}

func (s slowReader) Read(p []byte) (int, error) {
	<-time.After(s.pause)
	return s.r.Read(p[:min(len(p), 128<<10)])
}

// TestAPIDownloadOutlastsTheObjectStoreTimeout: a download that takes
// longer than the object store's API timeout (here 300 ms; 5 s by default)
// is served whole. Such downloads ended short with "nats: timeout" (a
// 10^7-resource benchmark found it: its files take seconds to download).
func TestAPIDownloadOutlastsTheObjectStoreTimeout(t *testing.T) {
	bus := newAuthBus(t)
	short, err := jetstream.New(bus.nc, jetstream.WithDefaultTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	base, _ := (&authBus{nc: bus.nc, js: short, store: bus.store}).startAPI(t, func(c *Config) { c.Auth = false })
	want := bigFile(t, bus, base, 12<<20)
	// A small receive window, so that the server sends at the reader's
	// pace instead of into the socket buffers.
	client := &http.Client{Transport: &http.Transport{DisableCompression: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(32 << 10)
		}
		return c, err
	}}}
	resp, err := client.Get(base + "/files/long/Observation.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	start := time.Now()
	got, err := io.ReadAll(slowReader{resp.Body, 10 * time.Millisecond})
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after %s: %d of %d bytes, %v", time.Since(start).Round(time.Millisecond), len(got), len(want), err)
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("the download took %s: too fast to show anything; slow the reader down", d)
	}
}

// failingObject is a stored object whose reads fail once after n bytes,
// as when a NATS reconnect ends the consumer delivering its chunks.
type failingObject struct {
	jetstream.ObjectResult
	n int64
}

func (f *failingObject) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("nats: timeout")
	}
	if int64(len(p)) > f.n {
		p = p[:f.n]
	}
	n, err := f.ObjectResult.Read(p)
	f.n -= int64(n)
	return n, err
}

// TestResumingReaderCarriesOnAfterAFailedRead: a read failing midway opens
// the object again and delivers the rest, byte for byte; a replaced object
// is not resumed.
func TestResumingReaderCarriesOnAfterAFailedRead(t *testing.T) {
	bus := newAuthBus(t)
	want := bigFile(t, bus, "http://x", 3<<20)
	files, err := bus.js.ObjectStore(t.Context(), streams.ObjectFiles)
	if err != nil {
		t.Fatal(err)
	}
	name := streams.ObjectName("long", "Observation.ndjson")
	open := func() (jetstream.ObjectResult, error) { return files.Get(t.Context(), name) }
	first, err := open()
	if err != nil {
		t.Fatal(err)
	}
	info, _ := first.Info()
	opens := 0
	r := newResumingReader(&failingObject{ObjectResult: first, n: 1<<20 + 17}, info.NUID, func() (jetstream.ObjectResult, error) {
		opens++
		return open()
	}, func() {}, testenv.Logger(t))
	got, err := io.ReadAll(r)
	_ = r.Close()
	if err != nil || !bytes.Equal(got, want) || opens != 1 {
		t.Fatalf("%d of %d bytes after %d opens: %v", len(got), len(want), opens, err)
	}

	// The object replaced under the download: its bytes are not spliced on.
	first, _ = open()
	r = newResumingReader(&failingObject{ObjectResult: first, n: 1 << 20}, info.NUID, func() (jetstream.ObjectResult, error) {
		if _, err := files.PutBytes(t.Context(), name, []byte("other\n")); err != nil {
			t.Fatal(err)
		}
		return open()
	}, func() {}, testenv.Logger(t))
	if _, err := io.ReadAll(r); err == nil || !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("a replaced object was resumed: %v", err)
	}
	_ = r.Close()
}
