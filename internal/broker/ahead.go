package broker

import (
	"context"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/secret"
)

// usable reports whether ct (nil: none) can be served at now to a caller
// needing minTTL.
func (ct *cachedToken) usable(now time.Time, minTTL time.Duration) bool {
	return ct != nil && now.Before(ct.freshUntil) && ct.Expiry.Sub(now) > minTTL
}

// remember puts a token read from or written to the shared cache into L1
// and schedules its refresh-ahead.
func (b *Broker) remember(c *conn, account, key string, scopes []string, ct *cachedToken) {
	now := b.now()
	e := &l1Entry{tok: ct.Token, freshUntil: ct.freshUntil, checked: now, c: c, account: account, scopes: scopes}
	if b.encode != nil {
		e.tok.Encoded = encode(b.encode, &e.tok)
	}
	// Every path here is a use: a caller's hit on the shared cache, or a
	// fetch some caller (or refresh-ahead) asked for.
	e.lastUsed.Store(now.UnixNano())
	if b.refreshAhead {
		b.scheduleRefresh(key, e, now)
	}
	if prev, loaded := b.l1.m.Swap(key, e); loaded {
		prev.(*l1Entry).cancel()
	}
}

// encode returns t encoded by f. The access token's text is in the encoding
// (it is in a GetToken answer), so t's access token is pointed at those
// bytes: a cached token holds its text once.
func encode(f func(*Token) []byte, t *Token) secret.Value {
	enc := string(f(t))
	if tok := t.AccessToken.Reveal(); tok != "" {
		if i := strings.Index(enc, tok); i >= 0 {
			t.AccessToken = secret.New(enc[i : i+len(tok)])
		}
	}
	return secret.New(enc)
}

// scheduleRefresh arranges for a used token to be replaced in the
// background shortly before its fresh period ends, so callers in steady
// state never wait for the upstream. The moment is jittered per token so
// replicas and tokens do not all wake at once; all replicas that wake take
// the same lease, and the losers find the winner's token.
func (b *Broker) scheduleRefresh(key string, e *l1Entry, now time.Time) {
	life := e.freshUntil.Sub(now)
	ahead := min(max(life/10, time.Second), 5*time.Minute)
	ahead += time.Duration(rand.Int64N(int64(ahead)/2 + 1))
	delay := life - ahead
	if delay <= 0 {
		return
	}
	e.stop = b.afterFunc(delay, func() { b.refreshAheadNow(key, e) })
}

// refreshAheadNow replaces e's token if it is still current and was used
// during the second half of its fresh period.
func (b *Broker) refreshAheadNow(key string, e *l1Entry) {
	if b.closed.Load() || b.l1.load(key) != e {
		return
	}
	halfway := e.checked.Add(e.freshUntil.Sub(e.checked) / 2)
	if time.Unix(0, e.lastUsed.Load()).Before(halfway) {
		return // idle: let it expire
	}
	b.refreshes.Add(1)
	f := b.join(context.Background(), e.c, e.account, key, e.scopes, fetchOptions{replaceBefore: e.tok.Expiry, ahead: true})
	<-f.done
	if f.err != nil {
		b.log.Warn("refresh-ahead failed; callers will fetch on demand", "connection", e.c.Name, "err", f.err)
	}
}

// announce tells every replica to drop its L1 copy of key, and drops ours.
func (b *Broker) announce(ctx context.Context, key string) {
	if b.pub == nil {
		return
	}
	if err := b.pub.Publish(ctx, invalidateChannel, []byte(key)); err != nil {
		b.cacheTrouble(ctx, "publish", "invalidation not published; other replicas catch up within l1_max_age", err)
	}
}

// announceAccount tells every replica to drop its L1 copies of the tokens
// of (c, account) (its grant was replaced or deleted), and drops ours.
func (b *Broker) announceAccount(ctx context.Context, c *conn, account string) {
	t := tag(c.Name, account)
	b.l1.dropTag(t)
	b.announce(ctx, accountMessage+t)
}

// accountMessage prefixes an invalidation of every token of one (connection,
// account); token keys never start with it.
const accountMessage = "account:"

// onInvalidate handles another replica's announcement.
func (b *Broker) onInvalidate(msg []byte) {
	if t, ok := strings.CutPrefix(string(msg), accountMessage); ok {
		b.l1.dropTag(t)
		return
	}
	b.l1.drop(string(msg), nil)
}
