package jsonapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
)

// GetBytes fetches path and returns its body, refused if over max bytes;
// a reply other than 200 is decoded as the server's error.
func (c *Client) GetBytes(ctx context.Context, path string, max int64) ([]byte, error) {
	resp, err := c.send(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %w", c.name, c.addr, ReadReply(resp, c.codes, nil))
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err == nil && int64(len(data)) > max {
		err = fmt.Errorf("reply over %d bytes", max)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s %s: %w", c.name, c.addr, path, err)
	}
	return data, nil
}
