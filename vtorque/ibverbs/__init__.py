"""RDMA for guests: what the node has (sysfs), which virtual functions go to which guest
(pool), and which transport a job gets with what environment (transport).

Kept free of imports here: the epilogue of every job checks VF_LEDGER's existence."""

# Virtual function assignments of this node, in config.state_dir (see pool.py).
VF_LEDGER = ".vf-assignments.json"
