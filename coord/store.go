package coord

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Store keeps the coordinator's state. The bbolt store is the default; the
// interface is what an etcd backend (several coordinators) implements.
// Every Put is durable when it returns: the driver journals an operation
// before it executes the operation's next actions.
type Store interface {
	Put(bucket, key string, v any) error
	Get(bucket, key string, v any) error // ErrNotFound when absent
	Delete(bucket, key string) error
	List(bucket string, each func(key string, data []byte) error) error
	Close() error
}

// Buckets.
const (
	bucketHosts       = "hosts"
	bucketJobs        = "jobs"
	bucketOps         = "ops"
	bucketCheckpoints = "checkpoints"
	bucketSchedules   = "schedules"
	bucketCordons     = "cordons"
	bucketImages      = "images"
	bucketTemplates   = "templates"
)

type boltStore struct{ db *bolt.DB }

// OpenBolt opens (creating) the bbolt store in dir.
func OpenBolt(dir string) (Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	db, err := bolt.Open(filepath.Join(dir, "coord.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("coord store: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{bucketHosts, bucketJobs, bucketOps, bucketCheckpoints, bucketSchedules, bucketCordons, bucketImages, bucketTemplates} {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &boltStore{db: db}, nil
}

func (s *boltStore) Put(bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte(bucket)).Put([]byte(key), data) })
}

func (s *boltStore) Get(bucket, key string, v any) error {
	return s.db.View(func(tx *bolt.Tx) error {
		data := tx.Bucket([]byte(bucket)).Get([]byte(key))
		if data == nil {
			return fmt.Errorf("%s %q: %w", bucket, key, ErrNotFound)
		}
		return json.Unmarshal(data, v)
	})
}

func (s *boltStore) Delete(bucket, key string) error {
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte(bucket)).Delete([]byte(key)) })
}

func (s *boltStore) List(bucket string, each func(string, []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(bucket)).ForEach(func(k, v []byte) error { return each(string(k), v) })
	})
}

func (s *boltStore) Close() error { return s.db.Close() }

// listAll decodes every value of a bucket, sorted by key.
func listAll[T any](s Store, bucket string) ([]T, error) {
	type kv struct {
		k string
		v T
	}
	var items []kv
	err := s.List(bucket, func(k string, data []byte) error {
		var v T
		if err := json.Unmarshal(data, &v); err != nil {
			return fmt.Errorf("%s %q: %w", bucket, k, err)
		}
		items = append(items, kv{k, v})
		return nil
	})
	sort.Slice(items, func(i, j int) bool { return items[i].k < items[j].k })
	out := make([]T, len(items))
	for i, it := range items {
		out[i] = it.v
	}
	return out, err
}
