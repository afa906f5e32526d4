package api

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

func TestAPIParseKickoff(t *testing.T) {
	utc := func(y int, mo time.Month, d, h, mi, s, ns int) time.Time {
		return time.Date(y, mo, d, h, mi, s, ns, time.UTC)
	}
	type P = map[string][]string
	cases := []struct {
		name    string
		params  P
		lenient bool

		err         *wantErr
		wantTypes   []string
		wantSince   time.Time
		wantIgnored []string // one substring per expected entry, in order
	}{
		{name: "no parameters", params: P{}},

		// _outputFormat: every NDJSON spelling, in both modes.
		{name: "format application/fhir+ndjson", params: P{"_outputFormat": {"application/fhir+ndjson"}}},
		{name: "format application/ndjson", params: P{"_outputFormat": {"application/ndjson"}}},
		{name: "format ndjson", params: P{"_outputFormat": {"ndjson"}}},
		{name: "format with + decoded as space", params: P{"_outputFormat": {"application/fhir ndjson"}}},
		{name: "format ndjson lenient", params: P{"_outputFormat": {"ndjson"}}, lenient: true},
		{name: "format text/csv strict", params: P{"_outputFormat": {"text/csv"}},
			err: &wantErr{400, fhir.CodeNotSupported, []string{`"text/csv"`, "_outputFormat"}}},
		{name: "format application/fhir+json strict", params: P{"_outputFormat": {"application/fhir+json"}},
			err: &wantErr{400, fhir.CodeNotSupported, []string{`"application/fhir+json"`}}},
		{name: "format empty strict", params: P{"_outputFormat": {""}},
			err: &wantErr{400, fhir.CodeNotSupported, []string{`_outputFormat ""`}}},
		{name: "format text/csv lenient", params: P{"_outputFormat": {"text/csv"}}, lenient: true,
			wantIgnored: []string{`"text/csv"`}},
		{name: "format twice strict", params: P{"_outputFormat": {"ndjson", "ndjson"}},
			err: &wantErr{400, fhir.CodeInvalid, []string{"_outputFormat", "only once"}}},

		// _since.
		{name: "since Z", params: P{"_since": {"2020-01-02T03:04:05Z"}},
			wantSince: utc(2020, 1, 2, 3, 4, 5, 0)},
		{name: "since +05:00 arriving as space", params: P{"_since": {"2020-01-01T00:00:00 05:00"}},
			wantSince: utc(2019, 12, 31, 19, 0, 0, 0)},
		{name: "since +05:00 literal", params: P{"_since": {"2020-01-01T00:00:00+05:00"}},
			wantSince: utc(2019, 12, 31, 19, 0, 0, 0)},
		{name: "since -05:00", params: P{"_since": {"2020-01-01T00:00:00-05:00"}},
			wantSince: utc(2020, 1, 1, 5, 0, 0, 0)},
		{name: "since fractional Z", params: P{"_since": {"2020-01-02T03:04:05.123Z"}},
			wantSince: utc(2020, 1, 2, 3, 4, 5, 123000000)},
		{name: "since fractional nanoseconds with space offset", params: P{"_since": {"2020-01-02T03:04:05.123456789 01:30"}},
			wantSince: utc(2020, 1, 2, 1, 34, 5, 123456789)},
		{name: "since lenient valid", params: P{"_since": {"2020-01-02T03:04:05Z"}}, lenient: true,
			wantSince: utc(2020, 1, 2, 3, 4, 5, 0)},
		{name: "since word strict", params: P{"_since": {"yesterday"}},
			err: &wantErr{400, fhir.CodeInvalid, []string{"_since", `"yesterday"`}}},
		{name: "since word lenient is still refused", params: P{"_since": {"yesterday"}}, lenient: true,
			err: &wantErr{400, fhir.CodeInvalid, []string{"_since", `"yesterday"`}}},
		{name: "since date only lenient is refused", params: P{"_since": {"2020-01-01"}}, lenient: true,
			err: &wantErr{400, fhir.CodeInvalid, []string{"_since", "2020-01-01"}}},
		{name: "since without zone lenient is refused", params: P{"_since": {"2020-01-01T00:00:00"}}, lenient: true,
			err: &wantErr{400, fhir.CodeInvalid, []string{"_since"}}},
		{name: "since month 13 lenient is refused", params: P{"_since": {"2020-13-01T00:00:00Z"}}, lenient: true,
			err: &wantErr{400, fhir.CodeInvalid, []string{"_since"}}},
		{name: "since empty lenient is refused", params: P{"_since": {""}}, lenient: true,
			err: &wantErr{400, fhir.CodeInvalid, []string{"_since"}}},
		{name: "since twice strict", params: P{"_since": {"2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z"}},
			err: &wantErr{400, fhir.CodeInvalid, []string{"_since", "only once"}}},
		{name: "since twice lenient is still refused (ignoring would widen)", params: P{"_since": {"2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z"}}, lenient: true,
			err: &wantErr{400, fhir.CodeInvalid, []string{"_since", "only once"}}},

		// _type.
		{name: "type single", params: P{"_type": {"Patient"}}, wantTypes: []string{"Patient"}},
		{name: "type repeated and comma lists", params: P{"_type": {"Patient", "Observation,Patient", " Device , Observation"}},
			wantTypes: []string{"Device", "Observation", "Patient"}},
		{name: "type stray commas", params: P{"_type": {",Patient,,", "Patient,"}}, wantTypes: []string{"Patient"}},
		{name: "type comma list lenient", params: P{"_type": {"Observation,Condition"}}, lenient: true,
			wantTypes: []string{"Condition", "Observation"}},
		{name: "type unknown strict", params: P{"_type": {"Patiant"}},
			err: &wantErr{400, fhir.CodeNotSupported, []string{`"Patiant"`}}},
		{name: "type unknown among known strict", params: P{"_type": {"Patient,Patiant"}},
			err: &wantErr{400, fhir.CodeNotSupported, []string{`"Patiant"`}}},
		{name: "type wrong case strict", params: P{"_type": {"patient"}},
			err: &wantErr{400, fhir.CodeNotSupported, []string{`"patient"`}}},
		{name: "type one unknown one known lenient", params: P{"_type": {"Patient,Patiant"}}, lenient: true,
			wantTypes: []string{"Patient"}, wantIgnored: []string{`"Patiant"`}},
		{name: "type unknown and known in separate values lenient", params: P{"_type": {"Patiant", "Observation"}}, lenient: true,
			wantTypes: []string{"Observation"}, wantIgnored: []string{`"Patiant"`}},
		{name: "type only unknown lenient does not widen", params: P{"_type": {"Patiant"}}, lenient: true,
			err: &wantErr{400, fhir.CodeNotSupported, []string{`"Patiant"`}}},
		{name: "type several unknown lenient does not widen", params: P{"_type": {"Patiant,Foo", "Bar"}}, lenient: true,
			err: &wantErr{400, fhir.CodeNotSupported, []string{"_type"}}},
		{name: "type empty strict", params: P{"_type": {""}},
			err: &wantErr{400, fhir.CodeInvalid, []string{"_type is empty"}}},
		{name: "type empty lenient", params: P{"_type": {""}}, lenient: true,
			err: &wantErr{400, fhir.CodeInvalid, []string{"_type is empty"}}},
		{name: "type only commas and blanks", params: P{"_type": {" , ,", ""}},
			err: &wantErr{400, fhir.CodeInvalid, []string{"_type is empty"}}},

		// Parameters the server does not support.
		{name: "unknown parameter strict", params: P{"_foo": {"bar"}},
			err: &wantErr{400, fhir.CodeNotSupported, []string{"_foo"}}},
		{name: "unknown parameter beside valid ones strict", params: P{"_type": {"Patient"}, "_since": {"2020-01-01T00:00:00Z"}, "_foo": {"bar"}},
			err: &wantErr{400, fhir.CodeNotSupported, []string{"_foo"}}},
		{name: "_elements accepted", params: P{"_elements": {"Patient.id,name", "birthDate"}}},
		{name: "_elements nested path strict", params: P{"_elements": {"Patient.name.family"}},
			err: &wantErr{400, fhir.CodeInvalid, []string{"_elements", "Patient.name.family"}}},
		{name: "_elements unknown type strict", params: P{"_elements": {"Patiant.id"}},
			err: &wantErr{400, fhir.CodeInvalid, []string{"_elements", "Patiant"}}},
		{name: "_typeFilter accepted", params: P{"_typeFilter": {"Patient?active=true", "Observation?code=http://loinc.org|8302-2,Observation?status=final"}}},
		{name: "_typeFilter with _sort strict", params: P{"_typeFilter": {"Patient?_sort=name"}},
			err: &wantErr{400, fhir.CodeNotSupported, []string{"_typeFilter", "_sort"}}},
		{name: "_typeFilter with an unsupported parameter strict", params: P{"_typeFilter": {"Patient?eye-color=blue"}},
			err: &wantErr{400, fhir.CodeNotSupported, []string{"_typeFilter", "eye-color"}}},
		{name: "patient strict", params: P{"patient": {"Patient/1"}},
			err: &wantErr{400, fhir.CodeNotSupported, []string{"patient"}}},
		{name: "includeAssociatedData unknown value strict", params: P{"includeAssociatedData": {"LatestProvenanceResources,AllTheThings"}},
			err: &wantErr{400, fhir.CodeNotSupported, []string{"includeAssociatedData", `"AllTheThings"`}}},
		{name: "unknown parameter lenient", params: P{"_foo": {"bar"}}, lenient: true,
			wantIgnored: []string{"_foo"}},
		{name: "several unknown parameters lenient, one entry each", lenient: true,
			params:    P{"_type": {"Patient"}, "_foo": {"bar"}, "includeAssociatedData": {"_myPreset"}, "zzz": {"1"}},
			wantTypes: []string{"Patient"}, wantIgnored: []string{"_foo", "includeAssociatedData", "zzz"}},
		{name: "unknown parameter repeated lenient is one entry", params: P{"_foo": {"1", "2"}}, lenient: true,
			wantIgnored: []string{"_foo"}},
		{name: "everything lenient", lenient: true,
			params: P{
				"_outputFormat": {"text/csv"}, "_since": {"2020-01-01T00:00:00 05:00"},
				"_type": {"Patient,Patiant", "Device"}, "_foo": {"x"},
			},
			wantTypes: []string{"Device", "Patient"}, wantSince: utc(2019, 12, 31, 19, 0, 0, 0),
			wantIgnored: []string{"_foo", `"text/csv"`, `"Patiant"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := parseKickoff(tc.params, tc.lenient)
			if tc.err != nil {
				checkProblem(t, err, *tc.err)
				return
			}
			if err != nil {
				t.Fatalf("parseKickoff: %v", err)
			}
			if !reflect.DeepEqual(req.types, tc.wantTypes) {
				t.Errorf("types %q, want %q", req.types, tc.wantTypes)
			}
			if !req.since.Equal(tc.wantSince) {
				t.Errorf("since %v, want %v", req.since, tc.wantSince)
			}
			if !req.since.IsZero() && req.since.Location() != time.UTC {
				t.Errorf("since %v is not in UTC", req.since)
			}
			if len(req.ignored) != len(tc.wantIgnored) {
				t.Fatalf("ignored %q, want %d entries naming %q", req.ignored, len(tc.wantIgnored), tc.wantIgnored)
			}
			for i, w := range tc.wantIgnored {
				if !strings.Contains(req.ignored[i], w) || !strings.Contains(req.ignored[i], "ignored") {
					t.Errorf("ignored[%d] = %q, want it to name %q and say it was ignored", i, req.ignored[i], w)
				}
			}
		})
	}
}

// In lenient mode every dropped _type must be reported, not only the first.
func TestAPIParseKickoffLenientReportsEveryUnknownType(t *testing.T) {
	req, err := parseKickoff(map[string][]string{"_type": {"Foo,Patient", "Bar"}}, true)
	if err != nil {
		t.Fatalf("parseKickoff: %v", err)
	}
	if !reflect.DeepEqual(req.types, []string{"Patient"}) {
		t.Fatalf("types %q, want [Patient]", req.types)
	}
	all := strings.Join(req.ignored, "\n")
	if !strings.Contains(all, `"Foo"`) || !strings.Contains(all, `"Bar"`) {
		t.Errorf("lenient _type with several unknown types must report each in ignored, got: %s", all)
	}
}

func TestAPIParsePrefer(t *testing.T) {
	cases := []struct {
		name    string
		values  []string
		lenient bool
		err     *wantErr
	}{
		{name: "missing", values: nil},
		{name: "empty value", values: []string{""}},
		{name: "respond-async", values: []string{"respond-async"}},
		{name: "respond-async strict", values: []string{"respond-async, handling=strict"}},
		{name: "unrelated preferences", values: []string{"wait=10, return=minimal"}},
		{name: "respond-async lenient", values: []string{"respond-async, handling=lenient"}, lenient: true},
		{name: "no space after comma", values: []string{"respond-async,handling=lenient"}, lenient: true},
		{name: "lenient alone", values: []string{"handling=lenient"}, lenient: true},
		{name: "lenient in a second header value", values: []string{"respond-async", "handling=lenient"}, lenient: true},
		{name: "upper case", values: []string{"HANDLING=LENIENT"}, lenient: true},
		{name: "mixed case", values: []string{"Respond-Async, Handling=Lenient"}, lenient: true},
		{name: "quoted", values: []string{`handling="lenient"`}, lenient: true},
		{name: "surrounding blanks", values: []string{"  handling=lenient  "}, lenient: true},
		{name: "bogus", values: []string{"handling=bogus"},
			err: &wantErr{400, fhir.CodeInvalid, []string{"bogus"}}},
		{name: "bogus in a second header value", values: []string{"respond-async", "handling=bogus"},
			err: &wantErr{400, fhir.CodeInvalid, []string{"bogus"}}},
		{name: "empty handling", values: []string{"handling="},
			err: &wantErr{400, fhir.CodeInvalid, []string{"handling"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var vals [][]byte
			for _, v := range tc.values {
				vals = append(vals, []byte(v))
			}
			lenient, err := parsePrefer(vals)
			if tc.err != nil {
				checkProblem(t, err, *tc.err)
				return
			}
			if err != nil {
				t.Fatalf("parsePrefer(%q): %v", tc.values, err)
			}
			if lenient != tc.lenient {
				t.Errorf("parsePrefer(%q) lenient = %v, want %v", tc.values, lenient, tc.lenient)
			}
		})
	}
}

func TestAPICheckAccept(t *testing.T) {
	cases := []struct {
		accept string
		ok     bool
	}{
		{"", true},
		{"   ", true},
		{"application/fhir+json", true},
		{"application/json", true},
		{"*/*", true},
		{"application/*", true},
		{"APPLICATION/FHIR+JSON", true},
		{"application/fhir+json; charset=utf-8", true},
		{"text/html, application/fhir+json;q=0.9", true},
		{"text/html,application/json", true},
		{"text/html", false},
		{"application/xml", false},
		{"application/fhir+xml", false},
		{"text/html, application/xml;q=0.9", false},
		{";;;", false},
	}
	for _, tc := range cases {
		t.Run(tc.accept, func(t *testing.T) {
			err := checkAccept(tc.accept)
			if tc.ok {
				if err != nil {
					t.Errorf("checkAccept(%q): %v", tc.accept, err)
				}
				return
			}
			checkProblem(t, err, wantErr{400, fhir.CodeInvalid, []string{tc.accept, "application/fhir+json"}})
		})
	}
}

// TestAPIKickoffHandlerRefusals drives the kick-off handler through Fiber's
// real header and query decoding for requests refused before anything
// touches JetStream (so the Server needs no NATS).
func TestAPIKickoffHandlerRefusals(t *testing.T) {
	s := &Server{deps: Deps{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}}
	app := fiber.New(fiber.Config{ErrorHandler: s.errorHandler})
	app.Get("/$export", s.kickoff(levelSystem))
	app.Post("/$export", s.kickoff(levelSystem))

	cases := []struct {
		name    string
		target  string
		headers []string
		code    string
		names   string
		notName string
		method  string
		body    string
	}{
		{name: "html accept", target: "/$export", headers: []string{"Accept", "text/html"},
			code: fhir.CodeInvalid, names: "text/html"},
		{name: "bogus prefer in second header", target: "/$export",
			headers: []string{"Prefer", "respond-async", "Prefer", "handling=bogus"},
			code:    fhir.CodeInvalid, names: "bogus"},
		// Sorted, _outputFormat is checked before _type: a raw '+' decoded
		// as a space must pass, so the refusal names the type.
		{name: "raw plus in output format", target: "/$export?_outputFormat=application/fhir+ndjson&_type=Patiant",
			code: fhir.CodeNotSupported, names: "Patiant", notName: "_outputFormat"},
		{name: "raw plus in since offset", target: "/$export?_since=2020-01-01T00:00:00+05:00&_type=Patiant",
			code: fhir.CodeNotSupported, names: "Patiant", notName: "_since"},
		{name: "repeated type values are collected", target: "/$export?_type=Patient&_type=Patiant",
			code: fhir.CodeNotSupported, names: "Patiant"},
		{name: "since twice", target: "/$export?_since=2020-01-01T00:00:00Z&_since=2021-01-01T00:00:00Z",
			code: fhir.CodeInvalid, names: "only once"},
		{name: "unknown parameter", target: "/$export?_foo=bar",
			code: fhir.CodeNotSupported, names: "_foo"},
		{name: "lenient still refuses bad since", target: "/$export?_since=yesterday",
			headers: []string{"Prefer", "respond-async, handling=lenient"},
			code:    fhir.CodeInvalid, names: "yesterday"},
		{name: "POST with parameters in the query string", method: "POST", target: "/$export?_since=2020-01-01T00:00:00Z",
			headers: []string{"Content-Type", "application/fhir+json"}, body: `{"resourceType":"Parameters"}`,
			code: fhir.CodeInvalid, names: "_since"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = "GET"
			}
			req := httptest.NewRequest(method, tc.target, strings.NewReader(tc.body))
			for i := 0; i+1 < len(tc.headers); i += 2 {
				req.Header.Add(tc.headers[i], tc.headers[i+1])
			}
			resp, err := app.Test(req, -1)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 400 || resp.Header.Get("Content-Type") != "application/fhir+json" {
				t.Fatalf("%d %q %s, want 400 application/fhir+json", resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
			var oo fhir.OperationOutcome
			if err := json.Unmarshal(body, &oo); err != nil || len(oo.Issue) != 1 {
				t.Fatalf("body %s is not a one-issue OperationOutcome: %v", body, err)
			}
			if oo.Issue[0].Code != tc.code || !strings.Contains(oo.Issue[0].Diagnostics, tc.names) {
				t.Errorf("issue %+v, want code %s naming %q", oo.Issue[0], tc.code, tc.names)
			}
			if tc.notName != "" && strings.Contains(oo.Issue[0].Diagnostics, tc.notName) {
				t.Errorf("issue %+v names %q, which is valid", oo.Issue[0], tc.notName)
			}
		})
	}
}

func TestAPIParseKickoffIncludeAssociatedData(t *testing.T) {
	const latest, relevant = "LatestProvenanceResources", "RelevantProvenanceResources"
	cases := []struct {
		name    string
		values  []string
		lenient bool
		want    string
		err     *wantErr
		ignored []string
	}{
		{name: "latest", values: []string{latest}, want: latest},
		{name: "relevant", values: []string{relevant}, want: relevant},
		{name: "both in one list: the least restrictive wins", values: []string{latest + "," + relevant}, want: relevant},
		{name: "both repeated: the least restrictive wins", values: []string{relevant, latest}, want: relevant},
		{name: "a value twice", values: []string{latest, latest}, want: latest},
		{name: "unknown value strict", values: []string{"SomeProvenance"},
			err: &wantErr{400, fhir.CodeNotSupported, []string{`"SomeProvenance"`}}},
		{name: "custom value strict", values: []string{relevant + ",_myPreset"},
			err: &wantErr{400, fhir.CodeNotSupported, []string{`"_myPreset"`, "custom"}}},
		{name: "codes are case-sensitive", values: []string{"latestprovenanceresources"},
			err: &wantErr{400, fhir.CodeNotSupported, []string{`"latestprovenanceresources"`}}},
		{name: "empty strict", values: []string{""},
			err: &wantErr{400, fhir.CodeInvalid, []string{"includeAssociatedData is empty"}}},
		{name: "unknown value lenient keeps the known ones", values: []string{"_myPreset," + latest, "Other"}, lenient: true,
			want: latest, ignored: []string{`"_myPreset"`, `"Other"`}},
		{name: "only unknown values lenient", values: []string{"_x"}, lenient: true, ignored: []string{`"_x"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := parseKickoff(map[string][]string{"includeAssociatedData": tc.values}, tc.lenient)
			if tc.err != nil {
				checkProblem(t, err, *tc.err)
				return
			}
			if err != nil {
				t.Fatalf("parseKickoff: %v", err)
			}
			if req.associated != tc.want {
				t.Errorf("associated %q, want %q", req.associated, tc.want)
			}
			if len(req.ignored) != len(tc.ignored) {
				t.Fatalf("ignored %q, want %d entries naming %q", req.ignored, len(tc.ignored), tc.ignored)
			}
			for i, w := range tc.ignored {
				if !strings.Contains(req.ignored[i], w) || !strings.Contains(req.ignored[i], "includeAssociatedData") {
					t.Errorf("ignored[%d] = %q, want it to name includeAssociatedData and %s", i, req.ignored[i], w)
				}
			}
		})
	}
}
