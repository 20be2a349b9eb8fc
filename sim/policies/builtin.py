"""The built-in policies, registered through the `simmoe.policies` entry point like any plug-in.

To add a built-in: write its module (one file per policy; named systems in systems/) and list its class here.
"""

from simmoe.policies.cache.arc import ARC
from simmoe.policies.cache.belady import Belady
from simmoe.policies.cache.data_aware import DataAware
from simmoe.policies.cache.fifo import FIFO
from simmoe.policies.cache.lfu import LFU
from simmoe.policies.cache.lru import LRU
from simmoe.policies.cache.mrs import MRS
from simmoe.policies.cache.ondemand import OnDemand
from simmoe.policies.cache.resident import Resident
from simmoe.policies.cache.static_popular import StaticPopular
from simmoe.policies.cache.virtual_set import VirtualSetCache
from simmoe.policies.placement.cpu_experts import AllOnCpu
from simmoe.policies.placement.fiddler import Fiddler
from simmoe.policies.placement.hybrid_split import HybridSplit
from simmoe.policies.placement.n_cpu_moe import NCpuMoe
from simmoe.policies.placement.near_memory import NearMemory
from simmoe.policies.precision.matryoshka import Matryoshka
from simmoe.policies.precision.quantized import Quantized
from simmoe.policies.prefetch.impact import ImpactPrefetch
from simmoe.policies.prefetch.next_layer import NextLayerPrefetch
from simmoe.policies.prefetch.oracle import OraclePrefetch
from simmoe.policies.prefetch.pregated import PregatedPrefetch
from simmoe.policies.prefetch.ring import RingPrefetch
from simmoe.policies.prefetch.set_loader import SetLoader
from simmoe.policies.prefetch.stride import StridePrefetch
from simmoe.policies.prefetch.successor import SuccessorPrefetch
from simmoe.policies.routing.adaptive_k import AdaptiveK
from simmoe.policies.routing.swapmoe import VirtualExperts
from simmoe.policies.systems.cpu_experts import CpuExperts
from simmoe.policies.systems.d2moe import D2MoE
from simmoe.policies.systems.daop import Daop
from simmoe.policies.systems.hybrimoe import HybriMoE
from simmoe.policies.systems.monde import MoNDE
from simmoe.policies.systems.pregated_moe import PregatedSystem
from simmoe.policies.systems.promoe import ProMoE
from simmoe.policies.systems.runtimes import (
    DeepSpeedZero3,
    FiddlerSystem,
    HfAccelerate,
    KTransformers,
    LlamaCpp,
    MixtralOffloading,
    Vllm,
)
from simmoe.policies.systems.se_moe import SeMoE
from simmoe.policies.systems.swapmoe import SwapMoE

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
# systems on a bundled runtime profile
POLICIES += (MixtralOffloading, HfAccelerate, DeepSpeedZero3, LlamaCpp, Vllm, KTransformers, FiddlerSystem)
