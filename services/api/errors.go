package api

import (
	"errors"
	"fmt"

	"github.com/gofiber/fiber/v2"

	"github.com/flatfhir/flatfhir/shared/fhir"
)

// problem is an error a request can end in. It becomes an OperationOutcome
// at the edge.
type problem struct {
	status   int
	severity string
	code     string
	msg      string
}

func (p *problem) Error() string { return p.msg }

// The kinds of failure, one constructor each: status and issue code live here only.
func badRequest(format string, a ...any) *problem {
	return &problem{fiber.StatusBadRequest, fhir.SeverityError, fhir.CodeInvalid, fmt.Sprintf(format, a...)}
}

func notSupported(format string, a ...any) *problem {
	return &problem{fiber.StatusBadRequest, fhir.SeverityError, fhir.CodeNotSupported, fmt.Sprintf(format, a...)}
}

// unauthorized is a request without a valid access token; the caller sets
// WWW-Authenticate.
func unauthorized(format string, a ...any) *problem {
	return &problem{fiber.StatusUnauthorized, fhir.SeverityError, fhir.CodeLogin, fmt.Sprintf(format, a...)}
}

// forbidden is a valid token whose scopes do not cover the request.
func forbidden(format string, a ...any) *problem {
	return &problem{fiber.StatusForbidden, fhir.SeverityError, fhir.CodeForbidden, fmt.Sprintf(format, a...)}
}

func notFound(format string, a ...any) *problem {
	return &problem{fiber.StatusNotFound, fhir.SeverityError, fhir.CodeNotFound, fmt.Sprintf(format, a...)}
}

func unsupportedMedia(format string, a ...any) *problem {
	return &problem{fiber.StatusUnsupportedMediaType, fhir.SeverityError, fhir.CodeNotSupported, fmt.Sprintf(format, a...)}
}

func tooLarge(format string, a ...any) *problem {
	return &problem{fiber.StatusRequestEntityTooLarge, fhir.SeverityError, fhir.CodeTooCostly, fmt.Sprintf(format, a...)}
}

func jobFailed(format string, a ...any) *problem {
	return &problem{fiber.StatusInternalServerError, fhir.SeverityError, fhir.CodeProcessing, fmt.Sprintf(format, a...)}
}

// broken is stored data the server cannot serve (a malformed resource):
// the request cannot succeed until the data is mended.
func broken(format string, a ...any) *problem {
	return &problem{fiber.StatusInternalServerError, fhir.SeverityError, fhir.CodeProcessing, fmt.Sprintf(format, a...)}
}

// transient is a failure of this request while the job itself may be fine.
func transient(format string, a ...any) *problem {
	return &problem{fiber.StatusServiceUnavailable, fhir.SeverityError, fhir.CodeTransient, fmt.Sprintf(format, a...)}
}

// empty answers status with no body and no Content-Type. Fiber's
// SendStatus would write the status text ("Accepted") as a text/plain
// body, which clients that parse every body as JSON choke on.
func empty(c *fiber.Ctx, status int) error {
	c.Status(status)
	c.Response().ResetBody()
	return nil
}

// sendOutcome writes p as an OperationOutcome.
func sendOutcome(c *fiber.Ctx, p *problem) error {
	c.Set(fiber.HeaderContentType, "application/fhir+json")
	return c.Status(p.status).Send(fhir.Outcome(p.severity, p.code, p.msg).JSON())
}

// errorHandler turns every error into an OperationOutcome: problems as
// they are, Fiber's own errors (unknown route, bad method) with their
// status, anything else as a 500 that does not leak internals.
func (s *Server) errorHandler(c *fiber.Ctx, err error) error {
	var p *problem
	var fe *fiber.Error
	switch {
	case errors.As(err, &p):
		return sendOutcome(c, p)
	case errors.As(err, &fe):
		e := fe
		code := fhir.CodeProcessing
		if e.Code == fiber.StatusNotFound {
			code = fhir.CodeNotFound
		} else if e.Code < 500 {
			code = fhir.CodeInvalid
		}
		return sendOutcome(c, &problem{e.Code, fhir.SeverityError, code, e.Message})
	default:
		s.deps.Log.ErrorContext(c.UserContext(), "request failed", "method", c.Method(), "path", c.Path(), "error", err)
		return sendOutcome(c, &problem{fiber.StatusInternalServerError, fhir.SeverityError, fhir.CodeException, "internal error; the request may be retried"})
	}
}
