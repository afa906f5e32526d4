package flatfhir

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flatfhir/flatfhir/services/api/auth"
	"github.com/flatfhir/flatfhir/shared/bulkclient"
)

// cliUsage lists the subcommands; without one, flatfhir runs the engine.
const cliUsage = `usage:
  flatfhir                      run the engine (configured by FLATFHIR_* variables)
  flatfhir clients add ID --scope 'system/*.rs' (--jwks-url URL | --jwks-file FILE)
  flatfhir clients list
  flatfhir clients remove ID
  flatfhir clients keygen --out PREFIX [--alg ES384|RS384]
                                write PREFIX.key.pem (private) and PREFIX.jwks.json (public)
  flatfhir keys rotate [--revoke]  new access-token signing key (--revoke: old tokens stop working)
  flatfhir token --client ID --key FILE [--scope S] [--url BASE] [--raw]
                                sign a client assertion and fetch an access token

  flatfhir export --url BASE [--group ID | --patient-level] [--type T,..] [--since INSTANT | --since-last]
                [--type-filter Q].. [--elements E,..] [--out DIR] [--client ID --key FILE] [--post]
                                export from any Bulk Data v2 server into DIR: polls as Retry-After
                                says, downloads in parallel (gzip), continues an interrupted run,
                                checks every file's count; --since-last exports what changed since
                                the last complete export of the same query into DIR
  flatfhir probe [URL]          exit 0 when URL (default: /readyz on FLATFHIR_METRICS_LISTEN)
                                answers 200, else print its answer and exit 1: a health check
                                for images without a shell

  flatfhir cluster [--dir DIR] [--shards 2 --replicas 2 --nats 3 --ingesters 2 --writers 2]
                                run a real cluster on this machine, one process per server
                                and role (make run-cluster)
  flatfhir nats-node --name N --port P --cluster-port C --routes H:P,.. --dir DIR
                                run one node of a JetStream cluster

clients and keys talk to NATS at FLATFHIR_NATS_URL (default nats://127.0.0.1:FLATFHIR_NATS_PORT).
`

// IsCommand reports whether args (without the program name) name a CLI
// subcommand rather than running the engine.
func IsCommand(args []string) bool { return len(args) > 0 }

// Command runs a CLI subcommand and returns the process exit code.
func Command(ctx context.Context, args []string, out, errOut io.Writer) int {
	err := command(ctx, args, out)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp), errors.Is(err, errUsage):
		fmt.Fprint(errOut, cliUsage)
		return 2
	default:
		fmt.Fprintln(errOut, "flatfhir:", err)
		return 1
	}
}

var errUsage = errors.New("usage")

func command(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	switch args[0] {
	case "clients":
		if len(args) < 2 {
			return errUsage
		}
		switch args[1] {
		case "add":
			return clientsAdd(ctx, args[2:], out)
		case "list":
			return clientsList(ctx, out)
		case "remove":
			if len(args) != 3 {
				return errUsage
			}
			return withRegistry(ctx, func(r *auth.Registry) error {
				if err := r.Delete(ctx, args[2]); err != nil {
					return err
				}
				fmt.Fprintf(out, "client %s removed; its tokens stop working now\n", args[2])
				return nil
			})
		case "keygen":
			return clientsKeygen(args[2:], out)
		}
	case "keys":
		if len(args) >= 2 && args[1] == "rotate" {
			fs := flag.NewFlagSet("keys rotate", flag.ContinueOnError)
			revoke := fs.Bool("revoke", false, "drop the previous keys at once")
			if err := fs.Parse(args[2:]); err != nil {
				return err
			}
			return keysRotate(ctx, *revoke, out)
		}
	case "token":
		return tokenCommand(ctx, args[1:], out)
	case "export":
		return exportCommand(ctx, args[1:], out)
	case "probe":
		return probeCommand(ctx, args[1:], out)
	case "cluster":
		return clusterCommand(ctx, args[1:], out)
	case "nats-node":
		return natsNode(ctx, args[1:])
	case "help", "-h", "--help":
		return errUsage
	}
	return errUsage
}

