"""Device checks made before any work: a run that asks for a GPU the machine lacks stops at once, with one line
that says what is available (issue "a run never fails silently", item 8)."""

from __future__ import annotations

import os

import torch

from oaml.errors import ConfigError

__all__ = ["available_devices", "check_gpu_count", "cpu_count", "gpu_memory_free", "host_memory_available",
           "resolve_device"]


def cpu_count() -> int:
    """CPU cores this process may use (its affinity mask, e.g. a container's or a SLURM job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_devices() -> str:
    """What this machine offers, e.g. ``"cpu (2 cores); no CUDA (torch 2.13.0+cpu is a CPU-only build)"``."""
    text = f"cpu ({cpu_count()} cores)"
    if torch.cuda.is_available():
        names = [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
        return f"{text}, {', '.join(names)}"
    why = "a CPU-only build" if torch.version.cuda is None else "no CUDA device or driver found"
    return f"{text}; no CUDA (torch {torch.__version__}: {why})"


def resolve_device(spec: str | torch.device, flag: str = "--device") -> torch.device:
    """Parse and check a torch device string: ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ConfigError: naming ``flag``, the value and the available devices, when the device is unknown or absent.
    """
    text = str(spec).strip().lower()
    if text in ("gpu", "cuda:gpu") or text.startswith("gpu:"):
        raise ConfigError(f"{flag} {spec}: unknown device; write cuda or cuda:N for a GPU (available: "
                          f"{available_devices()})")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"{flag} {spec}: unknown device; expected cpu, cuda or cuda:N (available: "
                          f"{available_devices()})") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ConfigError(f"{flag} {spec}: this machine has {count} CUDA device(s); available: "
                              f"{available_devices()}")
    elif device.type != "cpu":
        raise ConfigError(f"{flag} {spec}: unsupported device type {device.type!r}; expected cpu or cuda")
    return device


def check_gpu_count(gpus: int, flag: str = "--gpus") -> None:
    """Check that ``gpus`` CUDA devices exist on this node (0 always passes).

    Raises:
        ConfigError: naming the flag, what was asked and what is available, with the CPU alternative.
    """
    if gpus <= 0:
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < gpus:
        fix = f"use --gpus {count} or fewer" if count else "use --gpus 0 to train on the CPU"
        raise ConfigError(f"{flag} {gpus}: this machine has {count} CUDA device(s) (available: {available_devices()});"
                          f" {fix} (--gpus 0 --num_processes N runs DDP over N CPU processes)")


def host_memory_available() -> int:
    """Bytes of host memory available to new allocations (``MemAvailable`` of ``/proc/meminfo``; elsewhere the free
    physical pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def gpu_memory_free(gpus: int) -> int:
    """The least free memory, in bytes, among the first ``gpus`` CUDA devices (``gpus`` >= 1)."""
    return min(torch.cuda.mem_get_info(i)[0] for i in range(gpus))
