// Package hist is a log-linear latency histogram in the style of
// HdrHistogram: values below 2^SubBits are counted exactly, larger ones in
// buckets 2^-SubBits wide relative to their magnitude (under 1% error with
// SubBits = 7). Recording is an index computation and an increment: no
// allocation, no lock. A Histogram is not safe for concurrent use; give each
// worker its own and Merge them at the end.
package hist

import "math/bits"

// SubBits sets the precision: 2^SubBits sub-buckets per power of two.
const SubBits = 7

const (
	sub = 1 << SubBits
	// maxShift caps tracked values at 2^(maxShift+SubBits+1)-1 ns ≈ 275 s.
	maxShift = 30
	nBuckets = (maxShift + 2) * sub
)

// Max is the largest value recorded exactly into its own bucket range;
// larger values land in the last bucket (Max still reports them exactly).
const Max = int64(1)<<(maxShift+SubBits+1) - 1

// A Histogram counts int64 values (nanoseconds, by convention). Its zero
// value is empty and ready to use.
type Histogram struct {
	counts [nBuckets]uint64
	n      uint64
	min    int64
	max    int64
	sum    float64
}

// index returns v's bucket.
func index(v int64) int {
	if v < sub {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	if v > Max {
		v = Max
	}
	shift := bits.Len64(uint64(v)) - SubBits - 1
	return (shift+1)*sub + int(uint64(v)>>shift) - sub
}

// bounds returns the lowest and highest value of bucket i.
func bounds(i int) (lo, hi int64) {
	if i < sub {
		return int64(i), int64(i)
	}
	shift := i/sub - 1
	mant := int64(i%sub + sub)
	return mant << shift, (mant+1)<<shift - 1
}

// Record counts v.
func (h *Histogram) Record(v int64) {
	h.counts[index(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Reset empties h.
func (h *Histogram) Reset() { *h = Histogram{} }

// Count is the number of values recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Min and Max are the smallest and largest values recorded (0 when empty).
func (h *Histogram) Min() int64 { return h.min }
func (h *Histogram) Max() int64 { return h.max }

// Mean is the arithmetic mean (0 when empty).
func (h *Histogram) Mean() float64 {
	if h.n == 0 {
		return 0
	}
	return h.sum / float64(h.n)
}

// Quantile returns the value at quantile q (0 < q ≤ 1): the upper bound of
// the bucket holding the ceil(q·n)-th smallest value, clamped to [Min, Max],
// so it never understates a latency by more than one bucket width.
func (h *Histogram) Quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.999999)
	rank = max(1, min(rank, h.n))
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			_, hi := bounds(i)
			return max(h.min, min(hi, h.max))
		}
	}
	return h.max
}
