package fhir

import (
	"fmt"
	"regexp"
	"time"
)

// instantPattern is the R4 instant regex: seconds and a zone are required.
var instantPattern = regexp.MustCompile(`^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$`)

// ParseInstant parses a FHIR instant, any offset, into UTC.
func ParseInstant(s string) (time.Time, error) {
	if !instantPattern.MatchString(s) {
		return time.Time{}, fmt.Errorf("%q is not a FHIR instant (YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm))", s)
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a valid instant: %w", s, err)
	}
	return t.UTC(), nil
}

// FormatInstant renders t as a FHIR instant in UTC with microseconds, the
// precision of stored stamps: it never rounds up.
func FormatInstant(t time.Time) string {
	return t.UTC().Truncate(time.Microsecond).Format("2006-01-02T15:04:05.000000Z07:00")
}
