package hostd

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"

	"github.com/symvirt/symvirt/hostd/imagecache"
)

// peerImage is an image on another hostd, reached over the peer channel
// (mutual TLS with a hostd certificate, or this host's unix sockets).
type peerImage struct {
	h     *Host
	addr  string
	image string
	once  sync.Once
	c     *Client
}

// client is made at first use: a reopened image's sources exist before
// the daemon has set PeerTLS.
func (p *peerImage) client() *Client {
	p.once.Do(func() { p.c = p.h.peer(p.addr) })
	return p.c
}

func (p *peerImage) Name() string { return p.addr }

func (p *peerImage) path(rest string) string { return "/v1/images/" + url.PathEscape(p.image) + rest }

func (p *peerImage) Chunk(ctx context.Context, i int) ([]byte, error) {
	return p.client().api.GetBytes(ctx, p.path("/chunks/"+strconv.Itoa(i)), imagecache.ChunkMax)
}

func (p *peerImage) Manifest(ctx context.Context) ([]byte, error) {
	return p.client().api.GetBytes(ctx, p.path("/manifest"), imagecache.ManifestMax)
}

// servePeerTemplate answers a peer's GET of a published template's
// manifest.
func (h *Host) servePeerTemplate(w http.ResponseWriter, r *http.Request) {
	data, err := h.templateManifestBytes(r.PathValue("name"))
	writeRaw(w, data, err)
}

// servePeerImage answers a peer's GET of a manifest or a chunk with raw
// bytes; a chunk this host lacks is fetched from its own sources first.
func (h *Host) servePeerImage(w http.ResponseWriter, r *http.Request) {
	c, err := h.imageCache(r.PathValue("name"))
	var data []byte
	if err == nil && r.PathValue("chunk") == "" {
		data, _ = c.Manifest().Encode()
	} else if err == nil {
		var i int
		if i, err = strconv.Atoi(r.PathValue("chunk")); err == nil {
			data, err = c.Chunk(r.Context(), i)
		} else {
			err = fmt.Errorf("chunk %q: %w", r.PathValue("chunk"), ErrInvalidSpec)
		}
	}
	writeRaw(w, data, err)
}

// writeRaw answers a peer with raw bytes, or with err on the wire.
func writeRaw(w http.ResponseWriter, data []byte, err error) {
	if err != nil {
		errorCodes.WriteError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Write(data)
}
