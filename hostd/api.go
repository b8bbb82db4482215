package hostd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/symvirt/symvirt/internal/jsonapi"
)

// maxBody bounds every request body: specs and options are small.
const maxBody = 1 << 20

// Handler returns hostd's HTTP API.
func (h *Host) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/host", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResp(w, map[string]any{"accel": h.cfg.Accel, "migration_address": h.cfg.MigrationAddress,
			"pools": h.cfg.Pools, "qemu": h.cfg.QEMU, "pid": os.Getpid(), "started_at": h.started,
			"stale_shared_memory": h.StaleSharedMemory(), "insecure": h.InsecureAPI})
	})
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResp(w, h.List())
	})
	mux.HandleFunc("POST /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Spec  Spec `json:"spec"`
			Start bool `json:"start"`
		}
		if !readReq(w, r, &req) {
			return
		}
		vm, err := h.Create(req.Spec)
		if err == nil && req.Start {
			if err = vm.Start(r.Context()); err != nil {
				h.Delete(vm.name)
			}
		}
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSONResp(w, vm.Info(r.Context()))
	})
	vmRoute := func(method, path string, fn func(w http.ResponseWriter, r *http.Request, vm *VM)) {
		mux.HandleFunc(method+" /v1/vms/{name}"+path, func(w http.ResponseWriter, r *http.Request) {
			vm, err := h.Get(r.PathValue("name"))
			if err != nil {
				writeErr(w, err)
				return
			}
			fn(w, r, vm)
		})
	}
	vmRoute("GET", "", func(w http.ResponseWriter, r *http.Request, vm *VM) { writeJSONResp(w, vm.Info(r.Context())) })
	vmRoute("DELETE", "", func(w http.ResponseWriter, r *http.Request, vm *VM) {
		if err := h.Delete(vm.name); err != nil {
			writeErr(w, err)
			return
		}
		writeJSONResp(w, map[string]string{"deleted": vm.name})
	})
	simple := func(path string, fn func(ctx context.Context, vm *VM) error) {
		vmRoute("POST", path, func(w http.ResponseWriter, r *http.Request, vm *VM) {
			// Operations finish even if the client goes away: a half-done
			// operation is worse than an unread answer.
			ctx := context.WithoutCancel(r.Context())
			if err := fn(ctx, vm); err != nil {
				writeErr(w, err)
				return
			}
			writeJSONResp(w, vm.Info(ctx))
		})
	}
	simple("/start", func(ctx context.Context, vm *VM) error { return vm.Start(ctx) })
	simple("/pause", func(ctx context.Context, vm *VM) error { return vm.Pause(ctx) })
	simple("/resume", func(ctx context.Context, vm *VM) error { return vm.Resume(ctx) })
	vmRoute("POST", "/stop", func(w http.ResponseWriter, r *http.Request, vm *VM) {
		var req struct {
			Timeout time.Duration `json:"timeout_ns"`
		}
		if !readReq(w, r, &req) {
			return
		}
		if err := vm.Stop(context.WithoutCancel(r.Context()), req.Timeout); err != nil {
			writeErr(w, err)
			return
		}
		writeJSONResp(w, vm.Info(r.Context()))
	})
	vmRoute("POST", "/devices/{dev}/detach", func(w http.ResponseWriter, r *http.Request, vm *VM) {
		if err := vm.Detach(context.WithoutCancel(r.Context()), r.PathValue("dev")); err != nil {
			writeErr(w, err)
			return
		}
		writeJSONResp(w, vm.Info(r.Context()))
	})
	vmRoute("POST", "/devices/{dev}/attach", func(w http.ResponseWriter, r *http.Request, vm *VM) {
		if err := vm.Attach(context.WithoutCancel(r.Context()), r.PathValue("dev")); err != nil {
			writeErr(w, err)
			return
		}
		writeJSONResp(w, vm.Info(r.Context()))
	})
	vmRoute("POST", "/checkpoint", func(w http.ResponseWriter, r *http.Request, vm *VM) {
		var opts CheckpointOptions
		if !readReq(w, r, &opts) {
			return
		}
		stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
			return vm.Checkpoint(ctx, opts, p)
		})
	})
	vmRoute("POST", "/migrate", func(w http.ResponseWriter, r *http.Request, vm *VM) {
		var opts MigrateOptions
		if !readReq(w, r, &opts) {
			return
		}
		if err := h.directMigrationRefused(vm.name, opts); err != nil {
			writeErr(w, err)
			return
		}
		stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
			return vm.Migrate(ctx, opts, p)
		})
	})
	mux.HandleFunc("POST /v1/restore", func(w http.ResponseWriter, r *http.Request) {
		var opts RestoreOptions
		if !readReq(w, r, &opts) {
			return
		}
		stream(w, r, func(ctx context.Context, p ProgressFunc) (any, error) {
			vm, err := h.Restore(ctx, opts, p)
			if err != nil {
				return nil, err
			}
			return vm.Info(ctx), nil
		})
	})
	mux.HandleFunc("POST /v1/incoming", func(w http.ResponseWriter, r *http.Request) {
		var req IncomingRequest
		if !readReq(w, r, &req) {
			return
		}
		resp, err := h.Incoming(context.WithoutCancel(r.Context()), req)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSONResp(w, resp)
	})
	vmRoute("POST", "/incoming/finish", func(w http.ResponseWriter, r *http.Request, vm *VM) {
		info, err := vm.FinishIncoming(context.WithoutCancel(r.Context()))
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSONResp(w, info)
	})
	vmRoute("POST", "/incoming/abort", func(w http.ResponseWriter, r *http.Request, vm *VM) {
		if err := vm.AbortIncoming(context.WithoutCancel(r.Context())); err != nil {
			writeErr(w, err)
			return
		}
		writeJSONResp(w, map[string]string{"aborted": vm.name})
	})
	vmRoute("POST", "/drill", func(w http.ResponseWriter, r *http.Request, vm *VM) {
		res, err := vm.Drill(context.WithoutCancel(r.Context()))
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSONResp(w, res)
	})
	vmRoute("POST", "/rejuvenate", func(w http.ResponseWriter, r *http.Request, vm *VM) {
		var opts RejuvenateOptions
		if !readReq(w, r, &opts) {
			return
		}
		res, err := vm.Rejuvenate(context.WithoutCancel(r.Context()), opts)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSONResp(w, res)
	})
	mux.HandleFunc("POST /v1/rejuvenate", func(w http.ResponseWriter, r *http.Request) {
		var opts RejuvenateOptions
		if !readReq(w, r, &opts) {
			return
		}
		writeJSONResp(w, h.Rejuvenate(context.WithoutCancel(r.Context()), opts))
	})
	mux.HandleFunc("POST /v1/host/restart", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Binary string `json:"binary,omitempty"`
		}
		if !readReq(w, r, &req) {
			return
		}
		if h.Restart == nil {
			writeErr(w, fmt.Errorf("this hostd cannot restart itself: %w", ErrInvalidState))
			return
		}
		if err := h.Restart(req.Binary, true); err != nil {
			writeErr(w, err)
			return
		}
		writeJSONResp(w, map[string]any{"restarting": os.Getpid()})
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		// Answer first, then replace the process; VMs are re-adopted.
		go func() {
			time.Sleep(200 * time.Millisecond)
			h.Restart(req.Binary, false)
		}()
	})
	mux.HandleFunc("POST /v1/steps", func(w http.ResponseWriter, r *http.Request) {
		var req StepRequest
		if !readReq(w, r, &req) {
			return
		}
		writeJSONResp(w, h.Step(context.WithoutCancel(r.Context()), req))
	})
	mux.HandleFunc("POST /v1/leases/renew", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Op    string        `json:"op"`
			Lease time.Duration `json:"lease_ns"`
		}
		if !readReq(w, r, &req) {
			return
		}
		writeJSONResp(w, map[string]int{"renewed": h.RenewLeases(req.Op, req.Lease)})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(h.metrics.reg, promhttp.HandlerOpts{}))
	return h.authorize(mux)
}

