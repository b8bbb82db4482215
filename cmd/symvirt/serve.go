package main

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/symvirt/symvirt/internal/unixsock"
)

// serve runs a daemon's API on its unix socket and, when listen is set, on
// TCP (under TLS when serverTLS is set) until SIGINT or SIGTERM.
func serve(log *slog.Logger, name string, handler http.Handler, sock, listen string, serverTLS *tls.Config, attrs ...any) error {
	ul, err := unixsock.Listen(sock)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ul) }()
	if listen != "" {
		tl, err := net.Listen("tcp", listen)
		if err != nil {
			return err
		}
		if serverTLS != nil {
			tl = tls.NewListener(tl, serverTLS)
		}
		go func() { errc <- srv.Serve(tl) }()
	}
	log.Info(name+" serving", append([]any{"socket", sock, "listen", listen}, attrs...)...)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	select {
	case s := <-sigs:
		log.Info(name+" shutting down", "signal", s.String())
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
