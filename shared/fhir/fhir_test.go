package fhir

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestFHIRInspect(t *testing.T) {
	cases := []struct {
		body, wantErr string
		requireID     bool
	}{
		{`{"resourceType":"Patient","id":"p1"}`, "", true},
		{`{"resourceType":"Patient"}`, "", false},
		{`{"resourceType":"Patient"}`, "id is missing", true},
		{`not json`, "not valid JSON", true},
		{`[1,2]`, "not a JSON object", true},
		// What the ingester's meta rewrite and a client could read
		// differently (found by FuzzInspectSetMeta).
		{`{"resourceType":"Patient","id":"p1","id":"p2"}`, `member "id" appears twice`, true},
		{`{"resourceType":"Patient","id":"p1","m\u0065ta":{}}`, `member name "m\u0065ta" is written with escapes`, true},
		{`{"resourceType":"Patient","meta":{"versionId":"1","versionId":"2"}}`, `meta: member "versionId" appears twice`, false},
		{`{"resourceType":"Patient","meta":{"v\u0065rsionId":"9"}}`, `meta: member name "v\u0065rsionId" is written with escapes`, false},
		{`{"resourceType":"Patient","meta":5}`, "meta is not a JSON object", false},
		{`{"resourceType":"Patient","meta":null}`, "", false},
		{`{"id":"x"}`, "resourceType is missing", true},
		{`{"resourceType":"Patiant","id":"x"}`, `"Patiant" is not an R4 resource type`, true},
		{`{"resourceType":"Patient","id":"a/b"}`, "not a valid FHIR id", true},
		{`{"resourceType":7,"id":"x"}`, "resourceType is not a string", true},
		{`{"resourceType":"Patient","id":""}`, "not a valid FHIR id", true},
	}
	for _, c := range cases {
		_, err := Inspect([]byte(c.body), c.requireID)
		if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("Inspect(%s) error = %v, want %q", c.body, err, c.wantErr)
		}
	}
}

func TestFHIRSetMetaKeepsEverythingElse(t *testing.T) {
	cases := []struct{ in, want string }{
		{`{"resourceType":"Patient","id":"p","gender":"male"}`,
			`{"resourceType":"Patient","id":"p","meta":{"versionId":"7","lastUpdated":"T"},"gender":"male"}`},
		{`{"resourceType":"Patient","id":"p","meta":{"versionId":"1","profile":["x"],"lastUpdated":"old"},"a":{"b":"}"}}`,
			`{"resourceType":"Patient","id":"p","meta":{"versionId":"7","lastUpdated":"T","profile":["x"]},"a":{"b":"}"}}`},
		{` { "resourceType" : "Basic" , "x" : [1, "a\"b", {"y": null}] } `,
			`{"resourceType":"Basic","x":[1, "a\"b", {"y": null}],"meta":{"versionId":"7","lastUpdated":"T"}}`},
		{`{"resourceType":"Patient","meta":null,"id":"p"}`,
			`{"resourceType":"Patient","meta":{"versionId":"7","lastUpdated":"T"},"id":"p"}`},
	}
	for _, c := range cases {
		got, err := SetMeta(nil, []byte(c.in), "7", "T")
		if err != nil {
			t.Fatalf("SetMeta(%s): %v", c.in, err)
		}
		if string(got) != c.want {
			t.Errorf("SetMeta(%s)\n got %s\nwant %s", c.in, got, c.want)
		}
		if !json.Valid(got) {
			t.Errorf("SetMeta(%s) produced invalid JSON", c.in)
		}
	}
}

func TestFHIRInstants(t *testing.T) {
	good := map[string]string{
		"2024-03-05T14:07:11Z":              "2024-03-05T14:07:11.000000Z",
		"2024-03-05T09:07:11.512345-05:00":  "2024-03-05T14:07:11.512345Z",
		"2024-03-05T14:07:11.1234567+00:00": "2024-03-05T14:07:11.123456Z", // truncated, never rounded up
	}
	for in, want := range good {
		ts, err := ParseInstant(in)
		if err != nil {
			t.Errorf("ParseInstant(%q): %v", in, err)
			continue
		}
		if got := FormatInstant(ts); got != want {
			t.Errorf("FormatInstant(ParseInstant(%q)) = %q, want %q", in, got, want)
		}
	}
	for _, bad := range []string{"2024-03-05", "2024-03-05T14:07Z", "2024-03-05T14:07:11", "2024-03-05 14:07:11Z", "yesterday", "2024-13-05T14:07:11Z"} {
		if _, err := ParseInstant(bad); err == nil {
			t.Errorf("ParseInstant(%q) accepted an invalid instant", bad)
		}
	}
	if got := FormatInstant(time.Unix(0, 1999).UTC()); got != "1970-01-01T00:00:00.000001Z" {
		t.Errorf("FormatInstant rounds: %s", got)
	}
}

func TestFHIRResourceTypes(t *testing.T) {
	types := ResourceTypes()
	if len(types) != 146 {
		t.Errorf("R4 has 146 resource types, list has %d", len(types))
	}
	for _, ty := range []string{"Patient", "ExplanationOfBenefit", "VisionPrescription", "Account"} {
		if !IsResourceType(ty) {
			t.Errorf("%s missing", ty)
		}
	}
}

func TestFHIRSetID(t *testing.T) {
	cases := map[string]string{
		`{"resourceType":"Patient","gender":"male"}`:         `{"resourceType":"Patient","id":"n1","gender":"male"}`,
		`{"resourceType":"Patient","id":"old","gender":"x"}`: `{"resourceType":"Patient","id":"n1","gender":"x"}`,
		`{"gender":"x","resourceType":"Patient"}`:            `{"gender":"x","resourceType":"Patient","id":"n1"}`,
	}
	for in, want := range cases {
		got, err := SetID([]byte(in), "n1")
		if err != nil || string(got) != want {
			t.Errorf("SetID(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
}
