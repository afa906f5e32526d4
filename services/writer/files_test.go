package writer

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/flatfhir/flatfhir/streams"
	"github.com/flatfhir/flatfhir/streams/streamstest"
)

// TestFilesAreStoredInWholeLargeChunks: with a large chunk size, a file
// written a line at a time is stored in chunks of that size, the last
// one short, whatever the size of the buffered writes that carry it; and
// it reads back as written, plain or compressed.
func TestFilesAreStoredInWholeLargeChunks(t *testing.T) {
	bus := streamstest.New(t)
	ctx := t.Context()
	chunk := streams.FileChunk(8 << 20)
	if chunk != 1<<20 {
		t.Fatalf("FileChunk(8 MiB) = %d, want 1 MiB", chunk)
	}
	if got := streams.FileChunk(1 << 20); got != 0 {
		t.Errorf("FileChunk(1 MiB) = %d, want the client's default (0): a 1 MiB chunk and its headers do not fit", got)
	}
	task := streams.Task{JobID: "j", TaskID: "00001", Type: "Observation", MaxFileResources: 1 << 30, MaxFileBytes: 1 << 30}
	var want bytes.Buffer
	for i := 0; want.Len() < 5<<19; i++ { // 2.5 MiB
		fmt.Fprintf(&want, `{"resourceType":"Observation","id":"o%d","note":"%0200d"}`+"\n", i, i)
	}
	for _, compress := range []bool{false, true} {
		s := newFileSet(bus.Files, task, 1, compress, chunk)
		for _, line := range bytes.SplitAfter(want.Bytes(), []byte("\n")) {
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
		wantChunks := uint32((info.Size + uint64(chunk) - 1) / uint64(chunk))
		if compress {
			if info.Chunks != wantChunks {
				t.Errorf("compressed: %d bytes in %d chunks, want %d", info.Size, info.Chunks, wantChunks)
			}
		} else if info.Size != uint64(want.Len()) || info.Chunks != 3 {
			t.Errorf("plain: %d bytes in %d chunks, want %d in 3", info.Size, info.Chunks, want.Len())
		}
		got, err := streams.ReadFile(ctx, bus.Files, obj)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.Bytes()) {
			t.Errorf("compress=%v: read back %d bytes, differing from the %d written", compress, len(got), want.Len())
		}
	}
}
