package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
)

// maxJWKSBytes bounds a fetched JWK Set.
const maxJWKSBytes = 256 << 10

// minRSABits is the smallest RSA modulus accepted, maxRSABits the
// largest: a verification's cost grows with the square of the modulus, and a
// client's key set, fetched from its own URL, must not make each of its
// token requests cost seconds.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// setKey is one JWK of a set: its raw JSON and the members used to select
// it.
type setKey struct {
	raw  json.RawMessage
	meta struct {
		Kid string `json:"kid"`
		Kty string `json:"kty"`
		Crv string `json:"crv"`
		D   string `json:"d"`
		P   string `json:"p"`
	}
}

// splitSet reads {"keys":[...]}.
func splitSet(raw []byte) ([]setKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, fmt.Errorf("not a JWK Set: %w", err)
	}
	out := make([]setKey, len(set.Keys))
	for i, k := range set.Keys {
		out[i].raw = k
		if err := json.Unmarshal(k, &out[i].meta); err != nil {
			return nil, fmt.Errorf("key %d is not a JWK: %w", i, err)
		}
	}
	return out, nil
}

// publicKey decodes the key (jwkset validates the members: EC points on
// their curve, RSA exponents in range) and keeps the public part.
func (k setKey) publicKey() (any, error) {
	jwk, err := jwkset.NewJWKFromRawJSON(k.raw, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
	if err != nil {
		return nil, err
	}
	switch pub := jwk.Key().(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < minRSABits || pub.N.BitLen() > maxRSABits {
			return nil, fmt.Errorf("RSA key of %d bits; %d to %d are accepted", pub.N.BitLen(), minRSABits, maxRSABits)
		}
		return pub, nil
	case *ecdsa.PublicKey:
		return pub, nil
	default:
		return nil, fmt.Errorf("key type %T is not RSA or EC", pub)
	}
}

// ktyFor is the key type an assertion algorithm needs, and for EC the
// curve.
func ktyFor(alg string) (kty, crv string) {
	switch alg {
	case "RS384":
		return "RSA", ""
	case "ES384":
		return "EC", "P-384"
	}
	return "", ""
}

// selectKey picks the one key whose kid is kid and whose kty fits alg.
// found is false when none matches (a refetch may help); any other
// failure is final.
func selectKey(set []byte, kid, alg string) (key any, found bool, err error) {
	keys, err := splitSet(set)
	if err != nil {
		return nil, false, err
	}
	kty, crv := ktyFor(alg)
	var match []setKey
	for _, k := range keys {
		if k.meta.Kid == kid && k.meta.Kty == kty {
			match = append(match, k)
		}
	}
	switch len(match) {
	case 0:
		return nil, false, fmt.Errorf("the client's JWKS has no key with kid %q and kty %s (as alg %s needs)", kid, kty, alg)
	case 1:
	default:
		return nil, true, fmt.Errorf("the client's JWKS has %d keys with kid %q and kty %s; exactly one must match", len(match), kid, kty)
	}
	pub, err := match[0].publicKey()
	if err != nil {
		return nil, true, fmt.Errorf("key %q is not usable: %w", kid, err)
	}
	if ec, ok := pub.(*ecdsa.PublicKey); ok && ec.Curve != elliptic.P384() {
		return nil, true, fmt.Errorf("key %q is on curve %s; %s needs %s", kid, ec.Curve.Params().Name, alg, crv)
	}
	return pub, true, nil
}

// jwksCache fetches JWK Sets from clients' URLs and keeps each no longer
// than the response's Cache-Control allows.
type jwksCache struct {
	client  *http.Client
	timeout time.Duration
	maxAge  time.Duration
	now     func() time.Time

	mu      sync.Mutex
	entries map[string]jwksEntry
}

type jwksEntry struct {
	body    []byte
	expires time.Time
}

// get returns the set at url: from the cache while it is fresh (unless
// refresh), else fetched. cached reports whether it came from the cache.
func (c *jwksCache) get(ctx context.Context, url string, refresh bool) (body []byte, cached bool, err error) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[url]
	if ok && !now.Before(e.expires) {
		delete(c.entries, url)
		ok = false
	}
	c.mu.Unlock()
	if ok && !refresh {
		return e.body, true, nil
	}
	body, ttl, err := c.fetch(ctx, url)
	if err != nil {
		return nil, false, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if ttl > 0 {
		if len(c.entries) > 10000 { // bounded: forget everything rather than grow
			clear(c.entries)
		}
		c.entries[url] = jwksEntry{body: body, expires: now.Add(ttl)}
	} else {
		delete(c.entries, url)
	}
	return body, false, nil
}

func (c *jwksCache) fetch(ctx context.Context, url string) ([]byte, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("fetch JWKS %s: %w", url, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("fetch JWKS %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("fetch JWKS %s: HTTP %d", url, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, 0, fmt.Errorf("fetch JWKS %s: %w", url, err)
	}
	if len(body) > maxJWKSBytes {
		return nil, 0, fmt.Errorf("fetch JWKS %s: larger than %d bytes", url, maxJWKSBytes)
	}
	if _, err := splitSet(body); err != nil {
		return nil, 0, fmt.Errorf("fetch JWKS %s: %w", url, err)
	}
	ttl := cacheLifetime(resp.Header)
	if ttl > c.maxAge {
		ttl = c.maxAge
	}
	return body, ttl, nil
}

// cacheLifetime is how long a response may be reused: its Cache-Control
// max-age less its Age; zero with no-store, no-cache, or no max-age (a
// response that does not allow caching is not cached).
func cacheLifetime(h http.Header) time.Duration {
	var maxAge int64 = -1
	for _, v := range h.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "no-store", "no-cache":
				return 0
			case "max-age":
				n, err := strconv.ParseInt(strings.Trim(strings.TrimSpace(val), `"`), 10, 64)
				if err != nil || n < 0 {
					return 0
				}
				maxAge = n
			}
		}
	}
	if maxAge <= 0 {
		return 0
	}
	if age, err := strconv.ParseInt(h.Get("Age"), 10, 64); err == nil && age > 0 {
		maxAge -= age
	}
	if maxAge <= 0 {
		return 0
	}
	return time.Duration(maxAge) * time.Second
}
