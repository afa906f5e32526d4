package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/flatfhir/flatfhir/streams"
)

// Config tunes the authorization server.
type Config struct {
	// TokenLifetime is how long an access token is valid (at most 5
	// minutes, as SMART recommends).
	TokenLifetime time.Duration
	// MaxAssertionLifetime bounds how far ahead a client assertion's exp
	// may be (SMART: 5 minutes).
	MaxAssertionLifetime time.Duration
	// ClockSkew is the tolerance for exp, nbf and iat.
	ClockSkew time.Duration
	// JWKSTimeout bounds one fetch of a client's JWKS.
	JWKSTimeout time.Duration
	// JWKSMaxCache caps how long a fetched JWKS is reused, whatever its
	// Cache-Control allows.
	JWKSMaxCache time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		TokenLifetime: 5 * time.Minute, MaxAssertionLifetime: 5 * time.Minute, ClockSkew: time.Minute,
		JWKSTimeout: 5 * time.Second, JWKSMaxCache: time.Hour,
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.TokenLifetime <= 0 || c.TokenLifetime > 5*time.Minute:
		return errors.New("auth token lifetime must be between 1s and 5m")
	case c.MaxAssertionLifetime <= 0 || c.ClockSkew < 0:
		return errors.New("auth assertion lifetime must be positive and clock skew not negative")
	case c.MaxAssertionLifetime+2*c.ClockSkew > streams.AuthJTITTL:
		return fmt.Errorf("auth assertion lifetime plus twice the clock skew must fit in the jti record's %s", streams.AuthJTITTL)
	case c.JWKSTimeout <= 0 || c.JWKSMaxCache < 0:
		return errors.New("auth JWKS timeout must be positive and max cache not negative")
	}
	return nil
}

// Deps are what the authorization server works with.
type Deps struct {
	JS jetstream.JetStream
	// HTTP fetches clients' JWKS; nil uses a client without redirects.
	HTTP *http.Client
	Log  *slog.Logger
	Now  func() time.Time
}

// Authority issues and verifies access tokens.
type Authority struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	Clients *Registry
	Keys    *Keyring
	jti     jetstream.KeyValue
	jwks    *jwksCache
}

// New opens the registry, the keyring (creating the first key) and the
// replay bucket.
func New(ctx context.Context, cfg Config, deps Deps) (*Authority, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.JS == nil || deps.Log == nil {
		return nil, errors.New("auth needs jetstream and a logger")
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.HTTP == nil {
		deps.HTTP = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	a := &Authority{cfg: cfg, log: deps.Log, now: deps.Now,
		jwks: &jwksCache{client: deps.HTTP, timeout: cfg.JWKSTimeout, maxAge: cfg.JWKSMaxCache, now: deps.Now, entries: map[string]jwksEntry{}}}
	var err error
	if a.Clients, err = OpenRegistry(ctx, deps.JS); err != nil {
		return nil, err
	}
	if a.Keys, err = OpenKeyring(ctx, deps.JS, cfg.TokenLifetime+cfg.ClockSkew, deps.Now); err != nil {
		return nil, err
	}
	if a.jti, err = deps.JS.KeyValue(ctx, streams.BucketAuthJTI); err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", streams.BucketAuthJTI, err)
	}
	return a, nil
}

// The form values of a token request.
const (
	GrantClientCredentials = "client_credentials"
	AssertionTypeJWTBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

// TokenRequest is a client_credentials request (SMART Backend Services).
type TokenRequest struct {
	GrantType     string
	Scope         string
	AssertionType string
	Assertion     string
	// Endpoint is this token endpoint's URL: the assertion's aud.
	Endpoint string
	// Issuer names this server in the tokens it signs (the FHIR base).
	Issuer string
}

// TokenResponse is the successful answer (RFC 6749 §5.1).
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
	Scope       string `json:"scope"`
}

// assertionClaims are the claims of a client assertion.
type assertionClaims struct {
	jwt.RegisteredClaims
}

// accessClaims are the claims of an access token this server signs.
type accessClaims struct {
	Scope    string `json:"scope"`
	ClientID string `json:"client_id"`
	jwt.RegisteredClaims
}

const accessTokenType = "at+jwt"

// Token authenticates the client by its assertion (every check of SMART
// Backend Services §"server validation"), mediates the scopes and signs
// an access token. Refusals are *Error.
func (a *Authority) Token(ctx context.Context, req TokenRequest) (TokenResponse, error) {
	switch {
	case req.GrantType == "":
		return TokenResponse{}, invalidRequest("grant_type is missing")
	case req.GrantType != GrantClientCredentials:
		return TokenResponse{}, oauthErr(http.StatusBadRequest, CodeUnsupportedGrantType, "grant_type %q is not supported; use client_credentials", req.GrantType)
	case req.AssertionType == "":
		return TokenResponse{}, invalidRequest("client_assertion_type is missing")
	case req.AssertionType != AssertionTypeJWTBearer:
		return TokenResponse{}, invalidClient("client_assertion_type %q is not supported; use %s", req.AssertionType, AssertionTypeJWTBearer)
	case req.Assertion == "":
		return TokenResponse{}, invalidRequest("client_assertion is missing")
	case req.Scope == "":
		return TokenResponse{}, invalidRequest("scope is missing")
	}
	client, claims, err := a.authenticate(ctx, req)
	if err != nil {
		return TokenResponse{}, err
	}
	requested, _ := ParseScopes(req.Scope)
	registered, _ := ParseScopes(client.Scope)
	granted := Grant(requested, registered)
	if len(granted) == 0 {
		return TokenResponse{}, oauthErr(http.StatusBadRequest, CodeInvalidScope,
			"none of the requested scopes %q is granted to client %s (registered: %q)", req.Scope, client.ID, client.Scope)
	}
	if err := a.recordJTI(ctx, client.ID, claims); err != nil {
		return TokenResponse{}, err
	}
	now := a.now()
	kid, key, err := a.Keys.signer(ctx)
	if err != nil {
		return TokenResponse{}, unavailable("the signing key could not be read; retry: %v", err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodES384, accessClaims{
		Scope: granted.String(), ClientID: client.ID,
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: req.Issuer, Subject: client.ID, ID: nuid.Next(),
			IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(a.cfg.TokenLifetime)),
		},
	})
	tok.Header["kid"] = kid
	tok.Header["typ"] = accessTokenType
	signed, err := tok.SignedString(key)
	if err != nil {
		return TokenResponse{}, fmt.Errorf("sign access token: %w", err)
	}
	a.log.InfoContext(ctx, "access token issued", slog.String("client", client.ID), slog.String("scope", granted.String()))
	return TokenResponse{AccessToken: signed, TokenType: "bearer", ExpiresIn: int(a.cfg.TokenLifetime / time.Second), Scope: granted.String()}, nil
}

