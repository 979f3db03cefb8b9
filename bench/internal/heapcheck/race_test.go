//go:build race

package heapcheck

const raceEnabled = true
