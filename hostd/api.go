package hostd

import (
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/symvirt/symvirt/internal/jsonapi"
)

// Handler returns hostd's HTTP API; authorize decides who may call what.
func (h *Host) Handler() http.Handler {
	mux := http.NewServeMux()
	h.hostRoutes(mux)
	h.vmRoutes(mux)
	h.operationRoutes(mux)
	h.migrationRoutes(mux)
	h.templateRoutes(mux)
	h.imageRoutes(mux)
	mux.Handle("GET /metrics", h.metricsHandler())
	return h.authorize(mux)
}

// none is the request of a route that takes no body.
type none struct{}

func handle[In any](mux *http.ServeMux, pattern string, fn func(*http.Request, In) (any, error)) {
	jsonapi.Handle(mux, errorCodes, pattern, fn)
}

func handleStream[In any](mux *http.ServeMux, pattern string, fn func(*http.Request, In) (jsonapi.Op, error)) {
	jsonapi.HandleStream(mux, errorCodes, pattern, fn)
}

// hostRoutes: the host itself, the coordinator's steps and leases.
func (h *Host) hostRoutes(mux *http.ServeMux) {
	handle(mux, "GET /v1/host", func(*http.Request, none) (any, error) {
		return map[string]any{"accel": h.cfg.Accel, "migration_address": h.cfg.MigrationAddress,
			"pools": h.cfg.Pools, "qemu": h.cfg.QEMU, "pid": os.Getpid(), "started_at": h.started,
			"stale_shared_memory": h.StaleSharedMemory(), "insecure": h.InsecureAPI,
			"capacity": h.Capacity()}, nil
	})
	handle(mux, "POST /v1/host/restart", func(_ *http.Request, req struct {
		Binary string `json:"binary,omitempty"`
	}) (any, error) {
		if h.Restart == nil {
			return nil, fmt.Errorf("this hostd cannot restart itself: %w", ErrInvalidState)
		}
		exec, err := h.Restart(req.Binary)
		if err != nil {
			return nil, err
		}
		// The answer goes out first, then the process is replaced; VMs
		// are re-adopted.
		time.AfterFunc(200*time.Millisecond, func() { exec() })
		return map[string]any{"restarting": os.Getpid()}, nil
	})
	handle(mux, "POST /v1/steps", func(r *http.Request, req StepRequest) (any, error) {
		return h.Step(r.Context(), req), nil
	})
	handle(mux, "POST /v1/leases/renew", func(_ *http.Request, req struct {
		Op    string        `json:"op"`
		Lease time.Duration `json:"lease_ns"`
		Epoch int64         `json:"epoch"`
	}) (any, error) {
		n, err := h.RenewLeases(req.Op, req.Lease, req.Epoch)
		if err != nil {
			return nil, err
		}
		return map[string]int{"renewed": n}, nil
	})
}

// vm returns the VM named in the request's path.
func (h *Host) vm(r *http.Request) (*VM, error) { return h.Get(r.PathValue("name")) }

// vmRoutes: create, list, delete and act on VMs; each action replies with
// the VM's state after it.
func (h *Host) vmRoutes(mux *http.ServeMux) {
	handle(mux, "GET /v1/vms", func(*http.Request, none) (any, error) { return h.List(), nil })
	handle(mux, "POST /v1/vms", func(r *http.Request, req struct {
		Spec  Spec `json:"spec"`
		Start bool `json:"start"`
	}) (any, error) {
		vm, err := h.Create(req.Spec)
		if err == nil && req.Start {
			if err = vm.Start(r.Context()); err != nil {
				h.Delete(vm.name)
			}
		}
		if err != nil {
			return nil, err
		}
		return vm.Info(r.Context()), nil
	})
	handle(mux, "DELETE /v1/vms/{name}", func(r *http.Request, _ none) (any, error) {
		name := r.PathValue("name")
		return map[string]string{"deleted": name}, h.Delete(name)
	})
	act := func(pattern string, fn func(*http.Request, *VM) error) {
		handle(mux, pattern, func(r *http.Request, _ none) (any, error) {
			vm, err := h.vm(r)
			if err == nil {
				err = fn(r, vm)
			}
			if err != nil {
				return nil, err
			}
			return vm.Info(r.Context()), nil
		})
	}
	act("GET /v1/vms/{name}", func(*http.Request, *VM) error { return nil })
	act("POST /v1/vms/{name}/start", func(r *http.Request, vm *VM) error { return vm.Start(r.Context()) })
	act("POST /v1/vms/{name}/pause", func(r *http.Request, vm *VM) error { return vm.Pause(r.Context()) })
	act("POST /v1/vms/{name}/resume", func(r *http.Request, vm *VM) error { return vm.Resume(r.Context()) })
	act("POST /v1/vms/{name}/devices/{dev}/detach", func(r *http.Request, vm *VM) error {
		return vm.Detach(r.Context(), r.PathValue("dev"))
	})
	act("POST /v1/vms/{name}/devices/{dev}/attach", func(r *http.Request, vm *VM) error {
		return vm.Attach(r.Context(), r.PathValue("dev"))
	})
	handle(mux, "POST /v1/vms/{name}/stop", func(r *http.Request, req struct {
		Timeout time.Duration `json:"timeout_ns"`
	}) (any, error) {
		vm, err := h.vm(r)
		if err == nil {
			err = vm.Stop(r.Context(), req.Timeout)
		}
		if err != nil {
			return nil, err
		}
		return vm.Info(r.Context()), nil
	})
}

