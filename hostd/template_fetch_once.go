package hostd

import (
	"context"
	"fmt"
	"sync"
)

// templateFetches are the template fetches under way on this host, by
// name: a second request for the same template (two boots sending it
// to one host at once) waits for the first and takes its result,
// instead of racing it for the template's directory and RAM file.
type templateFetches struct {
	mu sync.Mutex
	m  map[string]*templateFetch
}

type templateFetch struct {
	id   string
	done chan struct{}
	t    Template
	err  error
}

// join returns the fetch of name under way (first false), or starts
// one (first true: the caller fetches, then calls finish). A fetch
// under way of another id is refused: one name, one template.
func (f *templateFetches) join(name, id string) (tf *templateFetch, first bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cur := f.m[name]; cur != nil {
		if cur.id != id {
			return nil, false, fmt.Errorf("template %q is being fetched here with id %s, not %s: %w", name, cur.id, id, ErrExists)
		}
		return cur, false, nil
	}
	if f.m == nil {
		f.m = map[string]*templateFetch{}
	}
	tf = &templateFetch{id: id, done: make(chan struct{})}
	f.m[name] = tf
	return tf, true, nil
}

// finish records the fetch's result and wakes those waiting for it.
func (f *templateFetches) finish(name string, tf *templateFetch, t Template, err error) {
	tf.t, tf.err = t, err
	f.mu.Lock()
	delete(f.m, name)
	f.mu.Unlock()
	close(tf.done)
}

// wait is the result of a fetch another request started.
func (tf *templateFetch) wait(ctx context.Context) (Template, error) {
	select {
	case <-tf.done:
		return tf.t, tf.err
	case <-ctx.Done():
		return Template{}, ctx.Err()
	}
}
