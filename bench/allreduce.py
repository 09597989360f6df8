"""PyTorch's own Gloo all-reduce on this machine, for BENCHMARKS.md's comparison with ours.

    bench/.venv/bin/torchrun --nproc-per-node 2 bench/allreduce.py 4030000 53100000

Prints, on rank 0, the median milliseconds of an all-reduce (SUM, then divided, as DDP does) of a
float32 buffer of each size given, on 1 thread per rank.
"""
import statistics
import sys
import time

import torch
import torch.distributed as dist

torch.set_num_threads(1)
dist.init_process_group("gloo")
for n in map(int, sys.argv[1:]):
    t = torch.rand(n)
    dist.all_reduce(t)
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        dist.all_reduce(t)
        t.div_(dist.get_world_size())
        samples.append((time.perf_counter() - t0) * 1e3)
    if dist.get_rank() == 0:
        ms = statistics.median(samples)
        mb = n * 4 / 1e6
        print(f"{n / 1e6:.2f}M floats ({mb:.1f} MB): {ms:.2f} ms = {mb / ms:.2f} GB/s algorithm")
dist.destroy_process_group()
