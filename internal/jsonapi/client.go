package jsonapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Client speaks this wire format to one server: on a unix socket ("/path"
// or "unix:/path", plain HTTP: local and root-only) or on TCP
// ("host:port", HTTPS with cfg when given).
type Client struct {
	name  string // "hostd", "coord": prefixes errors
	addr  string
	base  string
	http  *http.Client
	codes Codes
}

// NewClient returns a client for addr; codes decode the server's errors.
func NewClient(name, addr string, cfg *tls.Config, codes Codes) *Client {
	c := &Client{name: name, addr: addr, codes: codes}
	tr := &http.Transport{MaxIdleConns: 4, IdleConnTimeout: 30 * time.Second}
	if path, ok := unixPath(addr); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		c.base = "http://" + name
	} else {
		tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second}).DialContext
		c.base = "http://" + addr
		if cfg != nil {
			tr.TLSClientConfig = cfg.Clone()
			c.base = "https://" + addr
		}
	}
	c.http = &http.Client{Transport: tr}
	return c
}

func unixPath(addr string) (string, bool) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return p, true
	}
	return addr, strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, ".")
}

// Addr returns the server's address.
func (c *Client) Addr() string { return c.addr }

// Local reports whether the server is on a unix socket (this host, plain
// HTTP) rather than TCP (mutual TLS where configured).
func (c *Client) Local() bool {
	_, ok := unixPath(c.addr)
	return ok
}

func (c *Client) send(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", c.name, c.addr, err)
	}
	return resp, nil
}

// Do runs a plain request and decodes the reply into out.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := ReadReply(resp, c.codes, out); err != nil {
		return fmt.Errorf("%s %s: %w", c.name, c.addr, err)
	}
	return nil
}

// Stream runs a streamed operation (POST): progress lines go to
// progress, the result into out (also when the operation failed).
func (c *Client) Stream(ctx context.Context, path string, body, out any, progress func(json.RawMessage)) error {
	resp, err := c.send(ctx, "POST", path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		err = ReadReply(resp, c.codes, nil)
	} else {
		err = ReadStream(resp.Body, c.codes, progress, out)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", c.name, c.addr, err)
	}
	return nil
}

// Progress decodes each progress line into a P for fn (nil: none).
func Progress[P any](fn func(P)) func(json.RawMessage) {
	if fn == nil {
		return nil
	}
	return func(raw json.RawMessage) {
		var p P
		if json.Unmarshal(raw, &p) == nil {
			fn(p)
		}
	}
}
