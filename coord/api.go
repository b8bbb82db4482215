package coord

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/url"
	"path/filepath"

	"github.com/symvirt/symvirt/coord/machine"
	"github.com/symvirt/symvirt/internal/jsonapi"
)

// SocketPath is the coordinator's unix API socket in its state directory
// (unless --socket says otherwise).
func SocketPath(stateDir string) string { return filepath.Join(stateDir, "coord.sock") }

// Handler is the coordinator's API.
func (c *Coord) Handler() http.Handler {
	mux := http.NewServeMux()
	c.stateRoutes(mux)
	c.operationRoutes(mux)
	c.adminRoutes(mux)
	c.scheduleRoutes(mux)
	c.cordonRoutes(mux)
	c.opsRoutes(mux)
	c.consolidateRoutes(mux)
	c.bootRoutes(mux)
	c.imageRoutes(mux)
	c.templateRoutes(mux)
	return c.haGate(mux)
}

// none is the request of a route that takes no body.
type none struct{}

func handle[In any](mux *http.ServeMux, pattern string, fn func(*http.Request, In) (any, error)) {
	jsonapi.Handle(mux, codes, pattern, fn)
}

// stateRoutes: hosts, jobs, checkpoints and operations as stored.
func (c *Coord) stateRoutes(mux *http.ServeMux) {
	handle(mux, "GET /v1/hosts", func(r *http.Request, _ none) (any, error) { return c.HostInfosWithUsage(r.Context()) })
	handle(mux, "POST /v1/hosts", func(_ *http.Request, h Host) (any, error) { return h, c.AddHost(h) })
	handle(mux, "GET /v1/jobs", func(r *http.Request, _ none) (any, error) { return c.JobInfosWithUsage(r.Context()) })
	handle(mux, "GET /v1/jobs/{name}", func(r *http.Request, _ none) (any, error) { return c.Job(r.PathValue("name")) })
	handle(mux, "POST /v1/jobs", func(r *http.Request, j Job) (any, error) { return c.CreateJob(r.Context(), j) })
	handle(mux, "GET /v1/status", func(r *http.Request, _ none) (any, error) { return c.Status(r.Context()) })
	handle(mux, "GET /v1/checkpoints", func(*http.Request, none) (any, error) { return c.Checkpoints() })
	handle(mux, "GET /v1/checkpoints/{id}", func(r *http.Request, _ none) (any, error) {
		return c.CheckpointByID(r.PathValue("id"))
	})
	handle(mux, "DELETE /v1/checkpoints/{id}", func(r *http.Request, _ none) (any, error) {
		id := r.PathValue("id")
		return map[string]string{"removed": id}, c.RemoveCheckpoint(r.Context(), id)
	})
	handle(mux, "GET /v1/ops", func(*http.Request, none) (any, error) { return c.Ops() })
}

// operationRoutes: the job operations, streamed; a failed operation's
// result still goes with its error (it says what happened to each VM).
func (c *Coord) operationRoutes(mux *http.ServeMux) {
	op := func(fn func(p ProgressFunc) (any, error)) (jsonapi.Op, error) {
		return func(send func(any)) (any, error) {
			res, err := fn(func(p Progress) { send(p) })
			return res, refine(res, err)
		}, nil
	}
	jsonapi.HandleStream(mux, codes, "POST /v1/jobs/{name}/checkpoint", func(r *http.Request, o CheckpointOptions) (jsonapi.Op, error) {
		return op(func(p ProgressFunc) (any, error) { return c.Checkpoint(r.Context(), r.PathValue("name"), o, p) })
	})
	jsonapi.HandleStream(mux, codes, "POST /v1/jobs/{name}/restart", func(r *http.Request, o RestartOptions) (jsonapi.Op, error) {
		return op(func(p ProgressFunc) (any, error) { return c.Restart(r.Context(), r.PathValue("name"), o, p) })
	})
	jsonapi.HandleStream(mux, codes, "POST /v1/migrate/{target}", func(r *http.Request, o MigrateOptions) (jsonapi.Op, error) {
		return op(func(p ProgressFunc) (any, error) { return c.Migrate(r.Context(), r.PathValue("target"), o, p) })
	})
	jsonapi.HandleStream(mux, codes, "POST /v1/hosts/{name}/evacuate", func(r *http.Request, o struct {
		Live bool `json:"live"`
	}) (jsonapi.Op, error) {
		return op(func(p ProgressFunc) (any, error) {
			res, err := c.Evacuate(r.Context(), []string{r.PathValue("name")}, o.Live, p)
			if res == nil {
				res = []machine.Result{} // a list, also when empty: the client decodes one
			}
			return res, err
		})
	})
}

// Client talks to a coordinator.
type Client struct{ api *replicaClient }

// NewClient returns a client for a unix socket path or an https host:port
// (cfg: the operator's client certificate); a comma-separated list names
// the replicas of an etcd-backed coordinator, and the client finds the
// leader among them.
func NewClient(addr string, cfg *tls.Config) *Client {
	return &Client{api: newReplicaClient(addr, cfg)}
}

// Do runs a plain request.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	return c.api.Do(ctx, method, path, body, out)
}

// Stream runs a streamed operation; out receives the result even when the
// operation failed (it says what happened to each VM).
func (c *Client) Stream(ctx context.Context, path string, body, out any, progress ProgressFunc) error {
	return c.api.Stream(ctx, path, body, out, jsonapi.Progress(progress))
}

// Checkpoint checkpoints a job (live: each VM copied while it runs).
func (c *Client) Checkpoint(ctx context.Context, job string, o CheckpointOptions, p ProgressFunc) (machine.Result, error) {
	var res machine.Result
	err := c.Stream(ctx, "/v1/jobs/"+url.PathEscape(job)+"/checkpoint", o, &res, p)
	return res, err
}

// Restart restarts a job from a checkpoint.
func (c *Client) Restart(ctx context.Context, job string, o RestartOptions, p ProgressFunc) (machine.Result, error) {
	var res machine.Result
	err := c.Stream(ctx, "/v1/jobs/"+url.PathEscape(job)+"/restart", o, &res, p)
	return res, err
}

// Migrate moves a job or a VM.
func (c *Client) Migrate(ctx context.Context, target string, o MigrateOptions, p ProgressFunc) (machine.Result, error) {
	var res machine.Result
	err := c.Stream(ctx, "/v1/migrate/"+url.PathEscape(target), o, &res, p)
	return res, err
}

// Evacuate empties hosts and cordons them.
func (c *Client) Evacuate(ctx context.Context, hosts []string, live bool, p ProgressFunc) ([]machine.Result, error) {
	var res []machine.Result
	err := c.Stream(ctx, "/v1/evacuate", EvacuateOptions{Hosts: hosts, Live: live}, &res, p)
	return res, err
}
