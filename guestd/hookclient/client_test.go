package hookclient

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fakeServer answers each command line with the next canned answer.
func fakeServer(t *testing.T, answers ...string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for _, a := range answers {
			if _, err := br.ReadString('\n'); err != nil {
				return
			}
			c.Write([]byte(a))
		}
		time.Sleep(time.Second)
	}()
	return path
}

func TestClientRejectsBadAnswers(t *testing.T) {
	for _, c := range []struct {
		name    string
		answers []string
		call    func(*Client) error
	}{
		{"HELLO not OK", []string{"NOPE\n"}, nil},
		{"ERR from server", []string{"OK 1\n", "ERR unknown command\n"}, func(c *Client) error { _, _, err := c.Poll(); return err }},
		{"garbled POLL", []string{"OK 1\n", "PENDING checkpoint\n"}, func(c *Client) error { _, _, err := c.Poll(); return err }},
		{"WAIT answered IDLE", []string{"OK 1\n", "IDLE\n"}, func(c *Client) error { _, err := c.Wait(context.Background()); return err }},
		{"garbled OUTCOME", []string{"OK 1\n", "OUTCOME restored\n"}, func(c *Client) error { _, err := c.Sync(context.Background()); return err }},
		{"garbled STATUS", []string{"OK 1\n", "STATUS pending a b synced=x/1\n"}, func(c *Client) error { _, err := c.Status(); return err }},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := fakeServer(t, c.answers...)
			cl, err := Open(path, "app")
			if c.call == nil {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("Open = %v, want ErrProtocol", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			if err := c.call(cl); !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want ErrProtocol", err)
			}
			// The connection is given up after a protocol error.
			if _, _, err := cl.Poll(); !errors.Is(err, ErrClosed) {
				t.Errorf("next call = %v, want ErrClosed", err)
			}
		})
	}
}

func TestOpenRejectsBadName(t *testing.T) {
	path := fakeServer(t, "OK 1\n")
	if _, err := Open(path, "two words"); err == nil {
		t.Error("a name with a space was accepted")
	}
}

func TestPathFromEnv(t *testing.T) {
	t.Setenv("SYMVIRT_HOOK_SOCKET", "")
	if Path() != DefaultPath {
		t.Errorf("Path() = %q", Path())
	}
	t.Setenv("SYMVIRT_HOOK_SOCKET", "/x/y.sock")
	if Path() != "/x/y.sock" {
		t.Errorf("Path() = %q", Path())
	}
}
