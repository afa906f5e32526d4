package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"strings"
	"testing"
)

// jwk is the public JWK of key, with kid.
func jwk(t testing.TB, kid string, key any) string {
	t.Helper()
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	switch k := key.(type) {
	case *ecdsa.PublicKey:
		size := (k.Curve.Params().BitSize + 7) / 8
		return fmt.Sprintf(`{"kty":"EC","crv":"%s","kid":%q,"x":%q,"y":%q}`, k.Curve.Params().Name, kid,
			b64(k.X.FillBytes(make([]byte, size))), b64(k.Y.FillBytes(make([]byte, size))))
	case *rsa.PublicKey:
		return fmt.Sprintf(`{"kty":"RSA","kid":%q,"n":%q,"e":%q}`, kid, b64(k.N.Bytes()), b64(big.NewInt(int64(k.E)).Bytes()))
	}
	t.Fatalf("no JWK for %T", key)
	return ""
}

// FuzzJWKS checks and selects from fuzzed client key sets, the documents a
// client registers or serves at its jwks_uri: no panic, every refusal says
// why, and what is accepted is a public RSA key of 2048 to 8192 bits or an
// EC key, the kid and kty asked for.
func FuzzJWKS(f *testing.F) {
	ec, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	ec256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rs, _ := rsa.GenerateKey(rand.Reader, 2048)
	// A modulus too large to verify with cheaply; it need not be a product
	// of two primes to be refused.
	huge := new(big.Int).Lsh(big.NewInt(1), 16383)
	huge.Add(huge, big.NewInt(1))
	for _, set := range []string{
		`{"keys":[` + jwk(f, "e1", &ec.PublicKey) + `]}`,
		`{"keys":[` + jwk(f, "r1", &rs.PublicKey) + `,` + jwk(f, "e1", &ec.PublicKey) + `]}`,
		`{"keys":[` + jwk(f, "e2", &ec256.PublicKey) + `]}`,
		`{"keys":[` + jwk(f, "big", &rsa.PublicKey{N: huge, E: 65537}) + `]}`,
		`{"keys":[` + jwk(f, "e1", &ec.PublicKey) + `,` + jwk(f, "e1", &ec.PublicKey) + `]}`,
		`{"keys":[{"kty":"EC","crv":"P-384","kid":"e1","x":"AA","y":"AA"}]}`,
		`{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}`,
		`{"keys":[]}`, `{}`, `[]`,
	} {
		f.Add([]byte(set), "e1", "ES384")
		f.Add([]byte(set), "r1", "RS384")
	}
	f.Fuzz(func(t *testing.T, set []byte, kid, alg string) {
		if err := checkJWKS(set); err != nil {
			if err.Error() == "" {
				t.Fatal("a refusal without a reason")
			}
		}
		key, _, err := selectKey(set, kid, alg)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("a refusal without a reason")
			}
			return
		}
		switch k := key.(type) {
		case *rsa.PublicKey:
			if alg != "RS384" || k.N.BitLen() < minRSABits || k.N.BitLen() > maxRSABits {
				t.Fatalf("selected an RSA key of %d bits for %s", k.N.BitLen(), alg)
			}
		case *ecdsa.PublicKey:
			if alg != "ES384" || k.Curve != elliptic.P384() {
				t.Fatalf("selected an EC key on %s for %s", k.Curve.Params().Name, alg)
			}
		default:
			t.Fatalf("selected a %T", key)
		}
		var doc struct{ Keys []struct{ Kid string } }
		if json.Unmarshal(set, &doc) != nil {
			t.Fatalf("selected a key from what is not a JWK Set: %s", set)
		}
	})
}

func TestJWKSRefusesAnRSAKeyTooLargeToVerifyCheaply(t *testing.T) {
	huge := new(big.Int).Lsh(big.NewInt(1), 16383)
	huge.Add(huge, big.NewInt(1))
	err := checkJWKS([]byte(`{"keys":[` + jwk(t, "big", &rsa.PublicKey{N: huge, E: 65537}) + `]}`))
	if err == nil || !strings.Contains(err.Error(), "16384 bits; 2048 to 8192 are accepted") {
		t.Fatalf("a 16384-bit RSA key: %v", err)
	}
}
