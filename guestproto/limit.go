package guestproto

import "time"

// Limiter is the token bucket both ends of the channel put on the frames
// they receive: a flooding peer is cut off, not served.
type Limiter struct {
	rate, burst, tokens float64
	last                time.Time
}

// NewLimiter allows rate frames a second sustained, burst at once.
func NewLimiter(rate float64, burst int) *Limiter {
	return &Limiter{rate: rate, burst: float64(burst), tokens: float64(burst), last: time.Now()}
}

// Allow takes a token for a frame received at now; false: over the limit.
func (l *Limiter) Allow(now time.Time) bool {
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}
