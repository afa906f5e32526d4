package writer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/streams"
)

// fileSet writes the NDJSON files of one task attempt, one open file per
// kind of output at a time, streaming each into the object store as it is
// written, plain or gzip-compressed (docs/adr/0009).
type fileSet struct {
	store   jetstream.ObjectStore
	task    streams.Task
	attempt uint64
	// compress stores the files gzip-compressed (docs/adr/0009).
	compress bool
	chunk    uint32 // the objects' chunk size (streams.FileChunk)
	token    string
	open     map[string]*file // by file prefix
	parts    map[string]int
	files    []streams.File
	index    string   // the attachment index's name within the job, if any
	written  []string // object names, for abort
	// The files smaller than a chunk being stored (storeSmall).
	puts   sync.WaitGroup
	slots  chan struct{}
	putMu  sync.Mutex
	putErr error
}

// smallPuts bounds the files smaller than a chunk that one attempt stores
// at once, and so the memory they hold.
const smallPuts = 8

type file struct {
	name  string
	kind  string // streams.KindOutput or KindDeleted
	typ   string
	lines *bufio.Writer // the NDJSON, buffered
	gz    *gzip.Writer  // nil when stored plain
	out   *spool        // what is stored: the NDJSON or its gzip stream
	count int
	bytes int64
}

// spool holds the bytes of a file to store until they fill a chunk; a file
// that ends before is stored in one message of its own size, with its
// headers complete. A larger file is streamed to the object store, in
// whole chunks, from then on. So an open file costs what it holds, and a
// task of many small types (a packed _since task) many small buffers
// rather than a chunk each.
type spool struct {
	chunk   int // the size that starts streaming
	pending []byte
	// Once streaming:
	pw   *io.PipeWriter
	out  *bufio.Writer // over pw: the gzip writer's writes are small
	done chan error
	// put stores a streamed file, on a goroutine of its own.
	put func(r io.Reader) error
}

func (p *spool) Write(b []byte) (int, error) {
	if p.pw != nil {
		return p.out.Write(b)
	}
	p.pending = append(p.pending, b...)
	if len(p.pending) >= p.chunk {
		pr, pw := io.Pipe()
		p.pw, p.out, p.done = pw, bufio.NewWriterSize(pw, 64<<10), make(chan error, 1)
		held := p.pending
		p.pending = nil
		go func() {
			err := p.put(fullReads{io.MultiReader(bytes.NewReader(held), pr)})
			pr.CloseWithError(err) // unblocks the writer side if Put stopped early
			p.done <- err
		}()
	}
	return len(b), nil
}

// streaming tells whether the spool's bytes went to a Put already.
func (p *spool) streaming() bool { return p.pw != nil }

// end ends a streaming Put, with the error that stops it if err is not
// nil, and returns the Put's error.
func (p *spool) end(err error) error {
	if err == nil {
		err = p.out.Flush()
	}
	if err != nil {
		p.pw.CloseWithError(err)
	} else {
		p.pw.Close()
	}
	return <-p.done
}

func newFileSet(store jetstream.ObjectStore, task streams.Task, attempt uint64, compress bool, chunk uint32) *fileSet {
	return &fileSet{store: store, task: task, attempt: attempt, compress: compress, chunk: chunk, token: attemptToken(),
		open: map[string]*file{}, parts: map[string]int{}, slots: make(chan struct{}, smallPuts)}
}

// attemptToken is a short random name for one attempt. Delivery counts
// alone can repeat (a consumer's state restored from before a crash), and
// two attempts must never write the same object.
func attemptToken() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// write appends one resource line to the current file of kind and type,
// rolling over first when the file is full.
func (s *fileSet) write(ctx context.Context, typ, kind string, line []byte) error {
	key := kind + "/" + typ
	f := s.open[key]
	if f == nil {
		s.parts[key]++
		name := streams.PartName(kind, typ, s.task.TaskID, s.attempt, s.token, s.parts[key])
		fileType := typ
		if kind == streams.KindDeleted {
			fileType = "Bundle"
		}
		f = s.start(ctx, name, kind, fileType)
		s.open[key] = f
	}
	if _, err := f.lines.Write(line); err != nil {
		return fmt.Errorf("write %s: %w", f.name, err)
	}
	if err := f.lines.WriteByte('\n'); err != nil {
		return fmt.Errorf("write %s: %w", f.name, err)
	}
	f.count++
	f.bytes += int64(len(line)) + 1
	if f.count >= s.task.MaxFileResources || f.bytes >= s.task.MaxFileBytes {
		delete(s.open, key)
		return s.finish(ctx, f)
	}
	return nil
}

// writeDeleted records a deletion as a transaction Bundle line.
func (s *fileSet) writeDeleted(ctx context.Context, typ, id string) error {
	line := make([]byte, 0, 160)
	line = append(line, `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":`...)
	line = strconv.AppendQuote(line, typ+"/"+id)
	line = append(line, `}}]}`...)
	return s.write(ctx, typ, streams.KindDeleted, line)
}

// gzipLevel is the compression of stored files: the fastest, which still
// shrinks FHIR JSON several times over.
const gzipLevel = gzip.BestSpeed

