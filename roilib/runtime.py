"""Device and precision set-up shared by the scripts (several processes: roilib.distributed)."""
import contextlib

import torch

from roilib.errors import UserError


def cpu_supports_bf16():
    """True where the CPU runs bf16 matrix work natively (AVX512-BF16 or AMX); elsewhere bf16
    autocast is emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(name="auto", local_rank=0, setting="device"):
    """'auto' -> this process's GPU if there is one, else the CPU; 'cuda' without a GPU -> error
    naming the caller's `setting` (a script's parameter, or the API's keyword)."""
    if name in ("auto", "", None):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise UserError(f"{setting}={name}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{setting}={name}: no CUDA GPU is visible to PyTorch here; use {setting}=cpu")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        if device.index >= torch.cuda.device_count():
            raise UserError(f"{setting}={name}: there is no GPU {device.index} "
                            f"(this machine has {torch.cuda.device_count()})")
    return device


def amp_dtype(device, enabled=True):
    """The autocast dtype for `device`, or None for float32: bf16 on GPUs that have it (fp16
    otherwise), bf16 on CPUs with native bf16, float32 on other CPUs."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_name(dtype):
    return {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
