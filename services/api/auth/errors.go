package auth

import (
	"errors"
	"fmt"
	"net/http"
)

// The OAuth 2.0 error codes the token endpoint answers with (RFC 6749
// §5.2), and the bearer-token ones (RFC 6750 §3.1).
const (
	CodeInvalidRequest       = "invalid_request"
	CodeInvalidClient        = "invalid_client"
	CodeUnsupportedGrantType = "unsupported_grant_type"
	CodeInvalidScope         = "invalid_scope"
	CodeTemporarily          = "temporarily_unavailable"
	CodeInvalidToken         = "invalid_token"
	CodeInsufficientScope    = "insufficient_scope"
)

// Error is a refusal with its OAuth error code, HTTP status and a
// description for the client.
type Error struct {
	Status      int
	Code        string
	Description string
}

func (e *Error) Error() string { return e.Code + ": " + e.Description }

func oauthErr(status int, code, format string, a ...any) *Error {
	return &Error{Status: status, Code: code, Description: fmt.Sprintf(format, a...)}
}

func invalidRequest(format string, a ...any) *Error {
	return oauthErr(http.StatusBadRequest, CodeInvalidRequest, format, a...)
}

// invalidClient is every failure to authenticate the client (SMART: 400
// with invalid_client, as no HTTP authentication was attempted).
func invalidClient(format string, a ...any) *Error {
	return oauthErr(http.StatusBadRequest, CodeInvalidClient, format, a...)
}

func invalidToken(format string, a ...any) *Error {
	return oauthErr(http.StatusUnauthorized, CodeInvalidToken, format, a...)
}

// unavailable is a failure of this server (JetStream unreachable): the
// request may be retried.
func unavailable(format string, a ...any) *Error {
	return oauthErr(http.StatusServiceUnavailable, CodeTemporarily, format, a...)
}

// AsError returns err as an *Error, or nil.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}