// authenticate checks the assertion: header, claims, the client, its key
// and the signature.
func (a *Authority) authenticate(ctx context.Context, req TokenRequest) (Client, assertionClaims, error) {
	var claims assertionClaims
	parser := jwt.NewParser(jwt.WithValidMethods([]string{"RS384", "ES384"}), jwt.WithoutClaimsValidation())
	unverified, _, err := parser.ParseUnverified(req.Assertion, &claims)
	if err != nil {
		return Client{}, claims, invalidClient("client_assertion is not a JWT: %v", err)
	}
	alg, _ := unverified.Header["alg"].(string)
	if kty, _ := ktyFor(alg); kty == "" {
		return Client{}, claims, invalidClient("client_assertion alg %q is not supported; use RS384 or ES384", alg)
	}
	kid, _ := unverified.Header["kid"].(string)
	if kid == "" {
		return Client{}, claims, invalidClient("client_assertion has no kid header")
	}
	if typ, ok := unverified.Header["typ"]; ok && typ != "JWT" {
		return Client{}, claims, invalidClient("client_assertion typ %v must be JWT", typ)
	}
	// Claims (RFC 7523 §3).
	switch {
	case claims.Issuer == "" || claims.Subject == "":
		return Client{}, claims, invalidClient("client_assertion needs iss and sub (both the client_id)")
	case claims.Issuer != claims.Subject:
		return Client{}, claims, invalidClient("client_assertion iss %q and sub %q differ; both must be the client_id", claims.Issuer, claims.Subject)
	case !slices.Contains(claims.Audience, req.Endpoint):
		return Client{}, claims, invalidClient("client_assertion aud %q is not this token endpoint %s", []string(claims.Audience), req.Endpoint)
	case claims.ExpiresAt == nil:
		return Client{}, claims, invalidClient("client_assertion has no exp")
	case claims.ID == "":
		return Client{}, claims, invalidClient("client_assertion has no jti")
	case len(claims.ID) > 1024:
		return Client{}, claims, invalidClient("client_assertion jti is longer than 1024 characters")
	}
	now := a.now()
	switch exp := claims.ExpiresAt.Time; {
	case now.After(exp.Add(a.cfg.ClockSkew)):
		return Client{}, claims, invalidClient("client_assertion expired at %s", exp.UTC().Format(time.RFC3339))
	case exp.After(now.Add(a.cfg.MaxAssertionLifetime + a.cfg.ClockSkew)):
		return Client{}, claims, invalidClient("client_assertion exp %s is more than %s ahead", exp.UTC().Format(time.RFC3339), a.cfg.MaxAssertionLifetime)
	}
	if claims.NotBefore != nil && claims.NotBefore.After(now.Add(a.cfg.ClockSkew)) {
		return Client{}, claims, invalidClient("client_assertion is not valid before %s (nbf)", claims.NotBefore.UTC().Format(time.RFC3339))
	}
	if claims.IssuedAt != nil && claims.IssuedAt.After(now.Add(a.cfg.ClockSkew)) {
		return Client{}, claims, invalidClient("client_assertion iat %s is in the future", claims.IssuedAt.UTC().Format(time.RFC3339))
	}
	client, err := a.Clients.Get(ctx, claims.Issuer)
	if errors.Is(err, ErrUnknownClient) {
		return Client{}, claims, invalidClient("client %q is not registered", claims.Issuer)
	}
	if err != nil {
		return Client{}, claims, unavailable("the client registry could not be read; retry: %v", err)
	}
	key, err := a.clientKey(ctx, client, unverified.Header, kid, alg)
	if err != nil {
		return Client{}, claims, err
	}
	verify := jwt.NewParser(jwt.WithValidMethods([]string{alg}), jwt.WithoutClaimsValidation())
	if _, err := verify.ParseWithClaims(req.Assertion, &assertionClaims{}, func(*jwt.Token) (any, error) { return key, nil }); err != nil {
		return Client{}, claims, invalidClient("client_assertion signature does not verify with key %q: %v", kid, err)
	}
	return client, claims, nil
}

