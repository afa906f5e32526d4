package streams

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/klauspost/compress/gzip"
	"github.com/nats-io/nats.go/jetstream"
)

// Writers may store export files gzip-compressed (docs/adr/0009, the
// writer option CompressFiles, FLATFHIR_FILE_COMPRESSION=gzip): the object
// store then holds a fraction of the bytes, and the API hands them as they
// are to clients that accept gzip. An object says so in its headers; one
// without them (stored plain, written before, or the planner's small
// files) is plain.
const (
	// HeaderContentEncoding is "gzip" on an object stored compressed.
	HeaderContentEncoding = "Content-Encoding"
	// HeaderIdentityLength is the size of a compressed object's content
	// once decompressed, in bytes: the Content-Length of a plain download
	// and the extent of its byte ranges.
	HeaderIdentityLength = "Flatfhir-Identity-Length"
)

// FileForm is how an export file is stored.
type FileForm struct {
	Gzip bool
	// Size is the content's size, decompressed; Stored the object's.
	Size, Stored int64
}

// FileFormOf reads an object's form from its info.
func FileFormOf(info *jetstream.ObjectInfo) (FileForm, error) {
	f := FileForm{Size: int64(info.Size), Stored: int64(info.Size)}
	if info.Headers == nil {
		return f, nil
	}
	switch enc := info.Headers.Get(HeaderContentEncoding); enc {
	case "":
		return f, nil
	case "gzip":
	default:
		return f, fmt.Errorf("object %s is stored with the unknown encoding %q", info.Name, enc)
	}
	n, err := strconv.ParseInt(info.Headers.Get(HeaderIdentityLength), 10, 64)
	if err != nil || n < 0 {
		return f, fmt.Errorf("object %s is stored compressed without a valid %s", info.Name, HeaderIdentityLength)
	}
	f.Gzip, f.Size = true, n
	return f, nil
}

// ReadFile reads a whole export file from store, decompressed: for tests
// and small files.
func ReadFile(ctx context.Context, store jetstream.ObjectStore, name string) ([]byte, error) {
	raw, err := store.GetBytes(ctx, name)
	if err != nil {
		return nil, err
	}
	info, err := store.GetInfo(ctx, name)
	if err != nil {
		return nil, err
	}
	form, err := FileFormOf(info)
	if err != nil || !form.Gzip {
		return raw, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", name, err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", name, err)
	}
	if int64(len(out)) != form.Size {
		return nil, fmt.Errorf("object %s holds %d bytes decompressed, its header says %d", name, len(out), form.Size)
	}
	return out, nil
}

// FileChunk is the chunk size of stored export files on a server that
// takes messages of maxPayload bytes: 1 MiB where a chunk and its headers
// fit twice over (the shipped configuration's 8 MiB), else the object
// store client's default, 128 KiB. Fewer, larger messages cost the writer
// and the server about a quarter less CPU per byte stored
// (benchmarks/README.md); a reader gets chunks of any size alike.
func FileChunk(maxPayload int64) uint32 {
	const large = 1 << 20
	if maxPayload >= 2*large {
		return large
	}
	return 128 << 10
}
