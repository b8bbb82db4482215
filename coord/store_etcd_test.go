package coord

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/symvirt/symvirt/internal/testetcd"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// openTestEtcd opens a store on a fresh 3-member etcd cluster.
func openTestEtcd(t *testing.T, c *testetcd.Cluster, prefix string) *etcdStore {
	st, err := OpenEtcd(&EtcdConfig{Endpoints: strings.Split(c.Endpoints(), ","), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// win campaigns for st on its own session and makes st the leader.
func win(t *testing.T, st *etcdStore, name string) (*concurrency.Session, int64) {
	sess, err := concurrency.NewSession(st.cli, concurrency.WithTTL(2))
	if err != nil {
		t.Fatal(err)
	}
	el := concurrency.NewElection(sess, st.prefix+"/election")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := el.Campaign(ctx, name); err != nil {
		t.Fatal(err)
	}
	st.lead(el.Key(), el.Rev())
	return sess, el.Rev()
}

// The etcd store keeps buckets like bbolt does (sorted listing,
// ErrNotFound when absent), and writes only while its replica leads: a
// replica that never led, and one whose session ended (another replica
// won since), are refused with ErrNotLeader although the deposed one still
// believes it leads (its epoch is still set): the condition is checked by
// etcd in the write's own transaction.
func TestEtcdStoreWritesOnlyWhileLeading(t *testing.T) {
	c := testetcd.Start(t, "", 3, testetcd.FreeBase(t, 3))
	a := openTestEtcd(t, c, "/t1")
	b := openTestEtcd(t, c, "/t1")
	if err := a.Put(bucketJobs, "j", Job{Name: "j"}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("a write before any election: %v, want ErrNotLeader", err)
	}
	sessA, epochA := win(t, a, "a")
	for _, k := range []string{"b", "a", "c"} {
		if err := a.Put(bucketJobs, k, Job{Name: k}); err != nil {
			t.Fatalf("leader's write: %v", err)
		}
	}
	jobs, err := listAll[Job](b, bucketJobs)
	if err != nil || len(jobs) != 3 || jobs[0].Name != "a" || jobs[2].Name != "c" {
		t.Fatalf("a follower's listing: %v %+v", err, jobs)
	}
	var j Job
	if err := b.Get(bucketJobs, "zz", &j); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get of an absent key: %v", err)
	}
	if err := b.Put(bucketJobs, "x", Job{Name: "x"}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("a follower's write: %v, want ErrNotLeader", err)
	}
	if err := a.Delete(bucketJobs, "b"); err != nil {
		t.Fatal(err)
	}

	// a's session ends (as when its process is paused past the TTL); b wins.
	sessA.Orphan()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	a.cli.Revoke(ctx, sessA.Lease())
	cancel()
	_, epochB := win(t, b, "b")
	if epochB <= epochA {
		t.Fatalf("the new leader's epoch %d is not above the old one's %d", epochB, epochA)
	}
	err = a.Put(bucketJobs, "late", Job{Name: "late"})
	if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("the deposed leader's write: %v, want ErrNotLeader", err)
	}
	t.Logf("deposed leader's write: %v", err)
	if err := a.Delete(bucketJobs, "a"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("the deposed leader's delete: %v, want ErrNotLeader", err)
	}
	if err := b.Put(bucketJobs, "d", Job{Name: "d"}); err != nil {
		t.Fatalf("the new leader's write: %v", err)
	}
	jobs, _ = listAll[Job](a, bucketJobs)
	var names []string
	for _, j := range jobs {
		names = append(names, j.Name)
	}
	if strings.Join(names, ",") != "a,c,d" {
		t.Fatalf("stored jobs %v, want a,c,d (nothing of the deposed leader's)", names)
	}
}
