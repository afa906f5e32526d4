package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/url"
	"strconv"
	"strings"

	"github.com/gofiber/fiber/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/flatfhir/flatfhir/services/api/auth"
	"github.com/flatfhir/flatfhir/shared/compartment"
	"github.com/flatfhir/flatfhir/shared/fhir"
	"github.com/flatfhir/flatfhir/streams"
)

// The SMART routes, relative to the FHIR base.
const (
	pathSmartConfig = "/.well-known/smart-configuration"
	pathToken       = "/auth/token"
	pathAuthorize   = "/auth/authorize"
)

// scopesSupported are the scopes advertised in smart-configuration.
var scopesSupported = []string{
	"system/*.rs", "system/*.read", "system/*.cud", "system/*.write", "system/*.cruds", "system/*.*",
	"system/Patient.rs", "system/Patient.read",
}

// smartConfiguration serves [base]/.well-known/smart-configuration: the
// Backend Services fields, and the App Launch fields a SMART 2.0.0
// conformance check requires (authorization_endpoint, authorization_code,
// response_types_supported, code_challenge_methods_supported), which are
// advertised only (docs/auth.md).
func (s *Server) smartConfiguration(c *fiber.Ctx) error {
	if !s.cfg.Auth {
		return notFound("authorization is switched off on this server (FLATFHIR_AUTH=off)")
	}
	base := s.baseURL(c)
	body := map[string]any{
		"token_endpoint":                                   base + pathToken,
		"token_endpoint_auth_methods_supported":            []string{"private_key_jwt"},
		"token_endpoint_auth_signing_alg_values_supported": []string{"RS384", "ES384"},
		"grant_types_supported":                            []string{"client_credentials", "authorization_code"},
		"scopes_supported":                                 scopesSupported,
		"capabilities":                                     []string{"client-confidential-asymmetric", "permission-v1", "permission-v2"},
		"authorization_endpoint":                           base + pathAuthorize,
		"response_types_supported":                         []string{"code"},
		"code_challenge_methods_supported":                 []string{"S256"},
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(encodeJSON(body))
}

// oauthError answers an OAuth error (RFC 6749 §5.2).
func oauthError(c *fiber.Ctx, e *auth.Error) error {
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set(fiber.HeaderPragma, "no-cache")
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Status(e.Status).Send(encodeJSON(map[string]string{"error": e.Code, "error_description": e.Description}))
}

// token serves the token endpoint: client_credentials with a JWT client
// assertion. Answers are OAuth JSON, never OperationOutcomes.
func (s *Server) token(c *fiber.Ctx) error {
	if !s.cfg.Auth {
		return notFound("authorization is switched off on this server (FLATFHIR_AUTH=off)")
	}
	refuseToken := func(e *auth.Error) error {
		s.metrics.tokens.Add(c.UserContext(), 1, metric.WithAttributes(attribute.String("flatfhir.token.outcome", "refused"), attribute.String("flatfhir.token.reason", e.Code)))
		return oauthError(c, e)
	}
	ct := strings.ToLower(strings.TrimSpace(strings.Split(c.Get(fiber.HeaderContentType), ";")[0]))
	if ct != fiber.MIMEApplicationForm {
		return refuseToken(&auth.Error{Status: fiber.StatusBadRequest, Code: auth.CodeInvalidRequest,
			Description: "the token request must be application/x-www-form-urlencoded"})
	}
	body := c.Body()
	if len(body) > 64<<10 {
		return refuseToken(&auth.Error{Status: fiber.StatusBadRequest, Code: auth.CodeInvalidRequest, Description: "the token request is larger than 64 KiB"})
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return refuseToken(&auth.Error{Status: fiber.StatusBadRequest, Code: auth.CodeInvalidRequest, Description: "the form body is malformed: " + err.Error()})
	}
	for name, vals := range form {
		if len(vals) > 1 {
			return refuseToken(&auth.Error{Status: fiber.StatusBadRequest, Code: auth.CodeInvalidRequest, Description: "parameter " + name + " appears more than once"})
		}
	}
	resp, err := s.auth.Token(c.UserContext(), auth.TokenRequest{
		GrantType: form.Get("grant_type"), Scope: form.Get("scope"),
		AssertionType: form.Get("client_assertion_type"), Assertion: form.Get("client_assertion"),
		Endpoint: s.baseURL(c) + pathToken, Issuer: s.baseURL(c),
	})
	if e := auth.AsError(err); e != nil {
		s.deps.Log.InfoContext(c.UserContext(), "token request refused", "error", e.Code, "reason", e.Description)
		return refuseToken(e)
	}
	if err != nil {
		return err
	}
	s.metrics.tokens.Add(c.UserContext(), 1, metric.WithAttributes(attribute.String("flatfhir.token.outcome", "issued")))
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set(fiber.HeaderPragma, "no-cache")
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(encodeJSON(resp))
}

// authorize is the advertised authorization endpoint: this server only
// does Backend Services, so every request is refused.
func (s *Server) authorize(c *fiber.Ctx) error {
	return oauthError(c, &auth.Error{Status: fiber.StatusBadRequest, Code: "unsupported_response_type",
		Description: "this server supports only SMART Backend Services: POST client_credentials to " + s.baseURL(c) + pathToken})
}

// caller is who made a request: a client's principal, or the operator.
type caller struct {
	operator bool
	auth.Principal
}

const callerKey = "flatfhir.caller"

func callerOf(c *fiber.Ctx) caller {
	cl, _ := c.Locals(callerKey).(caller)
	return cl
}

// bearer returns the token of an Authorization: Bearer header.
func bearer(c *fiber.Ctx) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(c.Get(fiber.HeaderAuthorization)), " ")
	tok = strings.TrimSpace(tok)
	return tok, ok && strings.EqualFold(scheme, "Bearer") && tok != ""
}