func readReq(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err == nil && len(body) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		err = dec.Decode(v)
	}
	if err != nil {
		writeErr(w, fmt.Errorf("request body: %w: %v", ErrInvalidSpec, err))
		return false
	}
	return true
}

func writeJSONResp(w http.ResponseWriter, v any) { jsonapi.WriteJSON(w, v) }

func writeErr(w http.ResponseWriter, err error) {
	code := codeOf(err)
	status := http.StatusInternalServerError
	switch code {
	case "not_found":
		status = http.StatusNotFound
	case "exists", "busy", "invalid_state":
		status = http.StatusConflict
	case "invalid_spec", "checksum":
		status = http.StatusBadRequest
	case "unauthorized":
		status = http.StatusForbidden
	}
	jsonapi.WriteError(w, status, code, err)
}

// stream runs a long operation with progress on the wire, a few updates a
// second (a terminal needs no more) plus every phase change.
func stream(w http.ResponseWriter, r *http.Request, op func(context.Context, ProgressFunc) (any, error)) {
	jsonapi.Stream(w, r, codeOf, func(ctx context.Context, send func(any)) (any, error) {
		var mu sync.Mutex
		last, phase := time.Time{}, ""
		return op(ctx, func(p Progress) {
			mu.Lock()
			defer mu.Unlock()
			if now := time.Now(); now.Sub(last) > 200*time.Millisecond || p.Phase != phase {
				last, phase = now, p.Phase
				send(p)
			}
		})
	})
}
