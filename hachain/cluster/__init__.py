"""hachain's cluster layer: a node's etcd lease, singleton ownership, self-fencing.

`timing.py` is the timing rule (pure, stdlib-only: the configuration check, the tickler's
gate and the restarter use it); `node.py` is the layer process that talks to etcd (the
only module that imports an etcd client). See docs/cluster.md.
"""
