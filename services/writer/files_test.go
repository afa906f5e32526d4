package writer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/streams"
	"github.com/flatfhir/flatfhir/streams/streamstest"
)

// TestFilesAreStoredInWholeChunks: a file written a line at a time is
// stored in chunks of the configured size (1 MiB where the server allows,
// else the client's 128 KiB), the last one short, whatever the size of the
// writes that carry it, compressed or not; a file smaller than a chunk is
// one message, its headers complete. Each reads back as written.
func TestFilesAreStoredInWholeChunks(t *testing.T) {
	bus := streamstest.New(t)
	ctx := t.Context()
	if got := streams.FileChunk(8 << 20); got != 1<<20 {
		t.Fatalf("FileChunk(8 MiB) = %d, want 1 MiB", got)
	}
	if got := streams.FileChunk(1 << 20); got != 128<<10 {
		t.Errorf("FileChunk(1 MiB) = %d, want the client's default (128 KiB): a 1 MiB chunk and its headers do not fit", got)
	}
	ndjson := func(size int) []byte {
		rnd := rand.New(rand.NewPCG(1, 2)) // notes that compress about twofold only
		var b bytes.Buffer
		for i := 0; b.Len() < size; i++ {
			fmt.Fprintf(&b, `{"resourceType":"Observation","id":"o%d","note":"`, i)
			for range 20 {
				fmt.Fprintf(&b, "%016x", rnd.Uint64())
			}
			b.WriteString("\"}\n")
		}
		return b.Bytes()
	}
	task := streams.Task{JobID: "j", TaskID: "00001", Type: "Observation", MaxFileResources: 1 << 30, MaxFileBytes: 1 << 30}
	for _, c := range []struct {
		name     string
		chunk    uint32 // the fileSet's
		size     int    // of the NDJSON
		compress bool
		chunks   uint32 // 0: as many as the stored size needs, at least 2
	}{
		{"plain, 1 MiB chunks", 1 << 20, 5 << 19, false, 0},
		{"plain, default chunks", 128 << 10, 5 << 19, false, 0},
		{"plain, smaller than a chunk", 1 << 20, 10 << 10, false, 1},
		{"gzip, 1 MiB chunks", 1 << 20, 5 << 20, true, 0},
		{"gzip, smaller than a chunk", 1 << 20, 1 << 20, true, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			want := ndjson(c.size)
			s := newFileSet(bus.Files, task, 1, c.compress, c.chunk)
			for _, line := range bytes.SplitAfter(want, []byte("\n")) {
				if len(line) == 0 {
					continue
				}
				if err := s.write(ctx, "Observation", streams.KindOutput, line[:len(line)-1]); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.close(ctx); err != nil {
				t.Fatal(err)
			}
			obj := streams.ObjectName("j", s.files[0].Name)
			info, err := bus.Files.GetInfo(ctx, obj)
			if err != nil {
				t.Fatal(err)
			}
			chunk := uint64(c.chunk)
			wantChunks := c.chunks
			if wantChunks == 0 {
				wantChunks = uint32((info.Size + chunk - 1) / chunk)
				if wantChunks < 2 {
					t.Fatalf("%d bytes stored, not several chunks: the case tests nothing", info.Size)
				}
			}
			if info.Chunks != wantChunks {
				t.Errorf("%d bytes stored in %d chunks, want %d", info.Size, info.Chunks, wantChunks)
			}
			if !c.compress && info.Size != uint64(len(want)) {
				t.Errorf("stored %d bytes, want %d", info.Size, len(want))
			}
			if c.compress && info.Headers.Get(streams.HeaderIdentityLength) != strconv.Itoa(len(want)) {
				t.Errorf("identity length %q, want %d", info.Headers.Get(streams.HeaderIdentityLength), len(want))
			}
			got, err := streams.ReadFile(ctx, bus.Files, obj)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("read back %d bytes, differing from the %d written", len(got), len(want))
			}
		})
	}
}

