package flatfhir_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flatfhir/flatfhir/services/flatfhir"
	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/services/planner"
	"github.com/flatfhir/flatfhir/services/writer"
	"github.com/flatfhir/flatfhir/shared/testenv"
)

// TestE2EConsoleNeedsTheOperatorCredential: with authorization on, the
// console answers 401 with a Basic challenge (so a browser asks), and
// serves the page and its state to the operator credential given as the
// Basic password or as a Bearer token.
func TestE2EConsoleNeedsTheOperatorCredential(t *testing.T) {
	base, _ := startAuthorizedEngine(t)
	resp, _ := do(t, "GET", base+"/console", nil)
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
		t.Errorf("/console without a credential: %d %q, want 401 with a Basic challenge", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	wrong := "Basic " + base64.StdEncoding.EncodeToString([]byte("operator:not-the-token"))
	if resp, _ := do(t, "GET", base+"/console", nil, "Authorization", wrong); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/console with a wrong password: %d", resp.StatusCode)
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("operator:"+e2eAdminToken))
	resp, body := do(t, "GET", base+"/console", nil, "Authorization", basic)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !bytes.Contains(body, []byte("EventSource")) {
		t.Errorf("/console with the credential: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	resp, body = do(t, "GET", base+"/console/state", nil, "Authorization", "Bearer "+e2eAdminToken)
	var snap struct {
		Exports []any
		Ingest  struct{ Accepted, Applied uint64 }
	}
	if err := json.Unmarshal(body, &snap); err != nil || resp.StatusCode != http.StatusOK || snap.Exports == nil {
		t.Errorf("/console/state: %d %s (%v)", resp.StatusCode, body, err)
	}
}

// TestE2EConsoleInABrowser opens the console in headless Chromium (driven
// by the DevTools protocol): the page loads, an export kicked off while it
// is open appears, and its row reaches complete and 100 % by the page's
// live updates. A screenshot is saved as a test artifact.
func TestE2EConsoleInABrowser(t *testing.T) {
	browser := findChromium(t)
	ch := testenv.ClickHouse(t)
	cfg := flatfhir.Config{
		Role: flatfhir.RoleAll, DataDir: t.TempDir(), Listen: "127.0.0.1:0", NATSPort: -1,
		ClickHouseAddr: ch.Addr[0], ClickHouseDatabase: ch.Database, Writers: 1, Replicas: 1, PollRate: 0,
	}
	pc := planner.DefaultConfig()
	pc.TaskRows, pc.MaxFileResources = 200, 100 // a few tasks, so progress moves
	base, stop := runEngine(t, cfg, flatfhir.Tuning{Planner: pc, Writer: writer.DefaultConfig(), Ingester: ingester.DefaultConfig()})
	defer stop()
	var body bytes.Buffer
	for i := range 1000 {
		fmt.Fprintf(&body, `{"resourceType":"Patient","id":"c%d"}`+"\n", i)
	}
	if resp, answer := do(t, "POST", base+"/$ingest", &body, "Content-Type", "application/fhir+ndjson"); resp.StatusCode != http.StatusOK {
		t.Fatalf("$ingest: %d %s", resp.StatusCode, answer)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1400, 800))
	actx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(actx)
	defer cancelTab()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/console"), chromedp.WaitVisible(chromedp.ID("exports")),
		chromedp.WaitVisible(chromedp.Search(`//div[@id="status"][starts-with(., "live")]`))); err != nil {
		t.Fatalf("the console did not load and go live: %v", err)
	}
	status := kickoff(t, base+"/$export?_type=Patient")
	job := status[strings.LastIndex(status, "/")+1:]
	row := fmt.Sprintf(`//tr[@id="export-%s"][@data-status="complete"][@data-progress="100"]`, job)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.Search(row))); err != nil {
		t.Fatalf("the export did not reach complete and 100%% on the page: %v", err)
	}
	resources, err := chromedp.Run(ctx, chromedp.Text(chromedp.Search(fmt.Sprintf(`//tr[@id="export-%s"]/td[5]`, job))))
	if err != nil {
		t.Fatal(err)
	}
	if strings.ReplaceAll(strings.ReplaceAll(resources, ",", ""), "\u202f", "") != "1000" {
		t.Errorf("the page shows %q resources for the export, want 1000", resources)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	path := artifactPath(t, "console.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("console screenshot: %s", path)
}

// findChromium is the headless browser of the browser tests: Debian's
// chromium (make deps installs it). CI must have it; elsewhere the test is
// skipped without it.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("FLATFHIR_REQUIRE_BROWSER") != "" {
		t.Fatal("no chromium: make deps installs Debian's chromium package")
	}
	t.Skip("no chromium (make deps installs it as root); set FLATFHIR_REQUIRE_BROWSER to fail instead")
	return ""
}

// artifactPath is where a test keeps a file for people to look at:
// $FLATFHIR_TEST_ARTIFACTS, or var/test-artifacts at the repository's root.
func artifactPath(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("FLATFHIR_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "var", "test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return abs
}
