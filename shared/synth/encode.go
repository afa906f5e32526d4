package synth

import (
	"strconv"
	"time"
)

// Low-level, allocation-free JSON helpers. Everything appends to a []byte.

const hexDigits = "0123456789abcdef"

// mix64 is the SplitMix64 finaliser: a bijection on uint64 with good
// avalanche, used for ids and per-entity seeds.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

const golden = 0x9e3779b97f4a7c15

// idKey derives the ids of one resource type.
type idKey struct{ a, b uint64 }

func newIDKey(seed uint64, salt string) idKey {
	h := uint64(14695981039346656037) // FNV-1a of the salt
	for i := 0; i < len(salt); i++ {
		h ^= uint64(salt[i])
		h *= 1099511628211
	}
	a := mix64(seed ^ h)
	return idKey{a: a, b: mix64(a ^ 0x5851f42d4c957f2d)}
}

// uuid renders the n-th id of the key as a version-4-shaped UUID. The map
// n -> id is injective: the 64 bits of h1 (a bijection of n) all survive in
// the output, the four displaced by the version nibble are moved into the
// variant byte.
func (k idKey) uuid(n uint64) (out [36]byte) {
	h1 := mix64(n*golden + k.a)
	h2 := mix64(h1 ^ k.b)
	hi := h1&^0xf000 | 0x4000
	lo := h2&^(0x3f<<58) | (h1>>12&0xf)<<58 | 2<<62
	j := 0
	for i := 60; i >= 0; i -= 4 {
		if j == 8 || j == 13 || j == 18 {
			out[j] = '-'
			j++
		}
		out[j] = hexDigits[hi>>uint(i)&0xf]
		j++
	}
	for i := 60; i >= 0; i -= 4 {
		if j == 18 || j == 23 {
			out[j] = '-'
			j++
		}
		out[j] = hexDigits[lo>>uint(i)&0xf]
		j++
	}
	return out
}

// appendStr appends s as a quoted JSON string.
func appendStr(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue // includes UTF-8 multi-byte sequences, passed through
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\t':
			b = append(b, '\\', 't')
		case '\r':
			b = append(b, '\\', 'r')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendRef appends {"reference":"Type/id"}.
func appendRef(b []byte, typ string, id *[36]byte) []byte {
	b = append(b, `{"reference":"`...)
	b = append(b, typ...)
	b = append(b, '/')
	b = append(b, id[:]...)
	return append(b, `"}`...)
}

// appendSequenced appends ,"<field>":[{"sequence":1,"<field>Reference":
// {"reference":"<typ>/<id(0)>"}}, ...] for n ids, nothing when n is 0.
func appendSequenced(b []byte, field, typ string, n int, id func(k int) *[36]byte) []byte {
	if n == 0 {
		return b
	}
	b = append(b, `,"`...)
	b = append(b, field...)
	b = append(b, `":[`...)
	for k := range n {
		if k > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"sequence":`...)
		b = strconv.AppendInt(b, int64(k+1), 10)
		b = append(b, `,"`...)
		b = append(b, field...)
		b = append(b, `Reference":`...)
		b = appendRef(b, typ, id(k))
		b = append(b, '}')
	}
	return append(b, ']')
}

func append2(b []byte, v int) []byte {
	return append(b, byte('0'+v/10), byte('0'+v%10))
}

func append4(b []byte, v int) []byte {
	return append(b, byte('0'+v/1000), byte('0'+v/100%10), byte('0'+v/10%10), byte('0'+v%10))
}

// appendDate appends the calendar date (YYYY-MM-DD, unquoted) of unix time
// sec shifted by offset seconds.
func appendDate(b []byte, sec, offset int64) []byte {
	y, m, d := time.Unix(sec+offset, 0).UTC().Date()
	b = append4(b, y)
	b = append(b, '-')
	b = append2(b, int(m))
	b = append(b, '-')
	return append2(b, d)
}

// appendDateTime appends a quoted FHIR dateTime with the zone's offset.
func appendDateTime(b []byte, sec int64, z *zone) []byte {
	t := time.Unix(sec+z.offset, 0).UTC()
	y, m, d := t.Date()
	hh, mm, ss := t.Clock()
	b = append(b, '"')
	b = append4(b, y)
	b = append(b, '-')
	b = append2(b, int(m))
	b = append(b, '-')
	b = append2(b, d)
	b = append(b, 'T')
	b = append2(b, hh)
	b = append(b, ':')
	b = append2(b, mm)
	b = append(b, ':')
	b = append2(b, ss)
	b = append(b, z.text...)
	return append(b, '"')
}

// appendPeriod appends {"start":...,"end":...}.
func appendPeriod(b []byte, start, end int64, z *zone) []byte {
	b = append(b, `{"start":`...)
	b = appendDateTime(b, start, z)
	b = append(b, `,"end":`...)
	b = appendDateTime(b, end, z)
	return append(b, '}')
}

// appendMoney appends {"value":v,"currency":"USD"}.
func appendMoney(b []byte, v float64) []byte {
	b = append(b, `{"value":`...)
	b = strconv.AppendFloat(b, v, 'f', 2, 64)
	return append(b, `,"currency":"USD"}`...)
}

// appendDigits appends n decimal digits of v, zero-padded.
func appendDigits(b []byte, v uint64, n int) []byte {
	var tmp [20]byte
	for i := n - 1; i >= 0; i-- {
		tmp[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, tmp[:n]...)
}

// renderCC renders a code as a FHIR CodeableConcept with text.
func renderCC(c code) string {
	var b []byte
	b = append(b, `{"coding":[{"system":`...)
	b = appendStr(b, c.system)
	b = append(b, `,"code":`...)
	b = appendStr(b, c.code)
	b = append(b, `,"display":`...)
	b = appendStr(b, c.display)
	b = append(b, `}],"text":`...)
	b = appendStr(b, c.display)
	return string(append(b, '}'))
}