// operationRoutes: the direct single-VM operations.
func (h *Host) operationRoutes(mux *http.ServeMux) {
	handleStream(mux, "POST /v1/vms/{name}/checkpoint", func(r *http.Request, opts CheckpointOptions) (jsonapi.Op, error) {
		vm, err := h.vm(r)
		return func(send func(any)) (any, error) { return vm.Checkpoint(r.Context(), opts, throttled(send)) }, err
	})
	handleStream(mux, "POST /v1/restore", func(r *http.Request, opts RestoreOptions) (jsonapi.Op, error) {
		return func(send func(any)) (any, error) {
			vm, err := h.Restore(r.Context(), opts, throttled(send))
			if err != nil {
				return nil, err
			}
			return vm.Info(r.Context()), nil
		}, nil
	})
	handle(mux, "POST /v1/vms/{name}/drill", func(r *http.Request, _ none) (any, error) {
		vm, err := h.vm(r)
		if err != nil {
			return nil, err
		}
		return vm.Drill(r.Context())
	})
	handle(mux, "POST /v1/vms/{name}/rejuvenate", func(r *http.Request, opts RejuvenateOptions) (any, error) {
		vm, err := h.vm(r)
		if err != nil {
			return nil, err
		}
		return vm.Rejuvenate(r.Context(), opts)
	})
	handle(mux, "POST /v1/rejuvenate", func(r *http.Request, opts RejuvenateOptions) (any, error) {
		return h.Rejuvenate(r.Context(), opts), nil
	})
}

// migrationRoutes: the source's side of a direct migration, and the
// destination's (which a peer hostd calls).
func (h *Host) migrationRoutes(mux *http.ServeMux) {
	handleStream(mux, "POST /v1/vms/{name}/migrate", func(r *http.Request, opts MigrateOptions) (jsonapi.Op, error) {
		vm, err := h.vm(r)
		if err == nil {
			err = h.directMigrationRefused(vm.name, opts)
		}
		return func(send func(any)) (any, error) { return vm.Migrate(r.Context(), opts, throttled(send)) }, err
	})
	handle(mux, "POST /v1/incoming", func(r *http.Request, req IncomingRequest) (any, error) {
		return h.Incoming(r.Context(), req)
	})
	handle(mux, "POST /v1/vms/{name}/incoming/finish", func(r *http.Request, _ none) (any, error) {
		vm, err := h.vm(r)
		if err != nil {
			return nil, err
		}
		return vm.FinishIncoming(r.Context())
	})
	handle(mux, "POST /v1/vms/{name}/incoming/frames", func(r *http.Request, req FramesRequest) (any, error) {
		vm, err := h.vm(r)
		if err != nil {
			return nil, err
		}
		n, err := vm.InjectFrames(r.Context(), req)
		return map[string]int{"frames": n}, err
	})
	handle(mux, "POST /v1/vms/{name}/incoming/abort", func(r *http.Request, _ none) (any, error) {
		vm, err := h.vm(r)
		if err == nil {
			err = vm.AbortIncoming(r.Context())
		}
		return map[string]string{"aborted": r.PathValue("name")}, err
	})
}

// throttled passes on a few progress updates a second (a terminal needs
// no more) plus every phase change.
func throttled(send func(any)) ProgressFunc {
	var mu sync.Mutex
	last, phase := time.Time{}, ""
	return func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		if now := time.Now(); now.Sub(last) > 200*time.Millisecond || p.Phase != phase {
			last, phase = now, p.Phase
			send(p)
		}
	}
}
