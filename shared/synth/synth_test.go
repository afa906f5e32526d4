package synth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"
)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9\-\.]{1,64}$`)

type emitted struct {
	typ  string
	body []byte
}

// collect runs Generate and copies every body (emit must not retain it).
func collect(t testing.TB, cfg Config) []emitted {
	t.Helper()
	var out []emitted
	err := Generate(context.Background(), cfg, func(typ string, body []byte) error {
		out = append(out, emitted{typ, bytes.Clone(body)})
		return nil
	})
	if err != nil {
		t.Fatalf("Generate(%+v): %v", cfg, err)
	}
	return out
}

func ndjson(t testing.TB, cfg Config) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := WriteNDJSON(context.Background(), cfg, &buf); err != nil {
		t.Fatalf("WriteNDJSON(%+v): %v", cfg, err)
	}
	return buf.Bytes()
}

func TestSynthValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"one patient", Config{Patients: 1}, true},
		{"with group size", Config{Patients: 10, Seed: 3, GroupSize: 2}, true},
		{"zero patients", Config{}, false},
		{"negative patients", Config{Patients: -1}, false},
		{"negative group size", Config{Patients: 5, GroupSize: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			gerr := Generate(context.Background(), tt.cfg, func(string, []byte) error { return nil })
			if (gerr == nil) != tt.ok {
				t.Fatalf("Generate() = %v, want ok=%v", gerr, tt.ok)
			}
			if !tt.ok && Estimate(tt.cfg) != 0 {
				t.Fatalf("Estimate of invalid config = %d, want 0", Estimate(tt.cfg))
			}
		})
	}
}

func TestSynthDeterminism(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"small", Config{Patients: 3, Seed: 1}},
		{"groups", Config{Patients: 150, Seed: 42, GroupSize: 40}},
		{"zero seed", Config{Patients: 60, Seed: 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := ndjson(t, tt.cfg), ndjson(t, tt.cfg)
			if !bytes.Equal(a, b) {
				t.Fatal("two runs with the same Config differ")
			}
			other := tt.cfg
			other.Seed++
			c := ndjson(t, other)
			if bytes.Equal(a, c) {
				t.Fatal("different seeds produced identical output")
			}
			// Not just a cosmetic difference: the Patient ids change.
			if firstID(t, a, "Patient") == firstID(t, c, "Patient") {
				t.Fatal("different seeds produced the same first Patient id")
			}
		})
	}
}

func firstID(t *testing.T, data []byte, typ string) string {
	t.Helper()
	for line := range bytes.Lines(data) {
		var r struct{ ResourceType, ID string }
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatal(err)
		}
		if r.ResourceType == typ {
			return r.ID
		}
	}
	t.Fatalf("no %s in output", typ)
	return ""
}

// required lists top-level elements every resource of a type must carry
// (FHIR R4 required elements plus the ones this generator promises).
var required = map[string][]string{
	"Organization":         {"identifier", "active", "type", "name"},
	"Practitioner":         {"identifier", "name", "gender"},
	"Patient":              {"identifier", "name", "gender", "birthDate", "address", "telecom"},
	"Coverage":             {"status", "beneficiary", "payor"},
	"Encounter":            {"status", "class", "type", "subject", "participant", "period", "serviceProvider"},
	"Condition":            {"clinicalStatus", "verificationStatus", "code", "subject", "encounter", "onsetDateTime"},
	"Observation":          {"status", "category", "code", "subject", "encounter", "effectiveDateTime", "valueQuantity"},
	"Procedure":            {"status", "code", "subject", "encounter", "performedPeriod"},
	"MedicationRequest":    {"status", "intent", "medicationCodeableConcept", "subject", "encounter", "authoredOn", "requester"},
	"Immunization":         {"status", "vaccineCode", "patient", "encounter", "occurrenceDateTime", "primarySource"},
	"Claim":                {"status", "type", "use", "patient", "created", "provider", "priority", "insurance", "item", "total"},
	"ExplanationOfBenefit": {"status", "type", "use", "patient", "created", "insurer", "provider", "outcome", "insurance", "claim"},
	"Group":                {"identifier", "type", "actual", "name", "quantity", "member"},
}

// dateTimeKeys hold clinical dateTimes that must fall within 2010-2024.
var dateTimeKeys = map[string]bool{
	"effectiveDateTime": true, "issued": true, "onsetDateTime": true, "abatementDateTime": true,
	"recordedDate": true, "authoredOn": true, "occurrenceDateTime": true, "created": true,
	"start": true, "end": true,
}

// walk visits every object in v, calling fn with each key/value pair.
func walk(v any, fn func(key string, val any)) {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			fn(k, val)
			walk(val, fn)
		}
	case []any:
		for _, val := range x {
			walk(val, fn)
		}
	}
}

func TestSynthResourcesValid(t *testing.T) {
	cfg := Config{Patients: 300, Seed: 7, GroupSize: 64}
	res := collect(t, cfg)
	seen := map[string]bool{} // "Type/id" of every resource emitted so far
	counts := map[string]int{}
	stage := 0
	for i, r := range res {
		var obj map[string]any
		if err := json.Unmarshal(r.body, &obj); err != nil {
			t.Fatalf("resource %d (%s) is not JSON: %v\n%s", i, r.typ, err, r.body)
		}
		if bytes.ContainsAny(r.body, "\n\r") {
			t.Fatalf("resource %d contains a newline", i)
		}
		if !bytes.HasPrefix(r.body, []byte(`{"resourceType":"`+r.typ+`","id":"`)) {
			t.Fatalf("resource %d does not start with resourceType, id: %.80s", i, r.body)
		}
		rt, _ := obj["resourceType"].(string)
		id, _ := obj["id"].(string)
		if rt != r.typ {
			t.Fatalf("resource %d: resourceType %q, emitted as %q", i, rt, r.typ)
		}
		if !idPattern.MatchString(id) {
			t.Fatalf("resource %d: invalid id %q", i, id)
		}
		if _, ok := obj["meta"]; ok {
			t.Fatalf("resource %s/%s has meta", rt, id)
		}
		for _, k := range required[rt] {
			if _, ok := obj[k]; !ok {
				t.Errorf("%s/%s lacks %q", rt, id, k)
			}
		}
		if _, known := required[rt]; !known {
			t.Fatalf("unexpected resource type %q", rt)
		}
		walk(obj, func(key string, val any) {
			switch {
			case key == "meta":
				t.Errorf("%s/%s has a nested meta", rt, id)
			case key == "reference":
				ref, _ := val.(string)
				typ, rid, ok := strings.Cut(ref, "/")
				if !ok || !idPattern.MatchString(rid) || required[typ] == nil {
					t.Errorf("%s/%s: malformed reference %q", rt, id, ref)
				} else if !seen[ref] {
					t.Errorf("%s/%s: reference %q to a resource not emitted before", rt, id, ref)
				}
			case dateTimeKeys[key] && rt != "Group":
				s, _ := val.(string)
				ts, err := time.Parse(time.RFC3339, s)
				if len(s) == len("2006-01-02") {
					ts, err = time.Parse(time.DateOnly, s)
				}
				if err != nil {
					t.Errorf("%s/%s: %s %q: %v", rt, id, key, s, err)
				} else if y := ts.Year(); y < 2010 || y > 2024 {
					t.Errorf("%s/%s: %s %q outside 2010-2024", rt, id, key, s)
				}
			}
		})
		key := rt + "/" + id
		if seen[key] {
			t.Fatalf("duplicate id %s", key)
		}
		seen[key] = true
		counts[rt]++

		// Organizations, then Practitioners, then patients' data, Groups last.
		rank := map[string]int{"Organization": 0, "Practitioner": 1, "Group": 3}[rt]
		if rt != "Organization" && rt != "Practitioner" && rt != "Group" {
			rank = 2
		}
		if rank < stage {
			t.Fatalf("resource %d: %s emitted out of order", i, rt)
		}
		if rank == 2 && stage < 2 && rt != "Patient" {
			t.Fatalf("resource %d: first patient resource is %s, want Patient", i, rt)
		}
		stage = rank
	}
	if t.Failed() {
		return
	}
	for typ := range required {
		if counts[typ] == 0 {
			t.Errorf("no %s generated", typ)
		}
	}
	orgs, _, practs := poolSizes(cfg.Patients)
	if counts["Organization"] != orgs || counts["Practitioner"] != practs ||
		counts["Patient"] != cfg.Patients || counts["Coverage"] != cfg.Patients {
		t.Errorf("counts %v: want %d orgs, %d practitioners, %d patients and coverages",
			counts, orgs, practs, cfg.Patients)
	}
	if counts["Claim"] != counts["Encounter"] || counts["ExplanationOfBenefit"] != counts["Encounter"] {
		t.Errorf("want one Claim and one EOB per Encounter, got %v", counts)
	}
	per := float64(len(res)) / float64(cfg.Patients)
	if per < 30 || per > 60 {
		t.Errorf("%.1f resources per patient, want 30-60", per)
	}
	t.Logf("%d resources, %.1f per patient: %v", len(res), per, counts)
}

