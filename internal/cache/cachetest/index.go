package cachetest

import (
	"slices"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/cache"
)

// Lexical pages walk an index in order, the empty member first, and cost
// no more than their limit.
func (s suite) indexRange(t *testing.T, c cache.Cache) {
	ctx := t.Context()
	members := []string{"", "alice", "bob", "carol", "dave", "team-a:1"}
	for _, m := range slices.Backward(members) {
		if err := c.IndexAdd(ctx, "accounts:{conn}", m, 0); err != nil {
			t.Fatalf("IndexAdd(%q) = %v", m, err)
		}
	}
	if err := c.IndexAdd(ctx, "accounts:{conn}", "bob", 0); err != nil {
		t.Fatalf("IndexAdd(bob) again = %v", err)
	}
	if n, err := c.IndexLen(ctx, "accounts:{conn}"); n != int64(len(members)) || err != nil {
		t.Errorf("IndexLen = %d, %v; want %d", n, err, len(members))
	}
	var got []string
	from := ""
	for range 10 {
		page, err := c.IndexRange(ctx, "accounts:{conn}", from, 3)
		if err != nil {
			t.Fatalf("IndexRange(%q) = %v", from, err)
		}
		if len(page) < 3 {
			got = append(got, page...)
			break
		}
		got = append(got, page[:2]...)
		from = page[2]
	}
	if !slices.Equal(got, members) {
		t.Errorf("pages = %q; want %q", got, members)
	}
	if err := c.IndexRemove(ctx, "accounts:{conn}", "carol"); err != nil {
		t.Fatal(err)
	}
	if page, _ := c.IndexRange(ctx, "accounts:{conn}", "c", 2); !slices.Equal(page, []string{"dave", "team-a:1"}) {
		t.Errorf("IndexRange(c) after removing carol = %q; want [dave team-a:1]", page)
	}
	if page, _ := c.IndexRange(ctx, "missing", "", 5); len(page) != 0 {
		t.Errorf("IndexRange(missing) = %q; want none", page)
	}
}

// Scored indexes hand out what is due, earliest first.
func (s suite) indexDue(t *testing.T, c cache.Cache) {
	ctx := t.Context()
	for m, score := range map[string]float64{"late": 300, "early": 100, "mid": 200, "never": 1e15} {
		if err := c.IndexAdd(ctx, "keepalive:{conn}", m, score); err != nil {
			t.Fatal(err)
		}
	}
	if due, err := c.IndexDue(ctx, "keepalive:{conn}", 250, 10); err != nil || !slices.Equal(due, []string{"early", "mid"}) {
		t.Errorf("IndexDue(250) = %q, %v; want [early mid]", due, err)
	}
	if due, _ := c.IndexDue(ctx, "keepalive:{conn}", 1e12, 1); !slices.Equal(due, []string{"early"}) {
		t.Errorf("IndexDue(limit 1) = %q; want [early]", due)
	}
	if err := c.IndexAdd(ctx, "keepalive:{conn}", "early", 400); err != nil {
		t.Fatal(err)
	}
	if due, _ := c.IndexDue(ctx, "keepalive:{conn}", 250, 10); !slices.Equal(due, []string{"mid"}) {
		t.Errorf("IndexDue(250) after rescheduling early = %q; want [mid]", due)
	}
}
