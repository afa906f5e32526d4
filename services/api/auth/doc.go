// Package auth is flatfhir's SMART Backend Services authorization server
// (SMART App Launch 2.0.0, as Bulk Data v2 requires it): the registry of
// clients, the client_credentials token endpoint with asymmetric client
// authentication (RS384 and ES384 JWT assertions), scope negotiation for
// SMART v1 and v2 system scopes, and the access tokens the engine signs
// and verifies.
//
// Every piece of state lives in JetStream KV so that any number of API
// replicas agree at once: clients (auth_clients, read on every request, so
// a change or removal applies immediately), the signing keyring
// (auth_keys) and the ids of used assertions (auth_jti, whose Create
// refuses a replay on every replica). The only process-local state is the
// JWKS cache, which never outlives what the client's Cache-Control allows.
//
// The HTTP shape (routes, OAuth JSON errors, OperationOutcomes) is the api
// package's; this package returns *Error values that carry the OAuth error
// code, the HTTP status and a description.
package auth
