"""The built-in policies, registered through the `simmoe.policies` entry point like any plug-in.

To add a built-in: write its module (one file per policy) and list its class here.
"""

from simmoe.policies.cache.lru import LRU
from simmoe.policies.cache.ondemand import OnDemand
from simmoe.policies.cache.resident import Resident
from simmoe.policies.placement.cpu_experts import AllOnCpu, CpuExperts

POLICIES = (LRU, OnDemand, Resident, AllOnCpu, CpuExperts)
