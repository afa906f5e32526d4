package fhir

import "encoding/json"

// Issue severities and the IssueType codes flatfhir uses.
const (
	SeverityFatal       = "fatal"
	SeverityError       = "error"
	SeverityWarning     = "warning"
	SeverityInformation = "information"

	CodeInvalid       = "invalid"
	CodeStructure     = "structure"
	CodeRequired      = "required"
	CodeValue         = "value"
	CodeNotSupported  = "not-supported"
	CodeNotFound      = "not-found"
	CodeProcessing    = "processing"
	CodeException     = "exception"
	CodeTransient     = "transient"
	CodeThrottled     = "throttled"
	CodeTooCostly     = "too-costly"
	CodeSecurity      = "security"
	CodeLogin         = "login"
	CodeForbidden     = "forbidden"
	CodeInformational = "informational"
	CodeDeleted       = "deleted"
)

// Issue is one OperationOutcome.issue.
type Issue struct {
	Severity    string   `json:"severity"`
	Code        string   `json:"code"`
	Diagnostics string   `json:"diagnostics,omitempty"`
	Expression  []string `json:"expression,omitempty"`
}

// OperationOutcome is the R4 resource of that name.
type OperationOutcome struct {
	ResourceType string  `json:"resourceType"`
	Issue        []Issue `json:"issue"`
}

// Outcome builds an OperationOutcome with one issue.
func Outcome(severity, code, diagnostics string) OperationOutcome {
	return OperationOutcome{ResourceType: "OperationOutcome", Issue: []Issue{{Severity: severity, Code: code, Diagnostics: diagnostics}}}
}

// JSON is the outcome's JSON encoding.
func (o OperationOutcome) JSON() []byte {
	b, _ := json.Marshal(o) // a struct of strings always marshals
	return b
}
