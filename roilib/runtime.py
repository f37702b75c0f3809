"""Where a script runs: the device, the precision, and the processes of a run (torchrun).

Several processes of one run: the collective steps Train.py takes together so that an error
on any process stops them all promptly. The rule: work that can fail on one process alone
runs inside ``dist.together()``; at its end every process learns whether any failed, and if
one did, all stop: the first failing process raises its own error (printed once), the others
raise StopRun. Collectives (DDP's gradient all-reduce, gathers) stay outside such sections,
so no process waits in one for a peer that has already failed.
"""
import contextlib
import datetime
import os

import torch
import torch.distributed as tdist

from roilib.errors import BadValue, StopRun


def cpu_supports_bf16():
    """True where the CPU runs bf16 matrix work natively (AVX512-BF16 or AMX); elsewhere bf16
    autocast is emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(name="auto", local_rank=0):
    """'auto' -> this process's GPU if there is one, else the CPU; 'cuda' without a GPU, or a
    device this project does not run on -> BadValue (the script names its parameter)."""
    if name in ("auto", "", None):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise BadValue("expected auto, cpu, cuda or cuda:N", device=name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadValue("no CUDA GPU is visible to PyTorch here; use {device}=cpu", device=name)
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        if device.index >= torch.cuda.device_count():
            raise BadValue(f"there is no GPU {device.index} (this machine has {torch.cuda.device_count()})",
                           device=name)
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


# Long enough for the slowest collective wait: rank 0 writing a ResNet-152 checkpoint to a
# slow network disk, or the validation shards finishing at different times.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


class Distributed:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) or a single process."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        self.cpu_group = None   # gloo: stop flags and Python objects, without a GPU sync

    @property
    def is_main(self):
        return self.rank == 0

    def start(self, device):
        if self.enabled and not tdist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                     timeout=COLLECTIVE_TIMEOUT)
            self.cpu_group = (tdist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
                              if device.type == "cuda" else tdist.group.WORLD)

    def stop(self):
        if self.enabled and tdist.is_initialized():
            tdist.destroy_process_group()

    @contextlib.contextmanager
    def together(self):
        """Run a section that may fail on some processes only; all processes leave it alike:
        all go on, or all raise (see the module's docstring). A collective itself."""
        error = None
        try:
            yield
        except Exception as caught:   # noqa: BLE001 (re-raised below, on every process)
            error = caught
        self.agree(error)

    def agree(self, error=None):
        """Collective: raise `error` on the first process that has one, StopRun on the rest;
        return if none has."""
        if not self.enabled:
            if error is not None:
                raise error
            return
        failed = torch.zeros(self.world_size, dtype=torch.int32)
        failed[self.rank] = error is not None
        tdist.all_reduce(failed, group=self.cpu_group)
        ranks = failed.nonzero().flatten().tolist()
        if not ranks:
            return
        if self.rank == ranks[0]:
            raise error
        raise StopRun(f"stopped: process {ranks[0]} of {self.world_size} failed and printed why",
                      show=self.is_main)

    def share_buffers(self, model):
        """Rank 0's buffers (BatchNorm running statistics) on every process. DDP broadcasts
        them before each forward, so the last training step leaves each process with its own:
        a sharded validation must use the statistics of the model rank 0 saves."""
        if self.enabled:
            for buffer in model.buffers():
                tdist.broadcast(buffer, 0)

    def sum(self, values):
        if self.enabled:
            tdist.all_reduce(values)
        return values

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every process (picklable objects)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        tdist.all_gather_object(out, obj, group=self.cpu_group)
        return out