func TestSynthGroups(t *testing.T) {
	tests := []struct {
		patients, groupSize int
		wantGroups          int
	}{
		{1, 0, 1},
		{100, 0, 1},
		{7, 7, 1},
		{8, 7, 2},
		{25, 10, 3},
		{30, 10, 3},
		{41, 1, 41},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d/%d", tt.patients, tt.groupSize), func(t *testing.T) {
			size := tt.groupSize
			if size == 0 {
				size = DefaultGroupSize
			}
			var patients []string
			var groups []map[string]any
			for _, r := range collect(t, Config{Patients: tt.patients, Seed: 99, GroupSize: tt.groupSize}) {
				var obj map[string]any
				if err := json.Unmarshal(r.body, &obj); err != nil {
					t.Fatal(err)
				}
				switch r.typ {
				case "Patient":
					patients = append(patients, "Patient/"+obj["id"].(string))
				case "Group":
					groups = append(groups, obj)
				}
			}
			if len(groups) != tt.wantGroups {
				t.Fatalf("%d groups, want %d", len(groups), tt.wantGroups)
			}
			var members []string
			for i, g := range groups {
				if want := fmt.Sprintf("synth-group-%d", i+1); g["id"] != want {
					t.Errorf("group %d id %v, want %s", i, g["id"], want)
				}
				if g["type"] != "person" || g["actual"] != true {
					t.Errorf("group %v: type %v actual %v", g["id"], g["type"], g["actual"])
				}
				ms := g["member"].([]any)
				if len(ms) == 0 || len(ms) > size {
					t.Errorf("group %v has %d members, max %d", g["id"], len(ms), size)
				}
				if q := g["quantity"].(float64); int(q) != len(ms) {
					t.Errorf("group %v quantity %v != %d members", g["id"], q, len(ms))
				}
				for _, m := range ms {
					members = append(members, m.(map[string]any)["entity"].(map[string]any)["reference"].(string))
				}
			}
			// Partition in emission order: the concatenation equals the
			// Patient sequence, so each patient appears exactly once.
			if len(members) != len(patients) {
				t.Fatalf("%d members for %d patients", len(members), len(patients))
			}
			for i := range patients {
				if members[i] != patients[i] {
					t.Fatalf("member %d = %s, want %s", i, members[i], patients[i])
				}
			}
		})
	}
}

