package api

import "testing"

func TestAPIAcceptsGzip(t *testing.T) {
	cases := map[string]bool{
		"":                            false,
		"identity":                    false,
		"gzip":                        true,
		"GZIP":                        true,
		"gzip, deflate, br, identity": true,
		"br;q=1.0, gzip;q=0.8":        true,
		"gzip;q=0":                    false,
		"gzip; q=0.000":               false,
		"deflate":                     false,
		"x-gzip":                      false,
	}
	for header, want := range cases {
		if got := acceptsGzip(header); got != want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", header, got, want)
		}
	}
}