// jetStreamFromEnv connects to the engine's NATS.
func jetStreamFromEnv() (*nats.Conn, jetstream.JetStream, error) {
	u := env("FLATFHIR_NATS_URL", "")
	if u == "" {
		u = "nats://127.0.0.1:" + env("FLATFHIR_NATS_PORT", "4222")
	}
	nc, err := nats.Connect(u, nats.Name("flatfhir-cli"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to nats %s (is the engine running? set FLATFHIR_NATS_URL): %w", u, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

func withRegistry(ctx context.Context, f func(*auth.Registry) error) error {
	nc, js, err := jetStreamFromEnv()
	if err != nil {
		return err
	}
	defer nc.Close()
	r, err := auth.OpenRegistry(ctx, js)
	if err != nil {
		return fmt.Errorf("%w (start the engine once so that it creates its buckets)", err)
	}
	return f(r)
}

// leadingID takes a positional ID before the flags.
func leadingID(args []string) (string, []string) {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return args[0], args[1:]
	}
	return "", args
}

func clientsAdd(ctx context.Context, args []string, out io.Writer) error {
	id, args := leadingID(args)
	fs := flag.NewFlagSet("clients add", flag.ContinueOnError)
	scope := fs.String("scope", "system/*.rs", "space-separated system scopes the client may be granted")
	jwksURL := fs.String("jwks-url", "", "the client's JWKS URL (https; http only on loopback)")
	jwksFile := fs.String("jwks-file", "", "a file holding the client's public JWK Set (inline registration)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if id == "" || fs.NArg() > 0 {
		return errUsage
	}
	c := auth.Client{ID: id, JWKSURI: *jwksURL, Scope: *scope}
	if *jwksFile != "" {
		b, err := os.ReadFile(*jwksFile)
		if err != nil {
			return fmt.Errorf("read JWKS: %w", err)
		}
		c.JWKS = b
	}
	if err := c.Validate(); err != nil {
		return err
	}
	return withRegistry(ctx, func(r *auth.Registry) error {
		if err := r.Put(ctx, c); err != nil {
			return err
		}
		fmt.Fprintf(out, "client %s registered with scope %q\n", id, c.Scope)
		return nil
	})
}

func clientsList(ctx context.Context, out io.Writer) error {
	return withRegistry(ctx, func(r *auth.Registry) error {
		clients, err := r.List(ctx)
		if err != nil {
			return err
		}
		for _, c := range clients {
			keys := c.JWKSURI
			if keys == "" {
				keys = "inline JWKS"
			}
			fmt.Fprintf(out, "%s\t%s\t%s\n", c.ID, c.Scope, keys)
		}
		return nil
	})
}

func keysRotate(ctx context.Context, revoke bool, out io.Writer) error {
	nc, js, err := jetStreamFromEnv()
	if err != nil {
		return err
	}
	defer nc.Close()
	ac := auth.DefaultConfig()
	k, err := auth.OpenKeyring(ctx, js, ac.TokenLifetime+ac.ClockSkew, time.Now)
	if err != nil {
		return err
	}
	kid, err := k.Rotate(ctx, revoke)
	if err != nil {
		return err
	}
	if revoke {
		fmt.Fprintf(out, "signing key %s is active; every earlier token is refused now\n", kid)
	} else {
		fmt.Fprintf(out, "signing key %s is active; earlier tokens stay valid until they expire\n", kid)
	}
	return nil
}

// clientsKeygen makes a client key pair: the private key as PKCS#8 PEM and
// the public key as a JWK Set whose kid is the key's RFC 7638 thumbprint.
func clientsKeygen(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("clients keygen", flag.ContinueOnError)
	prefix := fs.String("out", "", "file prefix: writes PREFIX.key.pem and PREFIX.jwks.json")
	alg := fs.String("alg", "ES384", "ES384 (EC P-384) or RS384 (RSA 3072)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *prefix == "" || fs.NArg() > 0 {
		return errUsage
	}
	var key crypto.Signer
	var err error
	switch *alg {
	case "ES384":
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "RS384":
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	default:
		return fmt.Errorf("--alg %q is not ES384 or RS384", *alg)
	}
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	kid, set, err := publicJWKS(key, *alg)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode private key: %w", err)
	}
	if err := os.WriteFile(*prefix+".key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write private key: %w", err)
	}
	if err := os.WriteFile(*prefix+".jwks.json", set, 0o644); err != nil {
		return fmt.Errorf("write JWKS: %w", err)
	}
	fmt.Fprintf(out, "wrote %s.key.pem (private: keep it) and %s.jwks.json (public, kid %s)\n", *prefix, *prefix, kid)
	return nil
}

// publicJWKS is the JWK Set of key's public part, and its kid (the RFC
// 7638 thumbprint, so that the private key alone tells its kid).
func publicJWKS(key crypto.Signer, alg string) (string, []byte, error) {
	kid, err := bulkclient.Thumbprint(key.Public())
	if err != nil {
		return "", nil, err
	}
	j, err := jwkset.NewJWKFromKey(key.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.ALG(alg), USE: jwkset.UseSig}})
	if err != nil {
		return "", nil, fmt.Errorf("encode JWK: %w", err)
	}
	set, err := json.MarshalIndent(map[string]any{"keys": []any{j.Marshal()}}, "", "  ")
	if err != nil {
		return "", nil, fmt.Errorf("encode JWKS: %w", err)
	}
	return kid, append(set, '\n'), nil
}

// tokenCommand signs a client assertion with a local key and exchanges it
// for an access token, as a Backend Services client does.
func tokenCommand(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	client := fs.String("client", "", "client_id")
	keyFile := fs.String("key", "", "the client's private key (PEM)")
	kid := fs.String("kid", "", "key id (default: the key's RFC 7638 thumbprint, as keygen sets it)")
	scope := fs.String("scope", "system/*.rs", "scopes to request")
	base := fs.String("url", env("FLATFHIR_BASE_URL", "http://127.0.0.1:8080"), "the FHIR base URL")
	raw := fs.Bool("raw", false, "print only the access token")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *client == "" || *keyFile == "" || fs.NArg() > 0 {
		return errUsage
	}
	key, alg, err := bulkclient.ReadPrivateKey(*keyFile)
	if err != nil {
		return err
	}
	bs := &bulkclient.BackendServices{BaseURL: *base, ClientID: *client, Key: key, KeyID: *kid, Alg: alg, Scope: *scope}
	tr, body, err := bs.Request(ctx)
	if err != nil {
		return err
	}
	if *raw {
		fmt.Fprintln(out, tr.AccessToken)
		return nil
	}
	fmt.Fprintf(out, "%s\n", body)
	return nil
}