func TestSynthEstimate(t *testing.T) {
	tests := []struct {
		patients int
		seed     uint64
	}{
		{200, 1}, {200, 2}, {200, 12345}, {2000, 1}, {2000, 77},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d/seed%d", tt.patients, tt.seed), func(t *testing.T) {
			cfg := Config{Patients: tt.patients, Seed: tt.seed}
			n := 0
			err := Generate(context.Background(), cfg, func(string, []byte) error { n++; return nil })
			if err != nil {
				t.Fatal(err)
			}
			est := Estimate(cfg)
			if diff := float64(est-n) / float64(n); diff < -0.1 || diff > 0.1 {
				t.Fatalf("Estimate = %d, generated %d (%.1f%% off)", est, n, 100*diff)
			}
			t.Logf("Estimate %d, generated %d", est, n)
		})
	}
}

func TestSynthEmitErrorStops(t *testing.T) {
	cfg := Config{Patients: 20, Seed: 5, GroupSize: 5}
	total := len(collect(t, cfg))
	boom := errors.New("boom")
	for _, stopAt := range []int{1, 2, 10, 100, total - 2, total} {
		t.Run(fmt.Sprint(stopAt), func(t *testing.T) {
			calls := 0
			err := Generate(context.Background(), cfg, func(string, []byte) error {
				calls++
				if calls == stopAt {
					return fmt.Errorf("emit: %w", boom)
				}
				return nil
			})
			if !errors.Is(err, boom) {
				t.Fatalf("Generate returned %v, want the emit error", err)
			}
			if calls != stopAt {
				t.Fatalf("emit called %d times after failing at call %d", calls, stopAt)
			}
		})
	}
}

type failWriter struct{ after int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, io.ErrShortWrite
	}
	w.after--
	return len(p), nil
}

