package flatfhir

import "github.com/flatfhir/flatfhir/shared/fhir"

func idOf(body []byte) (string, error) {
	h, err := fhir.Inspect(body, true)
	return h.ID, err
}