// TestAbortStopsFilesBeingStored: an attempt aborted with a file streaming
// into the object store and another still held in memory ends both, and
// nothing it began stays stored.
func TestAbortStopsFilesBeingStored(t *testing.T) {
	bus := streamstest.New(t)
	ctx := t.Context()
	task := streams.Task{JobID: "j", TaskID: "00001", Type: "Observation", MaxFileResources: 1 << 30, MaxFileBytes: 1 << 30}
	s := newFileSet(bus.Files, task, 1, false, 1<<20)
	line := []byte(`{"resourceType":"Observation","id":"o","note":"` + strings.Repeat("x", 1000) + `"}`)
	for range 3000 { // 3 MB: streaming
		if err := s.write(ctx, "Observation", streams.KindOutput, line); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.write(ctx, "Patient", streams.KindOutput, []byte(`{"resourceType":"Patient","id":"p"}`)); err != nil {
		t.Fatal(err)
	}
	if !s.open[streams.KindOutput+"/Observation"].out.streaming() || s.open[streams.KindOutput+"/Patient"].out.streaming() {
		t.Fatal("want the Observations streaming and the Patient held")
	}
	s.abort(ctx)
	if names := bus.ObjectNames(t, "j/"); len(names) != 0 {
		t.Errorf("stored after the abort: %v", names)
	}
	stream, err := bus.JS.Stream(ctx, "OBJ_"+streams.ObjectFiles)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := stream.Info(ctx); err != nil || info.State.Msgs != 0 {
		t.Errorf("the files' stream holds %d messages after the abort (%v), want none: chunks left behind", info.State.Msgs, err)
	}
}

// failingPuts is an object store whose Put of one object fails.
type failingPuts struct {
	jetstream.ObjectStore
	fail string
}

func (f failingPuts) Put(ctx context.Context, meta jetstream.ObjectMeta, r io.Reader) (*jetstream.ObjectInfo, error) {
	if strings.Contains(meta.Name, f.fail) {
		return nil, errors.New("no space left")
	}
	return f.ObjectStore.Put(ctx, meta, r)
}

// TestSmallFilesAreStoredTogether: a task of many small files (a packed
// _since task) stores them all, each complete, and close returns only
// once they are; the failure of one of them fails close, naming the file.
func TestSmallFilesAreStoredTogether(t *testing.T) {
	bus := streamstest.New(t)
	ctx := t.Context()
	task := streams.Task{JobID: "j", TaskID: "00001", MaxFileResources: 1 << 30, MaxFileBytes: 1 << 30}
	types := make([]string, 30)
	for i := range types {
		types[i] = fmt.Sprintf("Type%02d", i)
	}
	write := func(s *fileSet) {
		t.Helper()
		for _, typ := range types {
			for i := range 3 {
				if err := s.write(ctx, typ, streams.KindOutput, fmt.Appendf(nil, `{"resourceType":%q,"id":"r%d"}`, typ, i)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	s := newFileSet(bus.Files, task, 1, true, 1<<20)
	write(s)
	if err := s.close(ctx); err != nil {
		t.Fatal(err)
	}
	if len(s.files) != len(types) {
		t.Fatalf("%d files, want %d", len(s.files), len(types))
	}
	for _, f := range s.files {
		got, err := streams.ReadFile(ctx, bus.Files, streams.ObjectName("j", f.Name))
		if err != nil || strings.Count(string(got), "\n") != 3 {
			t.Errorf("%s: %q, %v; want its 3 lines", f.Name, got, err)
		}
	}

	bad := newFileSet(failingPuts{ObjectStore: bus.Files, fail: "Type17-"}, task, 2, true, 1<<20)
	write(bad)
	if err := bad.close(ctx); err == nil || !strings.Contains(err.Error(), "Type17-") || !strings.Contains(err.Error(), "no space left") {
		t.Errorf("close with a file that could not be stored: %v, want an error naming it", err)
	}
	bad.abort(ctx)
	for _, name := range bus.ObjectNames(t, "j/") {
		if strings.Contains(name, "-a2-") {
			t.Errorf("%s of the failed attempt is still stored", name)
		}
	}
}

// TestFilesRollOverHoldingExactlyTheirLines: files that roll over one
// after the other, of two types at once, compressed or not, each hold
// exactly their own lines, as many and as long as their records say.
func TestFilesRollOverHoldingExactlyTheirLines(t *testing.T) {
	bus := streamstest.New(t)
	ctx := t.Context()
	for _, compress := range []bool{true, false} {
		task := streams.Task{JobID: fmt.Sprintf("reuse-%v", compress), TaskID: "00001", MaxFileResources: 3, MaxFileBytes: 1 << 30}
		s := newFileSet(bus.Files, task, 1, compress, 1<<20)
		want := map[string]string{}
		for i := range 20 {
			for _, typ := range []string{"Patient", "Observation"} {
				line := fmt.Sprintf(`{"resourceType":%q,"id":"%s-%d"}`, typ, typ, i)
				if err := s.write(ctx, typ, streams.KindOutput, []byte(line)); err != nil {
					t.Fatal(err)
				}
				want[typ] += line + "\n"
			}
		}
		if err := s.close(ctx); err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, f := range s.files { // in the order they were completed
			b, err := streams.ReadFile(ctx, bus.Files, streams.ObjectName(task.JobID, f.Name))
			if err != nil {
				t.Fatal(err)
			}
			if f.Count != strings.Count(string(b), "\n") || int64(len(b)) != f.Bytes {
				t.Errorf("compressed %v: %s holds %d bytes, %d lines; its record says %d, %d", compress, f.Name, len(b), strings.Count(string(b), "\n"), f.Bytes, f.Count)
			}
			got[f.Type] += string(b)
		}
		for typ, lines := range want {
			if got[typ] != lines {
				t.Errorf("compressed %v: the %s files hold\n%s\nwant\n%s", compress, typ, got[typ], lines)
			}
		}
	}
}
