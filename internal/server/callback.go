package server

import (
	"context"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/providers"
	"github.com/tokenbroker/tokenbroker/internal/reqlog"
)

// CallbackPath is where the broker receives the upstream's redirect: the
// redirect URI to register upstream is http(s)://<admin address>/oauth2/callback.
const CallbackPath = "/oauth2/callback"

// MaxCallbackQuery bounds the callback's query string, in bytes.
const MaxCallbackQuery = 8 << 10

// NewCallbackHandler returns the handler of GET /oauth2/callback, the
// redirect URI of the authorization code grant (RFC 6749 §4.1.2). It takes
// code and state (or error=access_denied and state) from the query,
// completes the authorization of whichever connection the state is bound
// to, and answers a plain HTML page: 200 on success, 400 for a bad or used
// state, 403 when access was denied, 502/503/504 when the upstream or the
// store failed. The page never shows the code, the state or any token.
// Every request gets a request id (reqlog.HTTPHandler) on its log lines.
func NewCallbackHandler(b *broker.Broker, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return reqlog.HTTPHandler(&callbackHandler{b: b, log: log})
}

type callbackHandler struct {
	b   *broker.Broker
	log *slog.Logger
}

func (h *callbackHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		// Not even HEAD: a prefetch must not spend the code.
		w.Header().Set("Allow", http.MethodGet)
		h.log.InfoContext(r.Context(), "authorization callback refused", "reason", "method "+r.Method)
		writePage(w, http.StatusMethodNotAllowed, page{Title: "Method not allowed", Message: "Open this address with GET."})
		return
	}
	if len(r.URL.RawQuery) > MaxCallbackQuery {
		h.log.InfoContext(r.Context(), "authorization callback refused", "reason", "query too long", "bytes", len(r.URL.RawQuery))
		writePage(w, http.StatusRequestURITooLong, page{Title: "Request too large", Message: "The authorization response is longer than any upstream sends."})
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err == nil {
		for _, vs := range q {
			if len(vs) > 1 {
				err = errors.New("repeated parameter")
			}
		}
	}
	if err != nil {
		h.log.InfoContext(r.Context(), "authorization callback refused", "reason", "malformed query")
		writePage(w, http.StatusBadRequest, page{Title: "Malformed authorization response", Message: "The query string could not be read."})
		return
	}
	conn, err := h.b.HandleAuthorizationResponse(r.Context(), broker.AuthorizationResponse{
		State:            q.Get("state"),
		Code:             q.Get("code"),
		Error:            q.Get("error"),
		ErrorDescription: q.Get("error_description"),
	})
	if err == nil {
		h.log.InfoContext(r.Context(), "authorization callback completed", "connection", conn)
		writePage(w, http.StatusOK, page{
			Title:      "Authorization complete",
			Message:    "The broker can now get tokens for this connection. You can close this window.",
			Connection: conn,
		})
		return
	}
	status, p := failurePage(err)
	p.Connection = conn
	if status == http.StatusBadRequest {
		h.log.InfoContext(r.Context(), "authorization callback refused", "err", err)
	} else {
		h.log.WarnContext(r.Context(), "authorization callback failed", "connection", conn, "status", status, "err", err)
	}
	writePage(w, status, p)
}

// failurePage chooses the status and page for a failed completion. Only
// fixed text and the OAuth error code (checked against RFC 6749's character
// set by the broker) are shown.
func failurePage(err error) (int, page) {
	again := "Start the authorization again."
	switch oc := providers.OAuthCode(err); {
	case errors.Is(err, broker.ErrInvalidState), errors.Is(err, broker.ErrInvalidArgument):
		return http.StatusBadRequest, page{Title: "Authorization response not accepted",
			Message: "This authorization response is invalid, expired or was already used. " + again}
	case oc == providers.CodeAccessDenied:
		return http.StatusForbidden, page{Title: "Access denied",
			Message: "Access was not granted, so the broker has no new grant. " + again}
	case oc != "":
		return http.StatusBadGateway, page{Title: "The upstream refused the authorization",
			Message: "It answered with the OAuth error below. " + again, OAuthError: oc}
	case errors.Is(err, providers.ErrRejected), errors.Is(err, providers.ErrUnavailable),
		errors.Is(err, providers.ErrInvalidResponse):
		return http.StatusBadGateway, page{Title: "The upstream failed",
			Message: "The code could not be redeemed. The broker logs say why. " + again}
	case errors.Is(err, broker.ErrStore):
		return http.StatusServiceUnavailable, page{Title: "The broker could not store the grant",
			Message: "The broker logs say why. " + again}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return http.StatusGatewayTimeout, page{Title: "Timed out",
			Message: "Completing the authorization took too long. " + again}
	}
	return http.StatusInternalServerError, page{Title: "Internal error", Message: "The broker logs say why. " + again}
}

type page struct {
	Title, Message, Connection, OAuthError string
}

var pageTemplate = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="robots" content="noindex"><title>{{.Title}}</title></head>
<body>
<h1>{{.Title}}</h1>
<p>{{.Message}}</p>
{{- if .Connection}}
<p>Connection: <code>{{.Connection}}</code></p>
{{- end}}
{{- if .OAuthError}}
<p>OAuth error: <code>{{.OAuthError}}</code></p>
{{- end}}
</body>
</html>
`))

func writePage(w http.ResponseWriter, status int, p page) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// The page's own URL holds the code: never send it on as a Referer.
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	w.WriteHeader(status)
	_ = pageTemplate.Execute(w, p)
}
