package coord

// FanoutTree gives each host the sources it fetches an image from, in
// the order to ask them. seeds hold the whole image: seeds[0] is the
// tree's root, the others are replicas. The other hosts are placed
// breadth-first in the order given: the root takes seedDegree children
// (< 1: degree), every other host degree (< 1: 2). A host's list is its
// parent, grandparent, ... up to the root, then the replicas: when its
// parent dies it re-parents to the grandparent (which holds every block
// the parent had fetched for it, and more), and when the whole path up
// is gone, to a replica. Seeds get no list; a seed also named in hosts is
// not placed.
func FanoutTree(seeds, hosts []string, degree, seedDegree int) map[string][]string {
	if degree < 1 {
		degree = 2
	}
	if seedDegree < 1 {
		seedDegree = degree
	}
	out := map[string][]string{}
	if len(seeds) == 0 {
		return out
	}
	isSeed := map[string]bool{}
	for _, s := range seeds {
		isSeed[s] = true
	}
	parent := map[string]string{}
	queue := []string{seeds[0]}
	room := map[string]int{seeds[0]: seedDegree}
	for _, h := range hosts {
		if isSeed[h] || parent[h] != "" {
			continue
		}
		for room[queue[0]] == 0 {
			queue = queue[1:]
		}
		parent[h] = queue[0]
		room[queue[0]]--
		queue = append(queue, h)
		room[h] = degree
	}
	for h := range parent {
		var list []string
		for p := parent[h]; p != ""; p = parent[p] {
			list = append(list, p)
		}
		out[h] = append(list, seeds[1:]...)
	}
	return out
}
