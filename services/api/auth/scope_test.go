package auth

import "testing"

func TestAuthParseScope(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ok   bool
		want string // String() of the parsed scope
		perm Perm
	}{
		{"system/*.read", true, "system/*.read", PermRead | PermSearch},
		{"system/*.write", true, "system/*.write", PermCreate | PermUpdate | PermDelete},
		{"system/*.*", true, "system/*.*", permAll},
		{"system/Observation.rs", true, "system/Observation.rs", PermRead | PermSearch},
		{"system/Observation.cruds", true, "system/Observation.cruds", permAll},
		{"system/Patient.r", true, "system/Patient.r", PermRead},
		{"system/Patient.cd", true, "system/Patient.cd", PermCreate | PermDelete},
		{"system/*.sr", false, "", 0},  // out of order
		{"system/*.dus", false, "", 0}, // out of order
		{"system/*.rr", false, "", 0},
		{"system/*.", false, "", 0},
		{"system/*.x", false, "", 0},
		{"system/Foo.rs", false, "", 0},
		{"patient/*.rs", false, "", 0},
		{"user/Observation.read", false, "", 0},
		{"system/Observation.rs?category=laboratory", false, "", 0},
		{"launch", false, "", 0},
		{"system/*", false, "", 0},
	} {
		got, ok := ParseScope(tc.in)
		if ok != tc.ok || ok && (got.String() != tc.want || got.Perms != tc.perm) {
			t.Errorf("ParseScope(%q) = %+v %v, want %q %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestAuthGrant(t *testing.T) {
	for _, tc := range []struct{ requested, registered, want string }{
		{"system/*.read", "system/*.rs", "system/*.read"},
		{"system/*.rs", "system/*.read", "system/*.rs"},
		{"system/*.cruds", "system/*.rs", "system/*.rs"},
		{"system/*.*", "system/*.read", "system/*.read"},
		{"system/*.*", "system/*.r", "system/*.r"},
		{"system/*.rs", "system/Patient.rs system/Observation.r", "system/Patient.rs system/Observation.r"},
		{"system/Observation.rs system/*.rs", "system/*.rs", "system/*.rs"},
		{"system/Observation.rs", "system/Patient.rs", ""},
		{"system/*.cud", "system/*.rs", ""},
	} {
		req, _ := ParseScopes(tc.requested)
		reg, _ := ParseScopes(tc.registered)
		if got := Grant(req, reg).String(); got != tc.want {
			t.Errorf("Grant(%q, %q) = %q, want %q", tc.requested, tc.registered, got, tc.want)
		}
	}
}

func TestAuthScopesAllowExport(t *testing.T) {
	ss, _ := ParseScopes("system/Observation.r system/*.s system/Patient.rs")
	for typ, want := range map[string]bool{"Observation": true, "Patient": true, "Encounter": false} {
		if got := ss.Allows(typ, PermExport); got != want {
			t.Errorf("export of %s allowed = %v, want %v", typ, got, want)
		}
	}
	if types, all := ss.Types(PermExport); all || len(types) != 2 {
		t.Errorf("Types = %v %v", types, all)
	}
	all, _ := ParseScopes("system/*.read")
	if _, ok := all.Types(PermExport); !ok {
		t.Error("system/*.read does not grant export of every type")
	}
}

func TestAuthCacheLifetime(t *testing.T) {
	for _, tc := range []struct {
		header []string
		age    string
		want   int
	}{
		{nil, "", 0},
		{[]string{"max-age=60"}, "", 60},
		{[]string{"public, max-age=60"}, "10", 50},
		{[]string{"max-age=60, no-cache"}, "", 0},
		{[]string{"no-store"}, "", 0},
		{[]string{"max-age=abc"}, "", 0},
		{[]string{"max-age=30"}, "40", 0},
	} {
		h := map[string][]string{"Cache-Control": tc.header}
		if tc.age != "" {
			h["Age"] = []string{tc.age}
		}
		if got := cacheLifetime(h); int(got.Seconds()) != tc.want {
			t.Errorf("cacheLifetime(%v, Age %s) = %v, want %ds", tc.header, tc.age, got, tc.want)
		}
	}
}
