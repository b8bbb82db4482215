package mountinfo

import "testing"

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/srv/guest\040ram`: "/srv/guest ram",
		`/a\134b`:           `/a\b`,
		`/plain`:            "/plain",
		`/end\04`:           `/end\04`, // too short to be an escape
		`/x\0400`:           "/x 0",
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
