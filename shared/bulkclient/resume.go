package bulkclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
)

// DownloadToFile downloads one file of a manifest to path, resuming what
// an interrupted call left: the bytes arrive in path+".part", and a
// download that finds one asks the server for the rest with a Range
// request (from its last whole line), appending when the server answers
// 206 and starting over when it sends the whole file. Every line is
// checked as Download checks it, and the lines of the whole file against
// the manifest's count, before the part becomes path. A file already at
// path is taken as downloaded. token says whether the bearer token goes
// with the request (a manifest's requiresAccessToken); progress, when set,
// is told the bytes written as they are.
//
// It returns the file's lines and whether it resumed a part.
func (c *Client) DownloadToFile(ctx context.Context, f File, token bool, path string, progress func(bytes int64)) (lines int, resumed bool, err error) {
	if _, err := os.Stat(path); err == nil {
		n, err := countLines(path)
		return n, false, err
	}
	part := path + ".part"
	offset, have, err := wholeLines(part)
	if err != nil {
		return 0, false, err
	}
	out, err := os.OpenFile(part, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, false, err
	}
	defer out.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
	if err != nil {
		return 0, false, fmt.Errorf("download %s: %w", f.URL, err)
	}
	req.Header.Set("Accept", "application/fhir+ndjson")
	if offset > 0 {
		// Ranges count the bytes of the file as it is, not of a gzip
		// encoding: ask for none.
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
		req.Header.Set("Accept-Encoding", "identity")
	} else {
		req.Header.Set("Accept-Encoding", "gzip")
	}
	if token {
		if err := c.authorize(ctx, req); err != nil {
			return 0, false, err
		}
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return 0, false, fmt.Errorf("download %s: %w", f.URL, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		if start, ok := rangeStart(resp.Header.Get("Content-Range")); !ok || start != offset {
			return 0, false, fmt.Errorf("download %s: Content-Range %q for bytes from %d", f.URL, resp.Header.Get("Content-Range"), offset)
		}
		resumed = true
	case resp.StatusCode == http.StatusOK:
		offset, have = 0, 0 // the whole file again
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && offset > 0:
		// The part was whole already: nothing more to fetch.
		resp.Body.Close()
		return c.finishPart(f, part, path, have)
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return 0, false, refusal("download "+f.URL, resp, b)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/fhir+ndjson" && mt != "application/ndjson" {
		return 0, false, fmt.Errorf("download %s: Content-Type %q, want application/fhir+ndjson", f.URL, resp.Header.Get("Content-Type"))
	}
	if err := out.Truncate(offset); err != nil {
		return 0, false, err
	}
	if _, err := out.Seek(offset, io.SeekStart); err != nil {
		return 0, false, err
	}
	body, err := decoded(resp)
	if err != nil {
		return 0, false, fmt.Errorf("download %s: %w", f.URL, err)
	}
	w := bufio.NewWriterSize(out, 1<<20)
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 1<<20), 256<<20)
	n := have
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if line[0] != '{' || !json.Valid(line) {
			return n, resumed, fmt.Errorf("download %s: line %d is not a JSON object", f.URL, n+1)
		}
		n++
		if _, err := w.Write(line); err != nil {
			return n, resumed, err
		}
		if err := w.WriteByte('\n'); err != nil {
			return n, resumed, err
		}
		if progress != nil {
			progress(int64(len(line) + 1))
		}
	}
	// What arrived stays in the part, whole lines or not: the next call
	// resumes from its last whole line.
	if err := w.Flush(); err != nil {
		return n, resumed, err
	}
	if err := sc.Err(); err != nil {
		return n, resumed, fmt.Errorf("download %s: %w", f.URL, err)
	}
	if err := out.Sync(); err != nil {
		return n, resumed, err
	}
	lines, _, err = c.finishPart(f, part, path, n)
	return lines, resumed, err
}

// finishPart checks a complete part's lines against the manifest and
// makes it the file.
func (c *Client) finishPart(f File, part, path string, n int) (int, bool, error) {
	if f.Count != nil && *f.Count != n {
		return n, false, fmt.Errorf("download %s: %d lines, the manifest says %d", f.URL, n, *f.Count)
	}
	if err := os.Rename(part, path); err != nil {
		return n, false, err
	}
	return n, false, nil
}

// wholeLines measures a part file, reading it in chunks: the length of its
// whole lines (a partial last line is cut off) and how many there are. A
// missing part is empty.
func wholeLines(part string) (int64, int, error) {
	f, err := os.Open(part)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var read, end int64
	n := 0
	for {
		k, err := f.Read(buf)
		chunk := buf[:k]
		n += bytes.Count(chunk, []byte{'\n'})
		if i := bytes.LastIndexByte(chunk, '\n'); i >= 0 {
			end = read + int64(i) + 1
		}
		read += int64(k)
		if errors.Is(err, io.EOF) {
			return end, n, nil
		}
		if err != nil {
			return 0, 0, err
		}
	}
}

// countLines counts the lines of a downloaded file.
func countLines(path string) (int, error) {
	_, n, err := wholeLines(path)
	return n, err
}

// rangeStart is the first byte of a Content-Range "bytes a-b/n".
func rangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	first, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(first, 10, 64)
	return n, err == nil
}
