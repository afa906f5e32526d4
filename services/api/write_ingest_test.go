package api

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// patientOfSize returns a one-line Patient of exactly n bytes.
func patientOfSize(t *testing.T, id string, n int) string {
	t.Helper()
	head := `{"resourceType":"Patient","id":"` + id + `","text":{"div":"`
	tail := `"}}`
	pad := n - len(head) - len(tail)
	if pad < 0 {
		t.Fatalf("cannot build a %d-byte Patient", n)
	}
	s := head + strings.Repeat("a", pad) + tail
	if len(s) != n {
		t.Fatalf("built %d bytes, want %d", len(s), n)
	}
	return s
}

func TestAPIValidateInto(t *testing.T) {
	p := func(id string) string { return `{"resourceType":"Patient","id":"` + id + `"}` }
	o := func(id string) string { return `{"resourceType":"Observation","id":"` + id + `","status":"final"}` }
	big := patientOfSize(t, "big", 1<<20+4096) // longer than the 1 MiB read buffer

	cases := []struct {
		name    string
		body    string
		maxLine int
		wantN   int
		err     *wantErr
	}{
		{name: "one line without newline", body: p("a"), wantN: 1},
		{name: "one line with newline", body: p("a") + "\n", wantN: 1},
		{name: "three lines trailing newline", body: p("a") + "\n" + o("b") + "\n" + p("c") + "\n", wantN: 3},
		{name: "blank lines skipped", body: "\n\n" + p("a") + "\n   \n\t\n" + o("b") + "\n\n\n", wantN: 2},
		{name: "crlf line endings", body: p("a") + "\r\n" + o("b") + "\r\n" + p("c"), wantN: 3},
		{name: "crlf blank lines", body: "\r\n" + p("a") + "\r\n\r\n" + o("b") + "\r\n\r\n", wantN: 2},
		{name: "surrounding blanks on a line", body: "  \t" + p("a") + " \t \n", wantN: 1},
		{name: "line longer than the read buffer", body: p("a") + "\n" + big + "\n" + p("c"), maxLine: 2 << 20, wantN: 3},
		{name: "line exactly maxLine at end of body", body: patientOfSize(t, "x", 200), maxLine: 200, wantN: 1},

		{name: "line over maxLine", body: p("a") + "\n" + patientOfSize(t, "x", 300) + "\n" + p("c") + "\n", maxLine: 200,
			err: &wantErr{413, fhir.CodeTooCostly, []string{"line 2", "200"}}},
		{name: "line over maxLine after blank lines", body: p("a") + "\n\n\n" + patientOfSize(t, "x", 300), maxLine: 200,
			err: &wantErr{413, fhir.CodeTooCostly, []string{"line 4"}}},
		{name: "line over the read buffer and maxLine", body: p("a") + "\n" + big + "\n", maxLine: 1 << 20,
			err: &wantErr{413, fhir.CodeTooCostly, []string{"line 2"}}},
		{name: "first line over maxLine", body: patientOfSize(t, "x", 300), maxLine: 200,
			err: &wantErr{413, fhir.CodeTooCostly, []string{"line 1"}}},

		{name: "invalid json in the middle", body: p("a") + "\n" + `{"resourceType":"Patient",` + "\n" + p("c") + "\n",
			err: &wantErr{400, fhir.CodeInvalid, []string{"line 2", "not valid JSON", "nothing"}}},
		{name: "invalid line numbered after blank lines", body: p("a") + "\n\n" + p("bad/id") + "\n" + p("d") + "\n",
			err: &wantErr{400, fhir.CodeInvalid, []string{"line 3", "bad/id"}}},
		{name: "invalid line numbered with crlf", body: p("a") + "\r\n\r\n" + "nope" + "\r\n",
			err: &wantErr{400, fhir.CodeInvalid, []string{"line 3"}}},
		{name: "unknown resource type", body: p("a") + "\n" + `{"resourceType":"Patiant","id":"b"}`,
			err: &wantErr{400, fhir.CodeInvalid, []string{"line 2", "Patiant"}}},
		{name: "missing id", body: `{"resourceType":"Patient"}` + "\n" + p("b"),
			err: &wantErr{400, fhir.CodeInvalid, []string{"line 1", "id is missing"}}},
		{name: "missing resourceType", body: p("a") + "\n" + p("b") + "\n" + `{"id":"c"}`,
			err: &wantErr{400, fhir.CodeInvalid, []string{"line 3", "resourceType"}}},
		{name: "json array", body: `[` + p("a") + `]`,
			err: &wantErr{400, fhir.CodeInvalid, []string{"line 1"}}},
		{name: "two resources on one line", body: p("a") + p("b"),
			err: &wantErr{400, fhir.CodeInvalid, []string{"line 1"}}},

		{name: "empty body", body: "",
			err: &wantErr{400, fhir.CodeInvalid, []string{"no resources"}}},
		{name: "only blank lines", body: "\n \r\n\t\n\n",
			err: &wantErr{400, fhir.CodeInvalid, []string{"no resources"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			maxLine := tc.maxLine
			if maxLine == 0 {
				maxLine = 1 << 20
			}
			var spool bytes.Buffer
			n, err := validateInto(strings.NewReader(tc.body), &spool, maxLine)
			if tc.err != nil {
				checkProblem(t, err, *tc.err)
				if n != 0 {
					t.Errorf("n = %d on error, want 0", n)
				}
				// The spool is buffered and only flushed on success: a
				// refused (small) body leaves nothing in it.
				if spool.Len() != 0 {
					t.Errorf("a refused body left %d bytes in the spool", spool.Len())
				}
				return
			}
			if err != nil {
				t.Fatalf("validateInto: %v", err)
			}
			if n != tc.wantN {
				t.Errorf("n = %d, want %d", n, tc.wantN)
			}
			r := bufio.NewReader(&spool)
			for i := 0; i < n; i++ {
				typ, id, line, err := readSpooled(r)
				if err != nil {
					t.Fatalf("record %d: %v", i, err)
				}
				if h, err := fhir.Inspect(line, true); err != nil || h.ResourceType != typ || h.ID != id {
					t.Errorf("record %d: %s/%s holds %q (%v)", i, typ, id, truncate(line), err)
				}
				if bytes.ContainsAny(line, "\r\n") || !bytes.Equal(line, bytes.TrimSpace(line)) {
					t.Errorf("record %d is not trimmed: %q", i, truncate(line))
				}
			}
			if _, _, _, err := readSpooled(r); !errors.Is(err, io.EOF) {
				t.Errorf("after %d records: %v, want io.EOF", n, err)
			}
		})
	}
}

// A resource of exactly maxLine bytes is not "larger than maxLine bytes",
// whether or not the line ends in a newline.
func TestAPIValidateIntoMaxLineCountsOnlyTheResource(t *testing.T) {
	res := patientOfSize(t, "x", 200)
	for _, end := range []string{"", "\n", "\r\n"} {
		t.Run(fmt.Sprintf("%q", end), func(t *testing.T) {
			n, err := validateInto(strings.NewReader(res+end), io.Discard, 200)
			if err != nil {
				t.Errorf("a %d-byte resource followed by %q is refused with maxLine %d: %v", len(res), end, 200, err)
			}
			if n != 1 {
				t.Errorf("n = %d, want 1", n)
			}
		})
	}
}

func TestAPIReadSpooledRoundTrip(t *testing.T) {
	type rec struct{ typ, id, json string }
	recs := []rec{
		{"Patient", "p1", `{"resourceType":"Patient","id":"p1"}`},
		// Tabs between tokens and escaped newlines and tabs inside strings.
		{"Observation", "o-1.2", "{\"resourceType\":\t\"Observation\",\t\"id\":\"o-1.2\",\"note\":[{\"text\":\"line one\\nline two\\r\\n\\tindented\"}],\t\"status\":\"final\"}"},
		{"Device", "A.b-9", `{"id":"A.b-9","resourceType":"Device","note":[{"text":"tab\there, quote \" and backslash \\ and \u0009"}]}`},
		{"Patient", "p2", `{"resourceType":"Patient","id":"p2","name":[{"text":"Zoë 山田 👩‍⚕️"}],"extension":[{"url":"u","valueString":"a\tb"}]}`},
		{"Condition", strings.Repeat("c", 64), `{"resourceType":"Condition","id":"` + strings.Repeat("c", 64) + `","code":{"text":"\t\n"}}`},
		{"Patient", "big", patientOfSize(t, "big", 1<<20+100)},
		{"Observation", "o2", "{ \"resourceType\" : \"Observation\" ,\t\"id\" : \"o2\" }"},
	}
	// One resource per line; each line ends differently and some carry
	// surrounding blanks, which are not part of the resource.
	var body strings.Builder
	for i, r := range recs {
		line := r.json
		switch i % 3 {
		case 0:
			body.WriteString(line + "\n")
		case 1:
			body.WriteString("  " + line + "\t\r\n\n")
		case 2:
			body.WriteString(line + "\r\n")
		}
	}
	var spool bytes.Buffer
	n, err := validateInto(strings.NewReader(body.String()), &spool, 2<<20)
	if err != nil {
		t.Fatalf("validateInto: %v", err)
	}
	if n != len(recs) {
		t.Fatalf("n = %d, want %d", n, len(recs))
	}
	r := bufio.NewReaderSize(&spool, 1<<20)
	for i, want := range recs {
		wantLine := want.json
		t.Run(want.typ+"/"+want.id[:min(len(want.id), 8)], func(t *testing.T) {
			typ, id, line, err := readSpooled(r)
			if err != nil {
				t.Fatalf("record %d: %v", i, err)
			}
			if typ != want.typ || id != want.id {
				t.Errorf("record %d: %s/%s, want %s/%s", i, typ, id, want.typ, want.id)
			}
			if string(line) != wantLine {
				t.Errorf("record %d bytes differ:\n got %q\nwant %q", i, truncate(line), truncate([]byte(wantLine)))
			}
		})
	}
	if _, _, _, err := readSpooled(r); !errors.Is(err, io.EOF) {
		t.Errorf("after the last record: %v, want io.EOF", err)
	}
}

func TestAPIReadSpooledMalformed(t *testing.T) {
	cases := []struct {
		name  string
		spool string
		want  error // nil: any error
	}{
		{name: "empty", spool: "", want: io.EOF},
		{name: "header without newline", spool: "Patient\tp1\t36", want: io.EOF},
		{name: "truncated body", spool: "Patient\tp1\t36\n{\"resourceType\"", want: io.ErrUnexpectedEOF},
		{name: "header without body", spool: "Patient\tp1\t36\n", want: io.EOF},
		{name: "size not a number", spool: "Patient\tp1\tmany\n{}"},
		{name: "header missing fields", spool: "Patient\n{}"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := readSpooled(bufio.NewReader(strings.NewReader(tc.spool)))
			if err == nil {
				t.Fatalf("readSpooled(%q) succeeded", tc.spool)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("readSpooled(%q): %v, want %v", tc.spool, err, tc.want)
			}
		})
	}
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + fmt.Sprintf("…(%d bytes)", len(b))
	}
	return string(b)
}