// isAdminToken compares tok with the operator credential in constant time.
func (s *Server) isAdminToken(tok string) bool {
	if s.cfg.AdminToken == "" {
		return false
	}
	a, b := sha256.Sum256([]byte(tok)), sha256.Sum256([]byte(s.cfg.AdminToken))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// authenticate guards every route registered after it: with auth on, a
// request needs a valid access token (or, where need allows it, the
// operator credential). 401 with WWW-Authenticate otherwise.
func (s *Server) authenticate(c *fiber.Ctx) error {
	if !s.cfg.Auth {
		return c.Next()
	}
	tok, ok := bearer(c)
	if !ok {
		c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="flatfhir"`)
		return unauthorized("this request needs an access token (Authorization: Bearer); get one at %s", s.baseURL(c)+pathToken)
	}
	if s.isAdminToken(tok) {
		c.Locals(callerKey, caller{operator: true})
		return c.Next()
	}
	p, err := s.auth.Verify(c.UserContext(), tok)
	if e := auth.AsError(err); e != nil {
		if e.Code != auth.CodeInvalidToken {
			return transient("%s", e.Description)
		}
		c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="flatfhir", error="invalid_token", error_description=`+strconv.Quote(e.Description))
		return unauthorized("%s", e.Description)
	}
	if err != nil {
		return err
	}
	c.Locals(callerKey, caller{Principal: p})
	return c.Next()
}

