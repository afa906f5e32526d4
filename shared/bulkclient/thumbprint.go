package bulkclient

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/big"
)

// Thumbprint is the RFC 7638 JWK thumbprint (SHA-256, base64url) of an EC
// or RSA public key: the key id flatfhir clients keygen gives a key, and
// the one BackendServices sends when KeyID is empty.
func Thumbprint(pub crypto.PublicKey) (string, error) {
	b64 := base64.RawURLEncoding.EncodeToString
	var canon string
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		point, err := k.Bytes() // 0x04 || X || Y, each padded to the curve's size
		if err != nil {
			return "", fmt.Errorf("encode EC key: %w", err)
		}
		size := (len(point) - 1) / 2
		canon = fmt.Sprintf(`{"crv":%q,"kty":"EC","x":%q,"y":%q}`, k.Curve.Params().Name, b64(point[1:1+size]), b64(point[1+size:]))
	case *rsa.PublicKey:
		canon = fmt.Sprintf(`{"e":%q,"kty":"RSA","n":%q}`, b64(big.NewInt(int64(k.E)).Bytes()), b64(k.N.Bytes()))
	default:
		return "", fmt.Errorf("key type %T is not EC or RSA", pub)
	}
	sum := sha256.Sum256([]byte(canon))
	return b64(sum[:]), nil
}