// clientKey resolves the assertion's key: the registered inline JWKS or
// the registered URL (a jku header must equal it), then the one key with
// the kid whose kty fits alg.
func (a *Authority) clientKey(ctx context.Context, client Client, header map[string]any, kid, alg string) (any, error) {
	jku, hasJKU := header["jku"]
	if hasJKU && (client.JWKSURI == "" || jku != client.JWKSURI) {
		return nil, invalidClient("client_assertion jku %v is not the JWKS URL registered for client %s", jku, client.ID)
	}
	if client.JWKSURI == "" {
		key, _, err := selectKey(client.JWKS, kid, alg)
		if err != nil {
			return nil, invalidClient("%v", err)
		}
		return key, nil
	}
	set, cached, err := a.jwks.get(ctx, client.JWKSURI, false)
	if err != nil {
		return nil, invalidClient("the client's JWKS could not be fetched: %v", err)
	}
	key, found, err := selectKey(set, kid, alg)
	if !found && cached {
		// The client may have added a key since: fetch again, once.
		if set, _, err = a.jwks.get(ctx, client.JWKSURI, true); err != nil {
			return nil, invalidClient("the client's JWKS could not be fetched: %v", err)
		}
		key, _, err = selectKey(set, kid, alg)
	}
	if err != nil {
		return nil, invalidClient("%v", err)
	}
	return key, nil
}

// recordJTI refuses an assertion whose jti this client already used: the
// record lives in KV for longer than any assertion can, so every replica
// sees it.
func (a *Authority) recordJTI(ctx context.Context, client string, claims assertionClaims) error {
	sum := sha256.Sum256([]byte(claims.ID))
	key := streams.KeyAssertion(client, hex.EncodeToString(sum[:]))
	_, err := a.jti.Create(ctx, key, []byte(strconv.FormatInt(claims.ExpiresAt.Unix(), 10)))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return invalidClient("client_assertion jti %q was already used", claims.ID)
	}
	if err != nil {
		return unavailable("the assertion could not be recorded; retry: %v", err)
	}
	return nil
}

// Principal is who an access token speaks for, with the scopes it grants
// now (the token's scopes narrowed to the client's current registration).
type Principal struct {
	ClientID  string
	Scopes    Scopes
	ExpiresAt time.Time
}

// Verify checks an access token: this server's signature with a key still
// in the keyring, not expired, and a client still registered. Refusals are
// *Error with invalid_token.
func (a *Authority) Verify(ctx context.Context, token string) (Principal, error) {
	var claims accessClaims
	parser := jwt.NewParser(jwt.WithValidMethods([]string{"ES384"}), jwt.WithExpirationRequired(), jwt.WithTimeFunc(a.now))
	var keyErr error
	_, err := parser.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		if t.Header["typ"] != accessTokenType {
			keyErr = invalidToken("the token is not an access token of this server")
			return nil, keyErr
		}
		kid, _ := t.Header["kid"].(string)
		key, err := a.Keys.verifier(ctx, kid)
		if err != nil {
			keyErr = invalidToken("%v", err)
		}
		return key, err
	})
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return Principal{}, invalidToken("the access token expired; request a new one")
	case keyErr != nil:
		return Principal{}, keyErr
	case err != nil:
		return Principal{}, invalidToken("the access token is not valid: %v", err)
	case claims.IssuedAt == nil || claims.ExpiresAt.Sub(claims.IssuedAt.Time) > 5*time.Minute+time.Second:
		return Principal{}, invalidToken("the access token lives longer than this server issues")
	}
	client, err := a.Clients.Get(ctx, claims.ClientID)
	if errors.Is(err, ErrUnknownClient) {
		return Principal{}, invalidToken("client %q is no longer registered", claims.ClientID)
	}
	if err != nil {
		return Principal{}, unavailable("the client registry could not be read; retry: %v", err)
	}
	scopes, _ := ParseScopes(claims.Scope)
	registered, _ := ParseScopes(client.Scope)
	return Principal{ClientID: client.ID, Scopes: Grant(scopes, registered), ExpiresAt: claims.ExpiresAt.Time}, nil
}
