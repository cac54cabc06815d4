"""The etcd cluster of the cluster tests: see hachain/simulators/cluster_harness.py."""

from hachain.simulators.cluster_harness import ETCD, EtcdCluster, free_ports

__all__ = ["ETCD", "EtcdCluster", "free_ports"]
