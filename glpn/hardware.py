"""What the machine can do: CPU instruction sets, the GPU, optional packages, the C allocator.

Facts only; the policy that uses them (which backend `auto` picks, what is refused) is in
planning.py and in each backend's `unavailable` (glpn/backends/).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import logging
import os
import platform
import threading
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuFeatures:
    name: str  # model name as the OS reports it
    flags: frozenset[str]  # /proc/cpuinfo flags (Linux); a few probed through torch elsewhere

    @property
    def native_bf16(self) -> bool:
        """bf16 matrix math in hardware (AVX512-BF16 or AMX-BF16): bf16 is then the fast path."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def native_fp16(self) -> bool:
        """fp16 arithmetic in hardware (AVX512-FP16 or AMX-FP16); elsewhere torch emulates it."""
        return bool({"avx512_fp16", "amx_fp16"} & self.flags)

    def summary(self) -> str:
        wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")
        have = [f for f in wanted if f in self.flags]
        return f"{self.name} ({', '.join(have) or 'no AVX2'})"


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name in ("", platform.machine(), platform.processor()):
                    name = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break  # the first core's flags describe them all
    except OSError:  # not Linux: ask torch's own probes
        probes = {
            "avx2": "_is_avx2_supported",
            "avx512f": "_is_avx512_supported",
            "avx512_bf16": "_is_avx512_bf16_supported",
            "amx_bf16": "_is_amx_tile_supported",
            "amx_fp16": "_is_amx_fp16_supported",
        }
        for flag, fn in probes.items():
            probe = getattr(torch.cpu, fn, None)
            if probe is not None and probe():
                flags.add(flag)
    return CpuFeatures(name=name or "unknown CPU", flags=frozenset(flags))


def gpu_description(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3 (sm_90)' for a CUDA device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None when it is not importable."""
    module = name.replace("-", "_")
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc mallopt parameters
_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process heap (glibc): one arena, no mmap for large blocks, no trim.

    Per frame, inference allocates and frees tens of large activation buffers. By default glibc
    returns each one to the OS and the next frame page-faults it back in: measured 20-30% of CPU
    inference time for the small model at 480x640. Process-wide; call it at program start, before
    any thread has allocated: before the first torch op (OpenMP workers), cv2 call or zmq.Context.
    A thread that allocated earlier got its own malloc arena, and glibc keeps handing such arenas
    to new threads (reused round robin, and those of exited threads first). In a secondary arena
    a block over 64 MB is always a fresh mmap, so the inference thread page-faults its largest
    activations in again on every call (measured: 40k faults and +35% time per 480x640 frame of
    the small model). Where the program cannot call this first, start Python with
    GLIBC_TUNABLES=glibc.malloc.arena_max=1, which holds from the process's start.
    pipeline.InferenceStage warns when a running engine page-faults like that. Returns whether
    the settings were applied (False where the C library is not glibc). Peak memory stays reserved.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if platform.system() != "Linux" or os.environ.get("DEPTHSTREAM_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(
            libc.mallopt(param, value) == 1
            for param, value in (
                (_M_ARENA_MAX, 1),
                (_M_MMAP_MAX, 0),
                (_M_TRIM_THRESHOLD, 1 << 30),
            )
        )
    except (OSError, AttributeError):
        return False
    _allocator_tuned = ok
    if ok and threading.current_thread() is not threading.main_thread():
        log.debug("allocator tuned from a worker thread: threads that already allocate keep theirs")
    return ok


def thread_page_faults() -> int | None:
    """Minor page faults of the calling thread so far (Linux), None where unknown."""
    try:
        import resource  # POSIX only

        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    except (ImportError, AttributeError, OSError):  # RUSAGE_THREAD is Linux only
        return None
