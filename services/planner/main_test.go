package planner_test

import (
	"testing"

	"github.com/flatfhir/flatfhir/shared/testenv"
)

// TestMain stops the package's ClickHouse server and removes its data when
// the tests are done.
func TestMain(m *testing.M) { testenv.Main(m) }
