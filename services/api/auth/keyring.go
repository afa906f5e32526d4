package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/flatfhir/flatfhir/streams"
)

// signingKey is one of the engine's access-token keys (ES384, P-384).
type signingKey struct {
	Kid     string    `json:"kid"`
	Created time.Time `json:"created"`
	// Retired is when a newer key replaced this one; zero for the active
	// key. A retired key still verifies until the tokens it signed have
	// expired.
	Retired time.Time `json:"retired,omitzero"`
	PKCS8   []byte    `json:"pkcs8"`
}

type keyringDoc struct {
	// Keys are newest first; Keys[0] signs.
	Keys []signingKey `json:"keys"`
}

// Keyring is the engine's set of signing keys in KV (auth_keys/keyring).
// Every replica reads it from KV, so a rotation on one is seen by all.
type Keyring struct {
	kv jetstream.KeyValue
	// keep is how long a retired key still verifies.
	keep time.Duration
	now  func() time.Time

	mu     sync.Mutex
	rev    uint64
	parsed map[string]parsedKey
	active string
}

type parsedKey struct {
	key     *ecdsa.PrivateKey
	retired time.Time
}

// OpenKeyring opens the keyring and creates its first key when there is
// none (replicas starting together agree on one through Create).
func OpenKeyring(ctx context.Context, js jetstream.JetStream, keep time.Duration, now func() time.Time) (*Keyring, error) {
	kv, err := js.KeyValue(ctx, streams.BucketAuthKeys)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", streams.BucketAuthKeys, err)
	}
	k := &Keyring{kv: kv, keep: keep, now: now}
	if _, err := kv.Get(ctx, streams.KeyAuthKeyring); errors.Is(err, jetstream.ErrKeyNotFound) {
		first, err := newSigningKey(now())
		if err != nil {
			return nil, err
		}
		b, _ := json.Marshal(keyringDoc{Keys: []signingKey{first}})
		if _, err := kv.Create(ctx, streams.KeyAuthKeyring, b); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("create signing keyring: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("read signing keyring: %w", err)
	}
	if _, err := k.load(ctx); err != nil {
		return nil, err
	}
	return k, nil
}

func newSigningKey(now time.Time) (signingKey, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return signingKey{}, fmt.Errorf("generate signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return signingKey{}, fmt.Errorf("encode signing key: %w", err)
	}
	return signingKey{Kid: nuid.Next(), Created: now.UTC(), PKCS8: der}, nil
}

// load reads the keyring from KV, parsing it again only when it changed.
func (k *Keyring) load(ctx context.Context) (map[string]parsedKey, error) {
	e, err := k.kv.Get(ctx, streams.KeyAuthKeyring)
	if err != nil {
		return nil, fmt.Errorf("read signing keyring: %w", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if e.Revision() == k.rev {
		return k.parsed, nil
	}
	var doc keyringDoc
	if err := json.Unmarshal(e.Value(), &doc); err != nil || len(doc.Keys) == 0 {
		return nil, fmt.Errorf("signing keyring is unreadable or empty")
	}
	parsed := make(map[string]parsedKey, len(doc.Keys))
	for _, sk := range doc.Keys {
		key, err := x509.ParsePKCS8PrivateKey(sk.PKCS8)
		ec, ok := key.(*ecdsa.PrivateKey)
		if err != nil || !ok || ec.Curve != elliptic.P384() {
			return nil, fmt.Errorf("signing key %s is not a P-384 key", sk.Kid)
		}
		parsed[sk.Kid] = parsedKey{key: ec, retired: sk.Retired}
	}
	k.rev, k.parsed, k.active = e.Revision(), parsed, doc.Keys[0].Kid
	return parsed, nil
}

// signer returns the active key.
func (k *Keyring) signer(ctx context.Context) (string, *ecdsa.PrivateKey, error) {
	keys, err := k.load(ctx)
	if err != nil {
		return "", nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.active, keys[k.active].key, nil
}

// verifier returns the public key kid names, if it still verifies.
func (k *Keyring) verifier(ctx context.Context, kid string) (*ecdsa.PublicKey, error) {
	keys, err := k.load(ctx)
	if err != nil {
		return nil, err
	}
	pk, ok := keys[kid]
	if !ok || (!pk.retired.IsZero() && !k.now().Before(pk.retired.Add(k.keep))) {
		return nil, fmt.Errorf("the token's signing key %q is not (or no longer) one of this server's", kid)
	}
	return &pk.key.PublicKey, nil
}

// Rotate makes a new key the signing key. Previous keys keep verifying
// until the tokens they signed have expired, unless revoke is true: then
// they are dropped at once and every token they signed is refused.
func (k *Keyring) Rotate(ctx context.Context, revoke bool) (string, error) {
	for range 20 {
		e, err := k.kv.Get(ctx, streams.KeyAuthKeyring)
		var doc keyringDoc
		var rev uint64
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return "", fmt.Errorf("read signing keyring: %w", err)
		default:
			rev = e.Revision()
			if err := json.Unmarshal(e.Value(), &doc); err != nil {
				return "", fmt.Errorf("decode signing keyring: %w", err)
			}
		}
		now := k.now().UTC()
		next, err := newSigningKey(now)
		if err != nil {
			return "", err
		}
		kept := []signingKey{next}
		for _, sk := range doc.Keys {
			if revoke {
				break
			}
			if sk.Retired.IsZero() {
				sk.Retired = now
			}
			if now.Before(sk.Retired.Add(k.keep)) {
				kept = append(kept, sk)
			}
		}
		b, _ := json.Marshal(keyringDoc{Keys: kept})
		if rev == 0 {
			_, err = k.kv.Create(ctx, streams.KeyAuthKeyring, b)
		} else {
			_, err = k.kv.Update(ctx, streams.KeyAuthKeyring, b, rev)
		}
		if err == nil {
			return next.Kid, nil
		}
	}
	return "", errors.New("rotate signing keyring: too much contention")
}
