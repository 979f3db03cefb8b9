package heapcheck

import (
	"testing"
)

// The budget: at most 1 KiB of heap per cached token.
const budget = 1024

func TestHeapPerToken(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("fills 100 000 tokens; the race detector inflates the heap")
	}
	for _, shared := range []Shared{InProcess, Remote} {
		r, err := Measure(t.Context(), 100_000, shared)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %.0f B/token (%d tokens, %d bytes)", r.Shared, r.BytesPerToken, r.Tokens, r.HeapBytes)
		if r.BytesPerToken > budget {
			t.Errorf("%s shared cache: %.0f bytes of heap per cached token; budget %d", shared, r.BytesPerToken, budget)
		}
	}
}
