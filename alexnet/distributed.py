"""One distributed path: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; we start a process group and wrap
the model in DistributedDataParallel. Without those variables everything runs as a single process.

    torchrun --nproc_per_node=8 train.py ...                                  # one machine, 8 GPUs
    torchrun --nnodes=2 --node_rank=R --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
             --nproc_per_node=8 train.py ...                                  # several machines
"""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from alexnet.cpu import tune_allocator
from alexnet.errors import UserError

# A rank that dies leaves the others blocked in a collective; this bounds the wait so they exit with an
# error instead of hanging (torchrun then tears the group down). Generous: first steps may compile.
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("ALEXNET_DIST_TIMEOUT_MIN", "10")))


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False     # started by torchrun (its rendezvous variables are set), even with one process

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        """A process group and DDP: several ranks, or any torchrun launch (one rank still runs NCCL / gloo)."""
        return self.world_size > 1 or self.launched


def resolve_device(name, local_rank=0):
    """"auto" | "cpu" | "cuda" -> torch.device; under torchrun each rank takes GPU LOCAL_RANK.

    On the CPU it also tunes glibc's allocator for large short-lived tensors (`alexnet.cpu`); on CUDA it lets
    cuDNN time its convolution algorithms once per shape and keep the fastest (the shapes never change),
    unless torch.backends.cudnn.deterministic asks for reproducible kernels.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda but no CUDA device is visible; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs; "
                            "lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
        torch.backends.cudnn.benchmark = not torch.backends.cudnn.deterministic
        return torch.device("cuda", local_rank)
    tune_allocator()
    return torch.device("cpu")


def init_distributed(device_name="auto"):
    """Read the torchrun environment, pick the device, start the process group (nccl on CUDA, gloo on CPU).

    Returns (DistInfo, torch.device).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    launched = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")), launched)
    device = resolve_device(device_name, info.local_rank)
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=TIMEOUT, **kwargs)
    return info, device


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized():
    return dist.is_available() and dist.is_initialized()


def barrier():
    if is_initialized():
        dist.barrier()


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...]; [obj] in a single process."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_max(values, device):
    """Element-wise max over ranks of a list of floats (used for stop flags)."""
    if not is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def wrap_ddp(model, device):
    """DistributedDataParallel around `model` when running under torchrun; the model itself otherwise."""
    if not is_initialized():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def per_rank_batch(global_batch, world_size):
    """optim.batch_size is the global batch (Sec. 5: 128 images per step over all GPUs)."""
    if global_batch % world_size:
        raise UserError(f"optim.batch_size={global_batch} is not divisible by the {world_size} ranks; "
                        f"use a multiple of {world_size}")
    return global_batch // world_size
