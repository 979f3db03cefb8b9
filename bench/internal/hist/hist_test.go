package hist

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func TestBucketsCoverEveryValueOnce(t *testing.T) {
	prevHi := int64(-1)
	for i := range nBuckets {
		lo, hi := bounds(i)
		if lo != prevHi+1 || hi < lo {
			t.Fatalf("bucket %d = [%d, %d]; previous ended at %d", i, lo, hi, prevHi)
		}
		if index(lo) != i || index(hi) != i {
			t.Fatalf("bucket %d = [%d, %d] but index(lo)=%d index(hi)=%d", i, lo, hi, index(lo), index(hi))
		}
		prevHi = hi
	}
	if prevHi != Max {
		t.Errorf("last bucket ends at %d; want Max %d", prevHi, Max)
	}
}

func TestRelativeErrorUnderOnePercent(t *testing.T) {
	for _, v := range []int64{1, 127, 128, 129, 1000, 12345, 987654, 1 << 30, 5e9, Max} {
		lo, hi := bounds(index(v))
		if v < lo || v > hi {
			t.Fatalf("%d not in its bucket [%d, %d]", v, lo, hi)
		}
		if float64(hi-lo) > 0.01*float64(v) {
			t.Errorf("bucket of %d is [%d, %d]: wider than 1%%", v, lo, hi)
		}
	}
}

func TestQuantilesMatchSortedSample(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	vals := make([]int64, 100_000)
	for i := range vals {
		vals[i] = int64(r.ExpFloat64() * 200_000) // ~200µs mean, long tail
		h.Record(vals[i])
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
		want := vals[int(q*float64(len(vals))+0.999999)-1]
		got := h.Quantile(q)
		if got < want || float64(got-want) > 0.01*float64(want)+1 {
			t.Errorf("Quantile(%v) = %d; want %d (+1%%)", q, got, want)
		}
	}
	if h.Max() != vals[len(vals)-1] || h.Min() != vals[0] || h.Count() != uint64(len(vals)) {
		t.Errorf("min/max/count = %d/%d/%d; want %d/%d/%d", h.Min(), h.Max(), h.Count(), vals[0], vals[len(vals)-1], len(vals))
	}
}

func TestMerge(t *testing.T) {
	var a, b, all Histogram
	for v := int64(1); v < 100_000; v += 7 {
		if v%2 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
		all.Record(v)
	}
	a.Merge(&b)
	for _, q := range []float64{0.01, 0.5, 0.99} {
		if a.Quantile(q) != all.Quantile(q) {
			t.Errorf("merged Quantile(%v) = %d; want %d", q, a.Quantile(q), all.Quantile(q))
		}
	}
	if a.Count() != all.Count() || a.Min() != all.Min() || a.Max() != all.Max() {
		t.Error("merged count/min/max differ")
	}
}

func TestRecordDoesNotAllocate(t *testing.T) {
	h := new(Histogram)
	if n := testing.AllocsPerRun(1000, func() { h.Record(123456) }); n != 0 {
		t.Errorf("Record allocates %v times", n)
	}
}

func BenchmarkRecord(b *testing.B) {
	h := new(Histogram)
	v := int64(1)
	for b.Loop() {
		h.Record(v)
		v = (v*31 + 7) & 0xffffff
	}
}