// insufficient is a 403 for a valid token whose scopes fall short.
func insufficient(c *fiber.Ctx, format string, a ...any) error {
	c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="flatfhir", error="insufficient_scope"`)
	return forbidden(format, a...)
}

// need guards a FHIR read or write of the {type} in the path: the token's
// scopes must grant perm on it (the operator credential is not enough).
func (s *Server) need(perm auth.Perm, fixedType string) fiber.Handler {
	return func(c *fiber.Ctx) error {
		if !s.cfg.Auth {
			return c.Next()
		}
		typ := fixedType
		if typ == "" {
			typ = c.Params("type")
		}
		if !fhir.IsResourceType(typ) {
			return c.Next() // the handler answers 404
		}
		if p := scopeRefusal(c, perm, typ); p != nil {
			return insufficient(c, "%s", p.msg)
		}
		return c.Next()
	}
}

// scopeRefusal says why the caller may not do perm on typ (the operator
// credential is not enough), or nil when it may. Call it with auth on.
func scopeRefusal(c *fiber.Ctx, perm auth.Perm, typ string) *problem {
	cl := callerOf(c)
	if cl.operator || !cl.Scopes.Allows(typ, perm) {
		return forbidden("the access token's scopes do not grant %s on %s (needs system/%s.%s or system/*.%s)",
			permName(perm), typ, typ, permLetters(perm), permLetters(perm))
	}
	return nil
}

// needIngest guards $ingest: the operator credential, or a token whose
// scopes grant create and update on every type (system/*.cu, *.write).
func (s *Server) needIngest(c *fiber.Ctx) error {
	if !s.cfg.Auth {
		return c.Next()
	}
	cl := callerOf(c)
	if !cl.operator && !cl.Scopes.AllowsAll(auth.PermCreate|auth.PermUpdate) {
		return insufficient(c, "$ingest needs the operator credential or a token with system/*.cu (or system/*.write)")
	}
	return c.Next()
}

func permName(p auth.Perm) string {
	switch p {
	case auth.PermCreate:
		return "create"
	case auth.PermRead:
		return "read"
	case auth.PermUpdate:
		return "update"
	case auth.PermDelete:
		return "delete"
	case auth.PermSearch:
		return "search"
	}
	return "export"
}

func permLetters(p auth.Perm) string {
	return strings.TrimPrefix(auth.Scope{Type: "*", Perms: p}.String(), "system/*.")
}

// authorizeExport applies the token's scopes to a kick-off: every type in
// _type must be exportable (403 naming the others); without _type the
// export is narrowed to the exportable types (at Patient and Group level,
// those in the Patient compartment). Export of a type needs read and
// search on it.
func (s *Server) authorizeExport(c *fiber.Ctx, lvl level, req *kickoffRequest) error {
	if !s.cfg.Auth {
		return nil
	}
	cl := callerOf(c)
	if cl.operator {
		return insufficient(c, "exports are started by registered clients; the operator credential cannot start one")
	}
	// includeAssociatedData adds Provenance whatever _type says.
	if req.associated != "" && !cl.Scopes.Allows("Provenance", auth.PermExport) {
		return insufficient(c, "includeAssociatedData=%s adds Provenance, which the access token's scopes (%s) do not allow exporting", req.associated, cl.Scopes)
	}
	if len(req.types) > 0 {
		var refused []string
		for _, t := range req.types {
			if !cl.Scopes.Allows(t, auth.PermExport) {
				refused = append(refused, t)
			}
		}
		if len(refused) > 0 {
			return insufficient(c, "the access token's scopes (%s) do not allow exporting %s; exporting a type needs system/<Type>.rs (or .read) or system/*.rs",
				cl.Scopes, strings.Join(refused, ", "))
		}
		return nil
	}
	types, all := cl.Scopes.Types(auth.PermExport)
	if all {
		return nil
	}
	if lvl != levelSystem {
		kept := types[:0]
		for _, t := range types {
			if compartment.InCompartment(t) {
				kept = append(kept, t)
			}
		}
		types = kept
	}
	if len(types) == 0 {
		return insufficient(c, "the access token's scopes (%s) allow exporting no type at %s level", cl.Scopes, lvl)
	}
	req.types = types
	return nil
}

// clientOf is the client id a job of this request belongs to ("" with
// auth off).
func clientOf(c *fiber.Ctx) string {
	return callerOf(c).ClientID
}

// authorizeJob lets only the client that started a job see it (another
// gets 404, as if it did not exist), and only while its token's scopes
// still cover every type the job exports.
func (s *Server) authorizeJob(c *fiber.Ctx, job streams.Job) error {
	if !s.cfg.Auth {
		return nil
	}
	cl := callerOf(c)
	if cl.operator || cl.ClientID == "" || cl.ClientID != job.ClientID {
		return notFound("no export %q", job.JobID)
	}
	if job.IncludeAssociatedData != "" && !cl.Scopes.Allows("Provenance", auth.PermExport) {
		return insufficient(c, "export %s holds Provenance (includeAssociatedData), which the access token's scopes (%s) do not cover", job.JobID, cl.Scopes)
	}
	if len(job.Types) == 0 {
		if !cl.Scopes.AllowsAll(auth.PermExport) {
			return insufficient(c, "export %s holds every type; the access token's scopes (%s) do not cover them all", job.JobID, cl.Scopes)
		}
		return nil
	}
	for _, t := range job.Types {
		if !cl.Scopes.Allows(t, auth.PermExport) {
			return insufficient(c, "export %s holds %s, which the access token's scopes (%s) do not cover", job.JobID, t, cl.Scopes)
		}
	}
	return nil
}

// admin guards the operator endpoints with FLATFHIR_ADMIN_TOKEN.
func (s *Server) admin(c *fiber.Ctx) error {
	if s.cfg.AdminToken == "" {
		return forbidden("the admin endpoints are disabled: set FLATFHIR_ADMIN_TOKEN")
	}
	if tok, ok := bearer(c); !ok || !s.isAdminToken(tok) {
		c.Set(fiber.HeaderWWWAuthenticate, `Bearer realm="flatfhir-admin"`)
		return unauthorized("the admin endpoints need Authorization: Bearer <FLATFHIR_ADMIN_TOKEN>")
	}
	return c.Next()
}

func (s *Server) listClients(c *fiber.Ctx) error {
	clients, err := s.auth.Clients.List(c.UserContext())
	if err != nil {
		return transient("the client registry could not be read; retry: %v", err)
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(encodeJSON(map[string]any{"clients": clients}))
}

func (s *Server) getClient(c *fiber.Ctx) error {
	cl, err := s.auth.Clients.Get(c.UserContext(), c.Params("id"))
	if errors.Is(err, auth.ErrUnknownClient) {
		return notFound("no client %q", c.Params("id"))
	}
	if err != nil {
		return transient("the client registry could not be read; retry: %v", err)
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(encodeJSON(cl))
}

// putClient registers or replaces a client: the body is the Client JSON;
// its client_id, when present, must equal the path's.
func (s *Server) putClient(c *fiber.Ctx) error {
	var cl auth.Client
	if err := json.Unmarshal(c.Body(), &cl); err != nil {
		return badRequest("the body is not a client registration (JSON with jwks_uri or jwks, and scope): %v", err)
	}
	id := c.Params("id")
	if cl.ID != "" && cl.ID != id {
		return badRequest("client_id %q in the body differs from %q in the path", cl.ID, id)
	}
	cl.ID = id
	if err := cl.Validate(); err != nil {
		return badRequest("%v", err)
	}
	if err := s.auth.Clients.Put(c.UserContext(), cl); err != nil {
		return transient("the client could not be stored; retry: %v", err)
	}
	s.deps.Log.InfoContext(c.UserContext(), "client registered", "client", id)
	return s.getClient(c)
}

func (s *Server) deleteClient(c *fiber.Ctx) error {
	err := s.auth.Clients.Delete(c.UserContext(), c.Params("id"))
	if errors.Is(err, auth.ErrUnknownClient) {
		return notFound("no client %q", c.Params("id"))
	}
	if err != nil {
		return transient("the client could not be removed; retry: %v", err)
	}
	s.deps.Log.InfoContext(c.UserContext(), "client removed", "client", c.Params("id"))
	return empty(c, fiber.StatusNoContent)
}

// rotateKeys makes a new access-token signing key; ?revoke=true also
// drops the previous ones (their tokens stop working).
func (s *Server) rotateKeys(c *fiber.Ctx) error {
	kid, err := s.auth.Keys.Rotate(c.UserContext(), c.Query("revoke") == "true")
	if err != nil {
		return transient("the signing keys could not be rotated; retry: %v", err)
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(encodeJSON(map[string]string{"kid": kid}))
}
