package hostd

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/symvirt/symvirt/hostd/step"
	"github.com/symvirt/symvirt/internal/pki"
)

// Who may call what over the TCP API (mutual TLS):
//   - the coordinator's certificate: everything;
//   - a hostd certificate (a peer host): only what a migration source needs
//     of its destination, and only for a VM the coordinator sent from that
//     peer to this host. POST /v1/incoming must carry a grant signed by a
//     coordinator certificate naming the operation, the VM, the peer as
//     source and this host as destination; the VM then records the peer as
//     its source, and only that peer may finish, abort or read it;
//   - a hostd certificate may also read any registered image's manifest and
//     chunks (fan-out boots: every host may serve every other);
//   - the unix socket (no TLS) is local root and may call everything.
// A direct `symvirt vm migrate` between TLS hostds has no coordinator to
// grant it and is refused at the source (migrate through the coordinator),
// unless its caller brings a grant the coordinator's key signed.

// PeerAuth is what a TLS hostd needs to judge its peers: its own
// certificate name and the CA that signs coordinator grants.
type PeerAuth struct {
	Self string
	CA   *pki.Verifier
}

// NewPeerAuth reads this hostd's certificate name from its certificate and
// key, and the CA.
func NewPeerAuth(certFile, keyFile, caFile string) (*PeerAuth, error) {
	s, err := pki.LoadSigner(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	if s.Role() != pki.RoleHostd {
		return nil, fmt.Errorf("%s is a %s certificate, a hostd needs a hostd one: %w", certFile, s.Role(), pki.ErrRole)
	}
	v, err := pki.LoadVerifier(caFile)
	if err != nil {
		return nil, err
	}
	return &PeerAuth{Self: s.Name(), CA: v}, nil
}

// Caller is who made an API request.
type Caller struct {
	// Role and Name come from the verified TLS client certificate; both
	// are empty on the unix socket or a plain TCP listener.
	Role pki.Role
	Name string
}

func (c Caller) peer() bool { return c.Role == pki.RoleHostd }

func (c Caller) String() string {
	if c.Role == "" {
		return "local"
	}
	return string(c.Role) + "/" + c.Name
}

type callerKey struct{}

func callerFrom(ctx context.Context) Caller {
	c, _ := ctx.Value(callerKey{}).(Caller)
	return c
}

// authorize identifies the caller, puts it in the request's context and
// lets a peer hostd reach only its own migrations' routes.
func (h *Host) authorize(next http.Handler) http.Handler {
	refuse := func(w http.ResponseWriter, r *http.Request) {
		c := callerFrom(r.Context())
		errorCodes.WriteError(w, fmt.Errorf("%s may not call %s %s: %w", c, r.Method, r.URL.Path, ErrUnauthorized))
	}
	own := func(w http.ResponseWriter, r *http.Request) {
		if err := h.receivedFrom(r.PathValue("name"), callerFrom(r.Context())); err != nil {
			errorCodes.WriteError(w, fmt.Errorf("%s %s: %w", r.Method, r.URL.Path, err))
			return
		}
		next.ServeHTTP(w, r)
	}
	peer := http.NewServeMux()
	peer.Handle("POST /v1/incoming", next) // the grant is checked in Incoming
	peer.HandleFunc("GET /v1/vms/{name}", own)
	peer.HandleFunc("POST /v1/vms/{name}/incoming/finish", own)
	peer.HandleFunc("POST /v1/vms/{name}/incoming/abort", own)
	// Image chunks: any hostd of the cluster may read them (images.md).
	peer.HandleFunc("GET /v1/images/{name}/manifest", h.servePeerImage)
	peer.HandleFunc("GET /v1/templates/{name}/manifest", h.servePeerTemplate) // its files are images
	peer.HandleFunc("GET /v1/images/{name}/chunks/{chunk}", h.servePeerImage)
	peer.HandleFunc("POST /v1/vms/{name}/incoming/frames", own)
	peer.HandleFunc("/", refuse)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var c Caller
		if r.TLS != nil {
			role, name, ok := pki.PeerRole(*r.TLS)
			if !ok {
				// Unreachable with pki.ServerConfig: fail closed.
				role, name = "unverified", "?"
			}
			c = Caller{Role: role, Name: name}
		}
		r = r.WithContext(context.WithValue(r.Context(), callerKey{}, c))
		switch {
		case r.TLS == nil, c.Role == pki.RoleCoord:
			next.ServeHTTP(w, r)
		case c.peer():
			peer.ServeHTTP(w, r)
		default:
			refuse(w, r)
		}
	})
}

// receivedFrom lets a peer hostd act on a VM only if this host received
// that VM from it. A VM that does not exist is reported so (a source whose
// lease ran out learns that its destination's copy is gone).
func (h *Host) receivedFrom(name string, c Caller) error {
	vm, err := h.Get(name)
	if err != nil {
		return err
	}
	vm.mu.Lock()
	from := vm.rt.From
	vm.mu.Unlock()
	if from == "" || from != c.Name {
		return fmt.Errorf("%s may not touch vm %q: it was not migrated here from %s: %w", c, name, c.Name, ErrUnauthorized)
	}
	return nil
}

// admitIncoming decides whether the caller may hand over req's VM; it
// returns the source to record on the VM ("" when the caller is the
// coordinator or local, which no peer may then touch).
func (h *Host) admitIncoming(ctx context.Context, req IncomingRequest) (string, error) {
	c := callerFrom(ctx)
	if !c.peer() {
		return "", nil
	}
	deny := func(format string, a ...any) (string, error) {
		return "", fmt.Errorf("%s may not hand over vm %q: %s: %w", c, req.Spec.Name, fmt.Sprintf(format, a...), ErrUnauthorized)
	}
	if req.Grant == nil {
		return deny("no migration grant from the coordinator (migrate through it: symvirt migrate VM --to HOST)")
	}
	if h.PeerAuth == nil {
		return deny("this hostd has no CA to check a grant with")
	}
	g, err := step.OpenGrant(h.PeerAuth.CA, req.Grant)
	if err != nil {
		return deny("grant: %v", err)
	}
	switch {
	case g.Dest != h.PeerAuth.Self:
		return deny("the grant is for destination %q, this host is %q", g.Dest, h.PeerAuth.Self)
	case g.Source != c.Name:
		return deny("the grant is for source %q", g.Source)
	case g.VM != req.Spec.Name:
		return deny("the grant is for vm %q", g.VM)
	case g.Op != req.Op:
		return deny("the grant is for operation %q, not %q", g.Op, req.Op)
	case !timeNow().Before(g.Expires):
		return deny("the grant expired at %s", g.Expires.UTC().Format(time.RFC3339))
	}
	return c.Name, nil
}

// directMigrationRefused: a VM is handed to a TLS peer only with a
// coordinator's grant, which a direct migration has only where the caller
// holds one (the coordinator's key signed it); a destination on this
// host's unix socket is local root and needs none.
func (h *Host) directMigrationRefused(vm string, opts MigrateOptions) error {
	if h.PeerTLS == nil || opts.Grant != nil || h.peer(opts.To).Local() {
		return nil
	}
	return fmt.Errorf("vm %q: a migration between TLS hostds needs the coordinator's grant: "+
		"use symvirt migrate %s --to HOST through the coordinator: %w", vm, vm, ErrUnauthorized)
}
