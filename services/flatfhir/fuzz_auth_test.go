package flatfhir_test

import (
	"crypto"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/flatfhir/flatfhir/shared/bulkclient"
)

// assertionSigner is a registered Backend Services client of an engine
// with authorization on, and its token endpoint.
type assertionSigner struct {
	base, endpoint, kid string
	key                 crypto.Signer
}

// newAssertionSigner starts an engine with authorization on and registers
// client "fz" (ES384) with scope system/*.rs.
func newAssertionSigner(f *testing.F) assertionSigner {
	base, _ := startAuthorizedEngine(f)
	keyFile, set := registerClient(f, base, f.TempDir(), "fz", "system/*.rs")
	var jwks struct{ Keys []struct{ Kid string } }
	if err := json.Unmarshal(set, &jwks); err != nil || len(jwks.Keys) != 1 {
		f.Fatalf("fz.jwks.json: %v", err)
	}
	key, _, err := bulkclient.ReadPrivateKey(keyFile)
	if err != nil {
		f.Fatal(err)
	}
	_, body := do(f, "GET", base+"/.well-known/smart-configuration", nil)
	var conf struct {
		TokenEndpoint string `json:"token_endpoint"`
	}
	if err := json.Unmarshal(body, &conf); err != nil || conf.TokenEndpoint == "" {
		f.Fatalf("smart-configuration: %v %s", err, body)
	}
	return assertionSigner{base: base, endpoint: conf.TokenEndpoint, kid: jwks.Keys[0].Kid, key: key}
}

// sign makes a JWT of header and claims signed with the client's key,
// whatever they say: the server must judge them by what they say.
func (s assertionSigner) sign(header, claims []byte) (string, error) {
	input := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(claims)
	sig, err := jwt.SigningMethodES384.Sign(input, s.key)
	if err != nil {
		return "", err
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// FuzzClientAssertion sends the token endpoint client assertions with
// fuzzed headers and claims, correctly signed by a registered client. The
// answer is an access token only for an assertion that says what Backend
// Services requires; everything else is an OAuth error, never a 5xx.
func FuzzClientAssertion(f *testing.F) {
	s := newAssertionSigner(f)
	header := fmt.Sprintf(`{"alg":"ES384","typ":"JWT","kid":%q}`, s.kid)
	now := time.Now().Unix()
	claims := func(iss, aud string, exp int64, jti string) []byte {
		b, _ := json.Marshal(map[string]any{"iss": iss, "sub": iss, "aud": aud, "exp": exp, "jti": jti})
		return b
	}
	f.Add([]byte(header), claims("fz", s.endpoint, now+240, "seed-1"), "system/*.rs")
	f.Add([]byte(header), claims("fz", s.endpoint, now+240, "seed-2"), "system/Patient.read launch")
	f.Add([]byte(header), claims("other", s.endpoint, now+240, "seed-3"), "system/*.rs")
	f.Add([]byte(header), claims("fz", "https://elsewhere/token", now+240, "seed-4"), "system/*.rs")
	f.Add([]byte(header), claims("fz", s.endpoint, now-60, "seed-5"), "system/*.rs")
	f.Add([]byte(header), claims("fz", s.endpoint, now+3600, "seed-6"), "system/*.rs")
	f.Add([]byte(`{"alg":"none","kid":"`+s.kid+`"}`), claims("fz", s.endpoint, now+240, "seed-7"), "system/*.rs")
	f.Add([]byte(`{"alg":"HS384","kid":"`+s.kid+`"}`), claims("fz", s.endpoint, now+240, "seed-8"), "system/*.rs")
	f.Add([]byte(`{"alg":"ES384","kid":"`+s.kid+`","jku":"http://127.0.0.1:1/jwks"}`), claims("fz", s.endpoint, now+240, "seed-9"), "system/*.rs")
	f.Fuzz(func(t *testing.T, header, claims []byte, scope string) {
		assertion, err := s.sign(header, claims)
		if err != nil {
			t.Fatal(err)
		}
		form := url.Values{
			"grant_type": {"client_credentials"}, "scope": {scope},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion},
		}
		resp, body, ok := send(t, http.MethodPost, s.endpoint, []byte(form.Encode()),
			"Content-Type", "application/x-www-form-urlencoded", "Accept", "application/json")
		if !ok {
			stillAnswers(t, s.base)
			return
		}
		if resp.StatusCode >= 500 || !json.Valid(body) {
			t.Fatalf("token endpoint: %d %s", resp.StatusCode, body)
		}
		var answer struct {
			AccessToken string `json:"access_token"`
			Error       string `json:"error"`
		}
		_ = json.Unmarshal(body, &answer)
		if resp.StatusCode != http.StatusOK {
			if answer.Error == "" {
				t.Fatalf("a %d without an OAuth error: %s", resp.StatusCode, body)
			}
			return
		}
		// Accepted: the assertion must have said what Backend Services
		// requires, as a strict reader of its JSON sees it.
		var h struct{ Alg, Kid string }
		var c struct {
			Iss, Sub, Jti string
			Aud           any
			Exp           float64
		}
		if json.Unmarshal(header, &h) != nil || json.Unmarshal(claims, &c) != nil {
			t.Fatalf("an access token for an assertion whose header or claims are not JSON objects: %s . %s", header, claims)
		}
		exp := time.Unix(int64(c.Exp), 0)
		if h.Alg != "ES384" || h.Kid != s.kid || c.Iss != "fz" || c.Sub != "fz" || c.Jti == "" ||
			time.Until(exp) <= 0 || time.Until(exp) > 6*time.Minute || !audienceIs(c.Aud, s.endpoint) {
			t.Fatalf("an access token for an assertion that should be refused: %s . %s", header, claims)
		}
		if answer.AccessToken == "" {
			t.Fatalf("a 200 without access_token: %s", body)
		}
	})
}

func audienceIs(aud any, endpoint string) bool {
	switch a := aud.(type) {
	case string:
		return a == endpoint
	case []any:
		return len(a) == 1 && a[0] == endpoint
	}
	return false
}

// FuzzBearerToken sends a kick-off with fuzzed access tokens: none is
// valid, so each must be a 401 with an OperationOutcome.
func FuzzBearerToken(f *testing.F) {
	base, _ := startAuthorizedEngine(f)
	for _, tok := range []string{
		"", "abc", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", e2eAdminToken + "x",
		"eyJhbGciOiJFUzM4NCIsImtpZCI6IngifQ.eyJleHAiOjk5OTk5OTk5OTl9.c2ln",
		strings.Repeat("a", 9000),
	} {
		f.Add(tok)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		resp, _, ok := exchange(t, base, http.MethodGet, base+"/$export", nil,
			"Accept", "application/fhir+json", "Prefer", "respond-async", "Authorization", "Bearer "+tok)
		if ok && resp.StatusCode < 400 {
			t.Fatalf("a forged token was let through: %d (token %q)", resp.StatusCode, tok)
		}
	})
}