func TestSynthContextCancel(t *testing.T) {
	cfg := Config{Patients: 1000, Seed: 3}

	t.Run("already cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		calls := 0
		err := Generate(ctx, cfg, func(string, []byte) error { calls++; return nil })
		if !errors.Is(err, context.Canceled) || calls != 0 {
			t.Fatalf("err %v after %d calls, want context.Canceled after 0", err, calls)
		}
	})

	t.Run("cancelled mid-stream", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		calls, afterCancel := 0, 0
		err := Generate(ctx, cfg, func(typ string, _ []byte) error {
			calls++
			if ctx.Err() != nil {
				afterCancel++
			}
			if typ == "Patient" && calls > 500 {
				cancel()
			}
			return nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want context.Canceled", err)
		}
		// Cancellation is checked per patient: at most one patient's worth
		// of resources may follow.
		if afterCancel > 200 {
			t.Fatalf("%d resources emitted after cancel", afterCancel)
		}
	})

	t.Run("deadline in WriteNDJSON", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
		defer cancel()
		<-ctx.Done()
		n, err := WriteNDJSON(ctx, cfg, io.Discard)
		if !errors.Is(err, context.DeadlineExceeded) || n != 0 {
			t.Fatalf("WriteNDJSON = %d, %v; want 0, DeadlineExceeded", n, err)
		}
	})

	t.Run("writer error", func(t *testing.T) {
		_, err := WriteNDJSON(context.Background(), cfg, &failWriter{after: 2})
		if !errors.Is(err, io.ErrShortWrite) {
			t.Fatalf("WriteNDJSON error %v, want the writer's", err)
		}
	})
}

func TestSynthWriteNDJSON(t *testing.T) {
	cfg := Config{Patients: 40, Seed: 11, GroupSize: 16}
	var buf bytes.Buffer
	n, err := WriteNDJSON(context.Background(), cfg, &buf)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	res := collect(t, cfg)
	for _, r := range res {
		want.Write(r.body)
		want.WriteByte('\n')
	}
	if n != len(res) || !bytes.Equal(buf.Bytes(), want.Bytes()) {
		t.Fatalf("WriteNDJSON wrote %d resources (%d bytes), want %d (%d bytes) identical to Generate",
			n, buf.Len(), len(res), want.Len())
	}
	if got := bytes.Count(buf.Bytes(), []byte("\n")); got != n {
		t.Fatalf("%d lines for %d resources", got, n)
	}
}

func TestSynthIDsInjective(t *testing.T) {
	k := newIDKey(1, "Patient")
	seen := make(map[[36]byte]bool, 1<<16)
	for n := range uint64(1 << 16) {
		id := k.uuid(n)
		if seen[id] {
			t.Fatalf("duplicate id %s at %d", id, n)
		}
		seen[id] = true
		if id[14] != '4' || !strings.ContainsRune("89ab", rune(id[19])) {
			t.Fatalf("id %s is not UUID-v4 shaped", id)
		}
	}
}

func TestSynthAppendStr(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote`, `back\slash`, "tab\tnl\n\x01", "Zoë Müller", "O'Connor"} {
		var got string
		if err := json.Unmarshal(appendStr(nil, s), &got); err != nil || got != s {
			t.Errorf("appendStr(%q) round-trips to %q, %v", s, got, err)
		}
	}
}

func BenchmarkSynthGenerate(b *testing.B) {
	for _, patients := range []int{1000} {
		cfg := Config{Patients: patients, Seed: 1}
		b.Run(fmt.Sprintf("emit/patients=%d", patients), func(b *testing.B) {
			var resources, size int
			b.ReportAllocs()
			for b.Loop() {
				err := Generate(context.Background(), cfg, func(_ string, body []byte) error {
					resources++
					size += len(body) + 1
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			sec := b.Elapsed().Seconds()
			b.ReportMetric(float64(resources)/sec, "resources/s")
			b.ReportMetric(float64(size)/sec/1e6, "MB/s")
		})
		b.Run(fmt.Sprintf("ndjson/patients=%d", patients), func(b *testing.B) {
			var resources int
			for b.Loop() {
				n, err := WriteNDJSON(context.Background(), cfg, io.Discard)
				if err != nil {
					b.Fatal(err)
				}
				resources += n
			}
			b.ReportMetric(float64(resources)/b.Elapsed().Seconds(), "resources/s")
		})
	}
}
