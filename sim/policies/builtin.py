"""The built-in policies, registered through the `simmoe.policies` entry point like any plug-in.

To add a built-in: write its module (one file per policy) and list its class here.
"""

from simmoe.policies.cache.arc import ARC
from simmoe.policies.cache.belady import Belady
from simmoe.policies.cache.data_aware import Daop, DataAware
from simmoe.policies.cache.fifo import FIFO
from simmoe.policies.cache.lfu import LFU
from simmoe.policies.cache.lru import LRU
from simmoe.policies.cache.mrs import MRS
from simmoe.policies.cache.ondemand import OnDemand
from simmoe.policies.cache.resident import Resident
from simmoe.policies.cache.static_popular import StaticPopular
from simmoe.policies.cache.virtual_set import VirtualSetCache
from simmoe.policies.placement.cpu_experts import AllOnCpu, CpuExperts
from simmoe.policies.placement.fiddler import Fiddler
from simmoe.policies.placement.hybrid_split import HybridSplit, HybriMoE
from simmoe.policies.placement.n_cpu_moe import NCpuMoe
from simmoe.policies.placement.near_memory import MoNDE, NearMemory
from simmoe.policies.precision.matryoshka import D2MoE, Matryoshka
from simmoe.policies.precision.quantized import Quantized
from simmoe.policies.prefetch.impact import ImpactPrefetch
from simmoe.policies.prefetch.next_layer import NextLayerPrefetch
from simmoe.policies.prefetch.oracle import OraclePrefetch
from simmoe.policies.prefetch.pregated import PregatedPrefetch, PregatedSystem
from simmoe.policies.prefetch.ring import RingPrefetch, SeMoE
from simmoe.policies.prefetch.set_loader import SetLoader
from simmoe.policies.prefetch.stride import ProMoE, StridePrefetch
from simmoe.policies.prefetch.successor import SuccessorPrefetch
from simmoe.policies.routing.adaptive_k import AdaptiveK
from simmoe.policies.routing.swapmoe import SwapMoE, VirtualExperts

POLICIES = (LRU, OnDemand, Resident, LFU, Belady, StaticPopular, MRS, ARC, AllOnCpu, CpuExperts)
# prefetch and placement (engine-side kinds)
POLICIES += (OraclePrefetch, NextLayerPrefetch, StridePrefetch, SuccessorPrefetch, PregatedPrefetch,
             PregatedSystem, Fiddler, NCpuMoe, HybridSplit, HybriMoE, NearMemory, MoNDE, Quantized, AdaptiveK)
# SwapMoE (virtual experts) and D2MoE (nested bit-widths)
POLICIES += (VirtualExperts, VirtualSetCache, SwapMoE, Matryoshka, D2MoE)
# SE-MoE ring of sections, DAOP, HybriMoE impact prefetch
POLICIES += (FIFO, RingPrefetch, SeMoE, DataAware, Daop, ImpactPrefetch)
# ProMoE: stride prefetch in preemptible chunks
POLICIES += (ProMoE,)
# SwapMoE background loading
POLICIES += (SetLoader,)
