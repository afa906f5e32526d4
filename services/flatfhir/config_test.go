package flatfhir

import (
	"strings"
	"testing"
	"time"
)

func TestLauncherConfigFromEnv(t *testing.T) {
	t.Setenv("FLATFHIR_RETENTION", "90m")
	t.Setenv("FLATFHIR_POLL_RATE", "0.5")
	t.Setenv("FLATFHIR_WRITERS", "3")
	c, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if c.Retention != 90*time.Minute || c.PollRate != 0.5 || c.Writers != 3 || c.Role != RoleAll {
		t.Errorf("config %+v", c)
	}
	bad := map[string]string{
		"FLATFHIR_RETENTION": "forever",
		"FLATFHIR_POLL_RATE": "-1",
		"FLATFHIR_WRITERS":   "two",
		"FLATFHIR_ROLE":      "janitor",
	}
	for key, val := range bad {
		t.Run(key, func(t *testing.T) {
			t.Setenv(key, val)
			_, err := FromEnv()
			if err == nil || !strings.Contains(err.Error(), val) {
				t.Errorf("%s=%s: error %v, want one naming the value", key, val, err)
			}
		})
	}
	t.Run("single role needs external servers", func(t *testing.T) {
		t.Setenv("FLATFHIR_ROLE", "writer")
		if _, err := FromEnv(); err == nil {
			t.Error("role writer without NATS and ClickHouse addresses accepted")
		}
	})
}
