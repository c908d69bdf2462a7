"""ctxd failover drills: the cluster under faults, its workload, and the checker.

Modules:
  checker   per-key linearizability of a recorded history (register with delete),
            lost writes, availability figures; pure Python, no cluster needed
  net       network namespaces, veth pairs, a bridge, link cuts and tc netem delay
  nodes     the ctxd processes of one drill cluster (start, kill -9, restart, admin)
  workload  concurrent clients that record every operation
  scenarios the fault scenarios, the run of one scenario, and the report
"""
