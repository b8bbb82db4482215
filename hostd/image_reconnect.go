package hostd

import (
	"encoding/json"
	"time"
)

// imageReconnectDelay is how long a VM's reads of its image wait for
// this host's NBD export to come back (a hostd restart re-serves it on
// the same socket before it adopts the VM) before QEMU fails them with
// an I/O error: a hostd that never returns surfaces in the guest then.
const imageReconnectDelay = 60 * time.Second

// imageBacking is the backing file name of an image VM's overlay: the
// image's NBD export on this host as a json: name, because only the
// nbd driver's options (not an nbd+unix:// URI) carry reconnect-delay.
// Without it, QEMU (7.2 and 10) fails with an I/O error the reads that
// find the export gone, even when it is served again by then.
// Overlays made with the URI name keep opening as before.
func imageBacking(image, socket string) string {
	return nbdBacking(image, socket, imageReconnectDelay)
}

// nbdBacking is the json: name of export image on socket, its reads
// waiting up to delay (whole seconds, at least one) for a lost server.
func nbdBacking(image, socket string, delay time.Duration) string {
	type server struct {
		Type string `json:"type"`
		Path string `json:"path"`
	}
	type nbd struct {
		Driver         string `json:"driver"`
		Server         server `json:"server"`
		Export         string `json:"export"`
		ReconnectDelay int    `json:"reconnect-delay"`
	}
	// The nbd node is the raw format node's file: the overlay names its
	// backing format (raw) apart, which QEMU sets as the top driver.
	b, _ := json.Marshal(struct {
		File nbd `json:"file"`
	}{nbd{Driver: "nbd", Server: server{Type: "unix", Path: socket}, Export: image,
		ReconnectDelay: max(1, int(delay/time.Second))}})
	return "json:" + string(b)
}
