package coord

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// EtcdConfig places the coordinator's store in an etcd cluster, shared by
// the coordinator's replicas (ha.go).
type EtcdConfig struct {
	Endpoints []string
	// CA, Cert and Key are the client's TLS files for https endpoints
	// (the etcd cluster's own CA, not symvirt's).
	CA, Cert, Key string
	// Prefix is where the coordinator's keys live (default /symvirt/coord).
	Prefix string
	// TTL is the replica's session: a leader that has not kept it alive
	// this long is deposed (default 3s).
	TTL time.Duration
	// Advertise is the API address this replica's CLI clients are sent to
	// when it leads.
	Advertise string
}

func (e *EtcdConfig) prefix() string {
	if e.Prefix == "" {
		return "/symvirt/coord"
	}
	return strings.TrimSuffix(e.Prefix, "/")
}

// ttlSeconds is the session TTL in whole seconds (etcd's unit), rounded
// up, at least 1 (3 by default).
func (e *EtcdConfig) ttlSeconds() int {
	if e.TTL <= 0 {
		return 3
	}
	return max(1, int((e.TTL+time.Second-1)/time.Second))
}

// etcdStore keeps the buckets under PREFIX/data/BUCKET/KEY. Every write is
// one transaction conditioned on the leader's election key still having
// the create revision it had when this replica won: a replica that is not
// (or no longer) the leader cannot write.
type etcdStore struct {
	cli    *clientv3.Client
	prefix string

	mu     sync.Mutex
	key    string // this replica's election key while it leads, else ""
	epoch  int64  // that key's create revision
	closed bool
}

// dialEtcd connects to the etcd cluster.
func dialEtcd(cfg *EtcdConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("coord store: no etcd endpoint: %w", ErrInvalid)
	}
	var tlsCfg *tls.Config
	if cfg.Cert != "" || cfg.CA != "" {
		var err error
		if tlsCfg, err = etcdTLS(cfg); err != nil {
			return nil, fmt.Errorf("coord store: etcd TLS: %w", err)
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Endpoints, TLS: tlsCfg, DialTimeout: 5 * time.Second,
		DialKeepAliveTime: time.Second, DialKeepAliveTimeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("coord store: etcd %v: %w", cfg.Endpoints, err)
	}
	return cli, nil
}

// OpenEtcd opens the etcd store; it writes only once lead names this
// replica's election key.
func OpenEtcd(cfg *EtcdConfig) (*etcdStore, error) {
	cli, err := dialEtcd(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Get(ctx, cfg.prefix()+"/probe"); err != nil {
		cli.Close()
		return nil, fmt.Errorf("coord store: etcd %v: %w", cfg.Endpoints, err)
	}
	return &etcdStore{cli: cli, prefix: cfg.prefix()}, nil
}

// lead makes writes conditional on key (this replica's election key) with
// create revision epoch; lead("", 0) forbids writes.
func (s *etcdStore) lead(key string, epoch int64) {
	s.mu.Lock()
	s.key, s.epoch = key, epoch
	s.mu.Unlock()
}

func (s *etcdStore) path(bucket, key string) string { return s.prefix + "/data/" + bucket + "/" + key }

// write runs op if this replica still leads.
func (s *etcdStore) write(what string, op clientv3.Op) error {
	s.mu.Lock()
	key, epoch := s.key, s.epoch
	s.mu.Unlock()
	if key == "" {
		return fmt.Errorf("coord store: %s: %w", what, ErrNotLeader)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", epoch)).Then(op).Commit()
	if err != nil {
		return fmt.Errorf("coord store: %s: %w", what, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("coord store: %s: epoch %d is over: %w", what, epoch, ErrNotLeader)
	}
	return nil
}

func (s *etcdStore) Put(bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.write("put "+bucket+"/"+key, clientv3.OpPut(s.path(bucket, key), string(data)))
}

func (s *etcdStore) Delete(bucket, key string) error {
	return s.write("delete "+bucket+"/"+key, clientv3.OpDelete(s.path(bucket, key)))
}

func (s *etcdStore) Get(bucket, key string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.path(bucket, key))
	if err != nil {
		return fmt.Errorf("coord store: get %s/%s: %w", bucket, key, err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("%s %q: %w", bucket, key, ErrNotFound)
	}
	return json.Unmarshal(resp.Kvs[0].Value, v)
}

func (s *etcdStore) List(bucket string, each func(string, []byte) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := s.path(bucket, "")
	resp, err := s.cli.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return fmt.Errorf("coord store: list %s: %w", bucket, err)
	}
	for _, kv := range resp.Kvs {
		if err := each(strings.TrimPrefix(string(kv.Key), dir), kv.Value); err != nil {
			return err
		}
	}
	return nil
}

func (s *etcdStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.key = ""
	return s.cli.Close()
}

// etcdTLS is the client's TLS towards etcd: its CA verifies the members,
// and the certificate (if given) authenticates this replica to them.
func etcdTLS(cfg *EtcdConfig) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CA != "" {
		pem, err := os.ReadFile(cfg.CA)
		if err != nil {
			return nil, err
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no certificate in it: %w", cfg.CA, ErrInvalid)
		}
	}
	if cfg.Cert != "" {
		pair, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}
