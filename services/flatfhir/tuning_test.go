package flatfhir

import (
	"testing"
	"time"

	"github.com/flatfhir/flatfhir/services/ingester"
	"github.com/flatfhir/flatfhir/services/planner"
)

func TestEngineTuningKeepsTheDefaultsOfFieldsItLeavesZero(t *testing.T) {
	got := withDefaults(planner.Config{MaxFileResources: 7}, planner.DefaultConfig())
	want := planner.DefaultConfig()
	want.MaxFileResources = 7
	if got != want {
		t.Errorf("planner tuning with one field: %+v, want the defaults but that field: %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("the merged tuning is invalid: %v", err)
	}
	in := withDefaults(ingester.Config{FlushInterval: time.Second}, ingester.DefaultConfig())
	if in.BatchSize != ingester.DefaultConfig().BatchSize || in.FlushInterval != time.Second {
		t.Errorf("ingester tuning %+v", in)
	}
	if z := withDefaults(planner.Config{}, planner.DefaultConfig()); z != planner.DefaultConfig() {
		t.Errorf("an empty tuning is %+v, want the defaults", z)
	}
}
