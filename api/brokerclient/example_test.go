package brokerclient_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/api/brokerclient"
)

// The examples dial a broker started with `broker -demo`, which listens on
// 127.0.0.1:9090 and serves the connection "demo-cc" with the scope "read".
// In a cluster, dial the broker's Service with TLS and your API key instead.
// They have no output to check: no broker runs while the docs are tested.

func ExampleTokenSource() {
	conn, err := grpc.NewClient("127.0.0.1:9090", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	// One source per (connection, scopes), shared by the whole process.
	ts := brokerclient.TokenSource(conn, "demo-cc", "read")

	tok, err := ts.Token()
	if status.Code(err) == codes.NotFound {
		log.Fatal("the broker has no connection demo-cc")
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tok.Type(), "token valid until", tok.Expiry.Format(time.RFC3339))

	// The source plugs into anything that takes an oauth2.TokenSource.
	// (Config.Client also handles 401 answers; oauth2.NewClient does not.)
	client := oauth2.NewClient(context.Background(), ts)
	_ = client
}

func ExampleConfig_TokenSource() {
	conn, err := grpc.NewClient("127.0.0.1:9090", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	cfg := &brokerclient.Config{
		Connection: "demo-cc",
		Scopes:     []string{"read"},
		MinTTL:     5 * time.Minute, // every token lasts at least this long…
		Skew:       time.Minute,     // …and is used until a minute before it expires
	}
	// The context serves every broker call the source makes: not a request's.
	ts := cfg.TokenSource(context.Background(), conn)

	req, err := http.NewRequest(http.MethodGet, "https://api.example.com/v1/accounts", nil)
	if err != nil {
		log.Fatal(err)
	}
	tok, err := ts.Token()
	if err != nil {
		log.Fatal(err)
	}
	tok.SetAuthHeader(req) // Authorization: Bearer …
}

func ExampleConfig_Transport() {
	conn, err := grpc.NewClient("127.0.0.1:9090", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	cfg := &brokerclient.Config{Connection: "demo-cc", Scopes: []string{"read"}}
	client := &http.Client{
		// Each request carries a token. On a 401 the transport reports the
		// token to the broker and retries once with a fresh one.
		Transport: cfg.Transport(context.Background(), conn, http.DefaultTransport),
		Timeout:   30 * time.Second,
	}

	// strings.Reader bodies can be sent again, so this POST is retried too.
	resp, err := client.Post("https://api.example.com/v1/payments", "application/json",
		strings.NewReader(`{"amount": 100}`))
	if err != nil {
		log.Fatal(err) // status.Code(err) tells broker failures apart
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.Status, len(body))
}

func ExampleInvalidate() {
	conn, err := grpc.NewClient("127.0.0.1:9090", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()

	tok, err := brokerclient.TokenSource(conn, "demo-cc", "read").Token()
	if err != nil {
		log.Fatal(err)
	}
	// … the API answered 401 to tok: tell the broker, so that it stops
	// handing tok out, then start over with a new source.
	if err := brokerclient.Invalidate(ctx, conn, "demo-cc", []string{"read"}, tok.AccessToken); err != nil {
		log.Fatal(err)
	}
	fresh, err := brokerclient.TokenSource(conn, "demo-cc", "read").Token()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("new token:", fresh.AccessToken != tok.AccessToken)
}