func (s *fileSet) start(ctx context.Context, name, kind, typ string) *file {
	f := &file{name: name, kind: kind, typ: typ, out: &spool{chunk: int(s.chunk)}}
	if s.compress {
		f.gz, _ = gzip.NewWriterLevel(f.out, gzipLevel) // a valid level never errs
		f.lines = bufio.NewWriterSize(f.gz, 64<<10)
	} else {
		f.lines = bufio.NewWriterSize(f.out, 64<<10)
	}
	meta := s.meta(f)
	meta.Opts = &jetstream.ObjectMetaOptions{ChunkSize: s.chunk}
	f.out.put = func(r io.Reader) error {
		_, err := s.store.Put(ctx, meta, r)
		return err
	}
	s.written = append(s.written, meta.Name) // abort deletes it, stored or not
	return f
}

// meta is the object's metadata: its name and, when it is compressed, its
// encoding, and once the file is complete its decompressed size.
func (s *fileSet) meta(f *file) jetstream.ObjectMeta {
	meta := jetstream.ObjectMeta{Name: streams.ObjectName(s.task.JobID, f.name)}
	if f.gz != nil {
		meta.Headers = nats.Header{streams.HeaderContentEncoding: []string{"gzip"}}
	}
	return meta
}

// fullReads fills each read whole, short only at the end: the object
// store cuts a chunk per read, and a pipe's read returns one write, which
// may be far smaller than a chunk.
type fullReads struct{ r io.Reader }

func (f fullReads) Read(p []byte) (int, error) {
	n, err := io.ReadFull(f.r, p)
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return n, err
}

// finish ends a file and stores it: in one message when it never filled a
// chunk (storeSmall, which close waits for), else by ending its stream and
// then, when it is compressed, storing its decompressed size with it.
// Until then a streamed object cannot be served (its size is missing),
// but no result names it yet either.
func (s *fileSet) finish(ctx context.Context, f *file) error {
	err := f.lines.Flush()
	if err == nil && f.gz != nil {
		err = f.gz.Close()
	}
	if !f.out.streaming() {
		if err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
		meta := s.meta(f)
		if f.gz != nil {
			meta.Headers.Set(streams.HeaderIdentityLength, strconv.FormatInt(f.bytes, 10))
		}
		meta.Opts = &jetstream.ObjectMetaOptions{ChunkSize: uint32(max(len(f.out.pending), 1))}
		s.storeSmall(ctx, f.name, meta, f.out.pending)
		f.out.pending = nil
	} else {
		if perr := f.out.end(err); perr != nil {
			return fmt.Errorf("store %s: %w", f.name, perr)
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
		if f.gz != nil {
			meta := s.meta(f)
			meta.Headers.Set(streams.HeaderIdentityLength, strconv.FormatInt(f.bytes, 10))
			if err := s.store.UpdateMeta(ctx, meta.Name, meta); err != nil {
				return fmt.Errorf("store the size of %s: %w", f.name, err)
			}
		}
	}
	s.files = append(s.files, streams.File{Name: f.name, Kind: f.kind, Type: f.typ, Count: f.count, Bytes: f.bytes})
	return nil
}

// writeIndex stores the attempt's attachment index, the sorted ids of
// the Binaries its files name, one per line (see
// streams.TaskResult.AttachmentIndex); nothing when ids is empty. Its name
// carries the attempt's token, so attempts never share one, and does not
// end in .ndjson, so the file route never serves it.
func (s *fileSet) writeIndex(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	name := streams.AttachmentIndexName(s.task.TaskID, s.attempt, s.token)
	obj := streams.ObjectName(s.task.JobID, name)
	s.written = append(s.written, obj)
	var b bytes.Buffer
	for _, id := range ids {
		b.WriteString(id)
		b.WriteByte('\n')
	}
	if _, err := s.store.PutBytes(ctx, obj, b.Bytes()); err != nil {
		return fmt.Errorf("store attachment index %s: %w", name, err)
	}
	s.index = name
	return nil
}

// storeSmall stores a file smaller than a chunk, in one message, on a
// goroutine of its own: a task of many small files (a packed _since task,
// a type per file) waits for their round trips to the object store once,
// not once per file. At most smallPuts are in flight; close waits for all.
func (s *fileSet) storeSmall(ctx context.Context, name string, meta jetstream.ObjectMeta, data []byte) {
	s.slots <- struct{}{}
	s.puts.Go(func() {
		defer func() { <-s.slots }()
		if _, err := s.store.Put(ctx, meta, bytes.NewReader(data)); err != nil {
			s.putMu.Lock()
			defer s.putMu.Unlock()
			if s.putErr == nil {
				s.putErr = fmt.Errorf("store %s: %w", name, err)
			}
		}
	})
}

// stored waits for the small files being stored and returns the first
// error of any.
func (s *fileSet) stored() error {
	s.puts.Wait()
	s.putMu.Lock()
	defer s.putMu.Unlock()
	return s.putErr
}

// close finishes every open file and waits until every file is stored.
func (s *fileSet) close(ctx context.Context) error {
	for key, f := range s.open {
		delete(s.open, key)
		if err := s.finish(ctx, f); err != nil {
			_ = s.stored()
			return err
		}
	}
	return s.stored()
}

// abort stops open files and deletes everything this attempt stored.
func (s *fileSet) abort(ctx context.Context) {
	for key, f := range s.open {
		delete(s.open, key)
		if f.out.streaming() {
			_ = f.out.end(context.Canceled)
		}
	}
	_ = s.stored()
	for _, name := range s.written {
		_ = s.store.Delete(ctx, name)
	}
}
