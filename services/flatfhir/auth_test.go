package flatfhir_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/services/planner"
	"github.com/flatfhir/flatfhir/services/writer"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

const e2eAdminToken = "e2e-operator-credential-0123456789"

// cli runs a flatfhir subcommand as a person would and returns its output.
func cli(t testing.TB, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := flatfhir.Command(t.Context(), args, &out, &errOut); code != 0 {
		t.Fatalf("flatfhir %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
	return out.String()
}

// startAuthorizedEngine runs the whole engine with authorization on and
// the operator credential e2eAdminToken, with default tuning, and returns
// its base URL and configuration.
func startAuthorizedEngine(t testing.TB) (string, flatfhir.Config) {
	t.Helper()
	ch := testenv.ClickHouse(t)
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: -1,
		ClickHouseAddr: ch.Addr[0], ClickHouseDatabase: ch.Database, Writers: 1, Replicas: 1,
		Auth: true, AdminToken: e2eAdminToken,
	}
	tune := flatfhir.Tuning{Planner: planner.DefaultConfig(), Writer: writer.DefaultConfig(), Ingester: ingester.DefaultConfig()}
	base, stop := runEngine(t, cfg, tune)
	t.Cleanup(stop)
	return base, cfg
}

// registerClient has flatfhir make an ES384 key pair for client id in dir
// and the operator register it at base with scope, as docs/auth.md shows.
// It returns the private key's file and the public key set.
func registerClient(t testing.TB, base, dir, id, scope string) (keyFile string, jwks []byte) {
	t.Helper()
	cli(t, "clients", "keygen", "--out", filepath.Join(dir, id), "--alg", "ES384")
	set, err := os.ReadFile(filepath.Join(dir, id+".jwks.json"))
	if err != nil {
		t.Fatal(err)
	}
	reg, _ := json.Marshal(map[string]any{"jwks": json.RawMessage(set), "scope": scope})
	if resp, body := do(t, "PUT", base+"/admin/clients/"+id, bytes.NewReader(reg), "Authorization", "Bearer "+e2eAdminToken,
		"Content-Type", "application/json"); resp.StatusCode != http.StatusOK {
		t.Fatalf("register %s: %d %s", id, resp.StatusCode, body)
	}
	return filepath.Join(dir, id+".key.pem"), set
}

// awaitAuthorized polls like await, with a bearer token.
func awaitAuthorized(t *testing.T, status, token string) manifest {
	t.Helper()
	m, _, _ := await(t, status, "Authorization", "Bearer "+token)
	return m
}

func TestE2EAuthorizedExport(t *testing.T) {
	base, _ := startAuthorizedEngine(t)

	// The operator loads data with the operator credential.
	var ndjson bytes.Buffer
	for i := range 3 {
		fmt.Fprintf(&ndjson, `{"resourceType":"Patient","id":"p%d"}`+"\n", i)
		fmt.Fprintf(&ndjson, `{"resourceType":"Observation","id":"o%d","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p%d"}}`+"\n", i, i)
		fmt.Fprintf(&ndjson, `{"resourceType":"Encounter","id":"e%d","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/p%d"}}`+"\n", i, i)
	}
	if resp, body := do(t, "POST", base+"/$ingest", bytes.NewReader(ndjson.Bytes()), "Content-Type", "application/fhir+ndjson"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("ingest without a credential: %d %s", resp.StatusCode, body)
	}
	if resp, body := do(t, "POST", base+"/$ingest", bytes.NewReader(ndjson.Bytes()), "Content-Type", "application/fhir+ndjson",
		"Authorization", "Bearer "+e2eAdminToken); resp.StatusCode != http.StatusOK {
		t.Fatalf("ingest: %d %s", resp.StatusCode, body)
	}

	// The operator registers two clients whose key pairs flatfhir made.
	dir := t.TempDir()
	for _, c := range []struct{ id, alg, scope string }{{"demo", "ES384", "system/Patient.rs system/Observation.read"}, {"other", "RS384", "system/*.rs"}} {
		cli(t, "clients", "keygen", "--out", filepath.Join(dir, c.id), "--alg", c.alg)
		set, err := os.ReadFile(filepath.Join(dir, c.id+".jwks.json"))
		if err != nil {
			t.Fatal(err)
		}
		reg, _ := json.Marshal(map[string]any{"jwks": json.RawMessage(set), "scope": c.scope})
		resp, body := do(t, "PUT", base+"/admin/clients/"+c.id, bytes.NewReader(reg), "Authorization", "Bearer "+e2eAdminToken, "Content-Type", "application/json")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("register %s: %d %s", c.id, resp.StatusCode, body)
		}
	}
	token := func(client, scope string) string {
		return strings.TrimSpace(cli(t, "token", "--client", client, "--key", filepath.Join(dir, client+".key.pem"), "--scope", scope, "--url", base, "--raw"))
	}

	// No token: 401 everywhere it matters.
	resp, _ := do(t, "GET", base+"/$export", nil, "Accept", "application/fhir+json", "Prefer", "respond-async")
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("kick-off without a token: %d", resp.StatusCode)
	}

	// demo asks for everything and gets what it was registered for; its
	// export without _type holds only those types.
	tok := token("demo", "system/*.rs")
	resp, body := do(t, "GET", base+"/$export", nil, "Accept", "application/fhir+json", "Prefer", "respond-async", "Authorization", "Bearer "+tok)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off: %d %s", resp.StatusCode, body)
	}
	status := resp.Header.Get("Content-Location")
	// A later token of the same client polls and downloads.
	m := awaitAuthorized(t, status, token("demo", "system/*.read"))
	if !m.RequiresAccessToken {
		t.Errorf("requiresAccessToken %v, want true", m.RequiresAccessToken)
	}
	got := map[string]int{}
	later := token("demo", "system/*.rs")
	stranger := token("other", "system/*.rs")
	for _, o := range m.Output {
		resp, _ := do(t, "GET", o.URL, nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("download without a token: %d", resp.StatusCode)
		}
		if resp, _ := do(t, "GET", o.URL, nil, "Authorization", "Bearer "+stranger); resp.StatusCode != http.StatusNotFound {
			t.Errorf("download by another client: %d", resp.StatusCode)
		}
		resp, body := do(t, "GET", o.URL, nil, "Authorization", "Bearer "+later)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("download: %d %s", resp.StatusCode, body)
		}
		got[o.Type] += len(splitLines(t, bytes.NewReader(body)))
	}
	if len(got) != 2 || got["Patient"] != 3 || got["Observation"] != 3 {
		t.Errorf("export holds %v, want 3 Patients and 3 Observations only", got)
	}
	if resp, body := do(t, "GET", status, nil, "Authorization", "Bearer "+stranger); resp.StatusCode != http.StatusNotFound {
		t.Errorf("status by another client: %d %s", resp.StatusCode, body)
	}
	// A type outside demo's scopes is refused at kick-off.
	resp, body = do(t, "GET", base+"/$export?_type=Encounter", nil, "Accept", "application/fhir+json", "Prefer", "respond-async", "Authorization", "Bearer "+later)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "Encounter") {
		t.Errorf("kick-off of Encounter: %d %s", resp.StatusCode, body)
	}
	if resp, body := do(t, "DELETE", status, nil, "Authorization", "Bearer "+later); resp.StatusCode != http.StatusAccepted {
		t.Errorf("DELETE by the owner: %d %s", resp.StatusCode, body)
	}
}
