package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// errorApp is a Fiber app using the server's error handler, with one route
// per kind of error a handler can return.
func errorApp(log *slog.Logger) *fiber.App {
	s := &Server{deps: Deps{Log: log}}
	app := fiber.New(fiber.Config{ErrorHandler: s.errorHandler, DisableStartupMessage: true})
	routes := map[string]error{
		"/bad-request":   badRequest("_type %q is wrong", "X"),
		"/not-supported": notSupported("parameter %s is not supported by this server", "_foo"),
		"/not-found":     notFound("no export %q", "abc"),
		"/media":         unsupportedMedia("not %q", "text/plain"),
		"/too-large":     tooLarge("line %d: resource larger than %d bytes", 7, 100),
		"/job-failed":    jobFailed("export %s failed: %s", "j1", "disk full"),
		"/transient":     transient("retry later"),
		"/fiber-400":     fiber.NewError(fiber.StatusBadRequest, "malformed request"),
		"/fiber-503":     fiber.ErrServiceUnavailable,
		"/fiber-404":     fiber.ErrNotFound,
		"/plain":         errors.New("secret internal detail"),
	}
	for path, err := range routes {
		app.Get(path, func(*fiber.Ctx) error { return err })
	}
	return app
}

func TestAPIErrorHandler(t *testing.T) {
	app := errorApp(slog.New(slog.NewTextHandler(io.Discard, nil)))
	cases := []struct {
		method, path string
		status       int
		code         string
		diagnostics  string // exact, unless contains is set
		contains     bool
		mustNotHold  string
	}{
		{"GET", "/bad-request", 400, fhir.CodeInvalid, `_type "X" is wrong`, false, ""},
		{"GET", "/not-supported", 400, fhir.CodeNotSupported, "parameter _foo is not supported by this server", false, ""},
		{"GET", "/not-found", 404, fhir.CodeNotFound, `no export "abc"`, false, ""},
		{"GET", "/media", 415, fhir.CodeNotSupported, `not "text/plain"`, false, ""},
		{"GET", "/too-large", 413, fhir.CodeTooCostly, "line 7: resource larger than 100 bytes", false, ""},
		{"GET", "/job-failed", 500, fhir.CodeProcessing, "export j1 failed: disk full", false, ""},
		{"GET", "/transient", 503, fhir.CodeTransient, "retry later", false, ""},
		{"GET", "/fiber-400", 400, fhir.CodeInvalid, "malformed request", false, ""},
		{"GET", "/fiber-503", 503, fhir.CodeProcessing, "Service Unavailable", false, ""},
		{"GET", "/fiber-404", 404, fhir.CodeNotFound, "Not Found", false, ""},
		{"GET", "/no/such/route", 404, fhir.CodeNotFound, "/no/such/route", true, ""},
		{"DELETE", "/bad-request", 405, fhir.CodeInvalid, "Method Not Allowed", false, ""},
		{"GET", "/plain", 500, fhir.CodeException, "internal error", true, "secret internal detail"},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			resp, err := app.Test(httptest.NewRequest(tc.method, tc.path, nil), -1)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d (%s)", resp.StatusCode, tc.status, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/fhir+json" {
				t.Errorf("Content-Type %q, want application/fhir+json", ct)
			}
			var oo fhir.OperationOutcome
			if err := json.Unmarshal(body, &oo); err != nil {
				t.Fatalf("body %s is not JSON: %v", body, err)
			}
			if oo.ResourceType != "OperationOutcome" || len(oo.Issue) != 1 {
				t.Fatalf("body %s is not a one-issue OperationOutcome", body)
			}
			is := oo.Issue[0]
			if is.Severity != fhir.SeverityError || is.Code != tc.code {
				t.Errorf("issue %s/%s, want error/%s", is.Severity, is.Code, tc.code)
			}
			if tc.contains && !strings.Contains(is.Diagnostics, tc.diagnostics) ||
				!tc.contains && is.Diagnostics != tc.diagnostics {
				t.Errorf("diagnostics %q, want %q", is.Diagnostics, tc.diagnostics)
			}
			if tc.mustNotHold != "" && strings.Contains(string(body), tc.mustNotHold) {
				t.Errorf("body leaks %q: %s", tc.mustNotHold, body)
			}
		})
	}
}

// An internal error's detail goes to the log, not to the client.
func TestAPIErrorHandlerLogsInternalErrors(t *testing.T) {
	var logged bytes.Buffer
	app := errorApp(slog.New(slog.NewTextHandler(&logged, nil)))
	resp, err := app.Test(httptest.NewRequest("GET", "/plain", nil), -1)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 500 || strings.Contains(string(body), "secret") {
		t.Fatalf("%d %s, want a 500 without the detail", resp.StatusCode, body)
	}
	if !strings.Contains(logged.String(), "secret internal detail") || !strings.Contains(logged.String(), "/plain") {
		t.Errorf("log %q lacks the error and path", logged.String())
	}

	// Client errors are not logged as failures.
	logged.Reset()
	resp, err = app.Test(httptest.NewRequest("GET", "/bad-request", nil), -1)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if logged.Len() != 0 {
		t.Errorf("a 400 was logged: %q", logged.String())
	}
}
