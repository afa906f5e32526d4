package flatfhir

import "reflect"

// withDefaults returns tune with each zero field taken from def, so that a
// partial tuning (one field set) keeps every other default instead of
// replacing the whole configuration with zero values.
func withDefaults[T any](tune, def T) T {
	out := reflect.ValueOf(&tune).Elem()
	d := reflect.ValueOf(def)
	for i := range out.NumField() {
		if f := out.Field(i); f.CanSet() && f.IsZero() {
			f.Set(d.Field(i))
		}
	}
	return tune
}
