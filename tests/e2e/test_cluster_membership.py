"""End-to-end: changing the membership of a running region cluster.

A 4th node joins with --join and an empty data dir (becomes a voter known to
every node with its HTTP address and region, and has the data); a node is
removed with DELETE /admin/v1/cluster/nodes/{id} (also from a plain 3-node
cluster); adding an existing id or
address is 409; a bad body is 400; leadership moves with
POST /admin/v1/cluster/transfer. Each test starts its own cluster; after each
one every running node must reach the same digest at the same index
(harness.ClusterTestCase)."""

import time

import harness
from harness import ClusterTestCase

NS = "/v1/account/acme/ns1"
MEMBERSHIP_BUDGET = 20.0      # seconds for a membership change to show everywhere


class ClusterMembership(ClusterTestCase):

    def wait_views(self, nodes, pred, what, budget=MEMBERSHIP_BUDGET):
        """Poll /admin/v1/cluster on nodes until pred(view) holds on each."""
        deadline = time.monotonic() + budget
        last = None
        for _ in range(int(budget / 0.1) + 1):
            views = [self.cluster.view(x) for x in nodes]
            last = views
            if all(isinstance(v, dict) and pred(v) for v in views):
                return views
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.fail("%s: not seen on every node within %.0f s: %r" % (what, budget, last))

    def test_a_joining_node_becomes_a_voter_with_the_data_and_a_node_can_be_removed(self):
        c = self.start_cluster()
        leader = c.wait_leader()
        for i in range(20):
            self.assertStatus(self.client(c.nodes[i % 3]).put(
                NS + "/s1/properties/k%d" % i, str(i)), 204)
        via = c.followers(leader)[0]
        n4 = c.add_joining(4, via, region="z4")

        def four_voters(v):
            ms = v.get("nodes") or []
            m4 = [m for m in ms if m.get("id") == 4]
            return (len(ms) == 4 and all(m.get("role") == "voter" for m in ms)
                    and m4 and m4[0].get("httpAddress") == "127.0.0.1:%d" % n4.http_port
                    and m4[0].get("raftAddress") == "127.0.0.1:%d" % n4.raft_port
                    and m4[0].get("region") == "z4")
        self.wait_views(c.nodes, four_voters, "4 voters")
        c.wait_converged()
        r = self.client(n4).get(NS + "/s1/properties")
        self.assertStatus(r, 200)
        self.assertEqual(r.json(), {"k%d" % i: i for i in range(20)})
        # Writes through the new node work.
        self.assertStatus(self.client(n4).put(NS + "/s1/properties/from4", "4"), 204)

        # Remove an original follower (asked on a follower: forwarded).
        leader = c.wait_leader()
        gone = [x for x in c.nodes if x is not leader and x is not n4][0]
        asker = [x for x in c.nodes if x is not leader and x is not gone][0]
        r = c.admin(asker).delete("/admin/v1/cluster/nodes/%d" % gone.node_id)
        self.assertStatus(r, 204)
        rest = [x for x in c.nodes if x is not gone]
        self.wait_views(rest, lambda v: sorted(m.get("id") for m in v.get("nodes") or [])
                        == sorted(x.node_id for x in rest), "removal of %d" % gone.node_id)
        r = c.admin(asker).delete("/admin/v1/cluster/nodes/%d" % gone.node_id)
        self.assertStatus(r, 404, "node_not_found")
        gone.stop()
        self.assertStatus(self.client(asker).put(NS + "/s1/properties/after", "1"), 204)
        c.wait_converged(rest)

    def test_a_removed_node_leaves_every_view_and_can_be_stopped(self):
        c = self.start_cluster()
        leader = c.wait_leader()
        gone, asker = c.followers(leader)
        r = c.admin(asker).delete("/admin/v1/cluster/nodes/99")
        self.assertStatus(r, 404, "node_not_found")
        r = c.admin(asker).delete("/admin/v1/cluster/nodes/%d" % gone.node_id)
        self.assertStatus(r, 204)
        rest = [leader, asker]
        self.wait_views(rest, lambda v: sorted(m.get("id") for m in v.get("nodes") or [])
                        == sorted(x.node_id for x in rest), "removal of %d" % gone.node_id)
        gone.stop()
        for x in rest:
            self.assertStatus(self.client(x).put(NS + "/s1/properties/n%d" % x.node_id, "1"),
                              204)
        c.wait_converged(rest)

    def test_adding_an_existing_id_or_address_is_a_conflict(self):
        c = self.start_cluster()
        leader = c.wait_leader()
        fol = c.followers(leader)[0]
        n2 = c.node(2)
        for asker in (leader, fol):
            a = c.admin(asker)
            r = a.post("/admin/v1/cluster/nodes",
                       {"id": 2, "raftAddress": "127.0.0.1:1", "httpAddress": "127.0.0.1:2",
                        "region": "z9"})
            self.assertStatus(r, 409, "conflict")
            r = a.post("/admin/v1/cluster/nodes",
                       {"id": 7, "raftAddress": "127.0.0.1:%d" % n2.raft_port,
                        "httpAddress": "127.0.0.1:3", "region": "z9"})
            self.assertStatus(r, 409, "conflict")
            for body in ('{"id":"x"}', "[]", "{", {"id": 8}, {"id": 0, "raftAddress": "a:1",
                                                               "httpAddress": "b:2",
                                                               "region": "r"}):
                r = a.post("/admin/v1/cluster/nodes", body)
                self.assertEqual(r.status, 400, "%r -> %r" % (body, r))
        # A refused add changes nothing: node 2 keeps its addresses and region.
        for x in c.nodes:
            v = c.view(x)
            self.assertEqual(len(v["nodes"]), 3, v)
            m2 = [m for m in v["nodes"] if m["id"] == 2][0]
            self.assertEqual((m2["raftAddress"], m2["httpAddress"], m2["region"]),
                             ("127.0.0.1:%d" % n2.raft_port, "127.0.0.1:%d" % n2.http_port,
                              n2.region), v)
        # Forwarding to and from node 2 still works.
        self.assertStatus(self.client(n2).put(NS + "/s1/properties/p", "1"), 204)

    def test_leadership_moves_to_the_node_asked_for(self):
        c = self.start_cluster()
        leader = c.wait_leader()
        target = c.followers(leader)[0]
        r = c.admin(leader).post("/admin/v1/cluster/transfer", {"id": target.node_id})
        self.assertStatus(r, 200)
        self.assertEqual(r.json(), {"leader": target.node_id})
        self.wait_views(c.nodes, lambda v: v.get("leader") == target.node_id,
                        "leader %d" % target.node_id)
        for x in c.nodes:
            self.assertStatus(self.client(x).put(NS + "/s1/properties/n%d" % x.node_id, "1"),
                              204)
        # Asked on a follower, without an id: some other voter leads.
        asker = [x for x in c.nodes if x is not target][0]
        r = c.admin(asker).post("/admin/v1/cluster/transfer", {})
        self.assertStatus(r, 200)
        new = r.json().get("leader")
        self.assertNotEqual(new, target.node_id, "%r" % (r,))
        self.wait_views(c.nodes, lambda v: v.get("leader") == new, "leader %s" % new)
        r = c.admin(asker).post("/admin/v1/cluster/transfer", {"id": 99})
        self.assertIn(r.status, (400, 404), "%r" % (r,))


if __name__ == "__main__":
    harness.main()
