package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/streams"
)

// Client is a registered SMART Backend Services client. Field names follow
// OAuth dynamic client registration (RFC 7591).
type Client struct {
	ID string `json:"client_id"`
	// JWKSURI is where the client publishes its public keys (preferred).
	JWKSURI string `json:"jwks_uri,omitempty"`
	// JWKS is an inline JWK Set, when the client has no URL.
	JWKS json.RawMessage `json:"jwks,omitempty"`
	// Scope is the space-separated system scopes the client may be
	// granted.
	Scope string `json:"scope"`
}

var clientIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// ValidClientID reports whether id can name a client: letters, digits,
// '-' and '_', at most 64.
func ValidClientID(id string) bool { return clientIDPattern.MatchString(id) }

// Validate checks a registration: a valid id, exactly one of jwks_uri and
// jwks, public keys only, unique kids, and known scopes.
func (c Client) Validate() error {
	if !ValidClientID(c.ID) {
		return fmt.Errorf("client_id %q must be 1-64 letters, digits, '-' or '_'", c.ID)
	}
	hasSet := len(c.JWKS) > 0 && string(c.JWKS) != "null"
	switch {
	case c.JWKSURI == "" && !hasSet:
		return errors.New("a client needs jwks_uri or jwks")
	case c.JWKSURI != "" && hasSet:
		return errors.New("a client has jwks_uri or jwks, not both")
	case c.JWKSURI != "":
		if err := checkJWKSURI(c.JWKSURI); err != nil {
			return err
		}
	default:
		if err := checkJWKS(c.JWKS); err != nil {
			return fmt.Errorf("jwks: %w", err)
		}
	}
	_, err := validateScopes(c.Scope)
	return err
}

// checkJWKSURI accepts https URLs, and http only on a loopback host (a
// JWKS served beside the client on the same machine, and tests).
func checkJWKSURI(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil || u.Fragment != "" {
		return fmt.Errorf("jwks_uri %q is not an absolute URL without credentials or fragment", s)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if ip := net.ParseIP(u.Hostname()); u.Hostname() == "localhost" || ip != nil && ip.IsLoopback() {
			return nil
		}
	}
	return fmt.Errorf("jwks_uri %q must use https (http only on a loopback host)", s)
}

// checkJWKS validates an inline set: every key usable and public, kids
// present and unique.
func checkJWKS(raw json.RawMessage) error {
	keys, err := splitSet(raw)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return errors.New("the set has no keys")
	}
	seen := map[string]bool{}
	for i, k := range keys {
		if k.meta.Kid == "" || k.meta.Kty == "" {
			return fmt.Errorf("key %d needs kid and kty", i)
		}
		if k.meta.D != "" || k.meta.P != "" {
			return fmt.Errorf("key %q holds private key material: register the public key only", k.meta.Kid)
		}
		if seen[k.meta.Kid] {
			return fmt.Errorf("kid %q appears twice", k.meta.Kid)
		}
		seen[k.meta.Kid] = true
		if _, err := k.publicKey(); err != nil {
			return fmt.Errorf("key %q: %w", k.meta.Kid, err)
		}
	}
	return nil
}

// Registry is the client registry in KV bucket auth_clients.
type Registry struct {
	kv jetstream.KeyValue
}

// ErrUnknownClient is returned for a client id that is not registered.
var ErrUnknownClient = errors.New("unknown client")

// OpenRegistry opens the registry (streams.Ensure created the bucket).
func OpenRegistry(ctx context.Context, js jetstream.JetStream) (*Registry, error) {
	kv, err := js.KeyValue(ctx, streams.BucketAuthClients)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", streams.BucketAuthClients, err)
	}
	return &Registry{kv: kv}, nil
}

// Get reads a client; ErrUnknownClient when it is not registered.
func (r *Registry) Get(ctx context.Context, id string) (Client, error) {
	if !ValidClientID(id) {
		return Client{}, ErrUnknownClient
	}
	e, err := r.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Client{}, ErrUnknownClient
	}
	if err != nil {
		return Client{}, fmt.Errorf("read client %s: %w", id, err)
	}
	var c Client
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		return Client{}, fmt.Errorf("decode client %s: %w", id, err)
	}
	return c, nil
}

// Put validates and stores (creates or replaces) a client.
func (r *Registry) Put(ctx context.Context, c Client) error {
	if err := c.Validate(); err != nil {
		return err
	}
	c.Scope = strings.Join(strings.Fields(c.Scope), " ")
	b, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode client %s: %w", c.ID, err)
	}
	if _, err := r.kv.Put(ctx, c.ID, b); err != nil {
		return fmt.Errorf("store client %s: %w", c.ID, err)
	}
	return nil
}

// Delete removes a client; ErrUnknownClient when there is none.
func (r *Registry) Delete(ctx context.Context, id string) error {
	if _, err := r.Get(ctx, id); err != nil {
		return err
	}
	if err := r.kv.Delete(ctx, id); err != nil {
		return fmt.Errorf("remove client %s: %w", id, err)
	}
	return nil
}

// List returns every client, sorted by id.
func (r *Registry) List(ctx context.Context) ([]Client, error) {
	lister, err := r.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list clients: %w", err)
	}
	var ids []string
	for id := range lister.Keys() {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]Client, 0, len(ids))
	for _, id := range ids {
		c, err := r.Get(ctx, id)
		if errors.Is(err, ErrUnknownClient) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}
