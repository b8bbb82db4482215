package hostd

import (
	"errors"
	"fmt"
	"testing"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

func TestErrorCodesRoundTrip(t *testing.T) {
	for _, c := range errorCodes {
		wrapped := fmt.Errorf("vm %q: %w", "x", c.Err)
		err := errorCodes.Decode(&jsonapi.Error{Code: codeOf(wrapped), Message: wrapped.Error()})
		if !errors.Is(err, c.Err) || err.Error() != wrapped.Error() {
			t.Errorf("%s does not round-trip: %v", c.Code, err)
		}
	}
}
