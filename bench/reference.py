#!/usr/bin/env python3
"""The PyTorch side of the side-by-side benchmark: the reference StarGAN training step, timed.

The networks and the training step follow the paper (Choi et al., CVPR 2018) and the authors'
implementation (yunjey/stargan, ``model.py`` and the current ``solver.py``), rewritten here so that
the benchmark depends on nothing but torch. What is timed is what a user of the reference runs:

  d_step      one D update: D(x_real), G(x_real, c_trg), D(x_fake), D(x_hat) and the gradient
              penalty's double backward, one combined loss, one backward, one Adam step, and the
              four ``.item()`` calls the reference makes for its log every iteration.
  g_step      one G update: G(x_real, c_trg) recomputed, D(x_fake), G(x_fake, c_org), one backward,
              one Adam step, three ``.item()`` calls.
  iteration   the reference loop at n_critic (default 5): n_critic D steps and one G step, the
              label permutation and host-to-device copies included; reported per iteration (the
              time of the n_critic iterations divided by n_critic).
  translate   the reference test loop on one batch under ``torch.no_grad()``: the c_dim
              ``create_labels`` targets, G(x, c) for each, the concatenation, the copy to the host
              and ``denorm`` (the image file write is not timed).

Each result is one JSON object on stdout. Other modes: ``--flops`` (analytical forward FLOPs of G
and D, optionally the FLOPs PyTorch executes per step with ``--count-flops``) and ``--sgemm N`` (an
N x N matmul, to calibrate the machine's practical peak). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# The reference's defaults (main.py): loss weights, Adam settings, CelebA attributes.
LAMBDA_CLS = 1.0
LAMBDA_REC = 10.0
LAMBDA_GP = 10.0
G_LR = 1e-4
D_LR = 1e-4
BETAS = (0.5, 0.999)
SELECTED_ATTRS = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]
HAIR_COLORS = {"Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"}
WHATS = ("d_step", "g_step", "iteration", "translate", "loader", "faces")


# --------------------------------------------------------------------------------------------- #
#                                            Networks                                           #
# --------------------------------------------------------------------------------------------- #
# Module layout (and so the state_dict keys: main.0.weight, main.3.main.1.running_mean, conv1,
# conv2) is the reference's, so that a reference checkpoint loads into these modules unchanged.


def _inorm(dim: int) -> nn.InstanceNorm2d:
    # The reference uses affine instance norm that also tracks running statistics. It never calls
    # .eval(), so the running statistics are updated but never used (train mode throughout).
    return nn.InstanceNorm2d(dim, affine=True, track_running_stats=True)


class ResidualBlock(nn.Module):
    """x + IN(conv3x3(ReLU(IN(conv3x3(x)))))."""

    def __init__(self, dim: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False), _inorm(dim), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False), _inorm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class Generator(nn.Module):
    """7x7 stem, two stride-2 down-samplings, repeat_num residual blocks, two stride-2 transposed
    convolutions, 7x7 output conv and tanh. The target label is tiled over the image and
    concatenated to it as c_dim extra input channels."""

    def __init__(self, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False), _inorm(conv_dim), nn.ReLU(inplace=True),
        ]
        dim = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1, bias=False), _inorm(dim * 2), nn.ReLU(inplace=True)]
            dim *= 2
        layers += [ResidualBlock(dim) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(dim, dim // 2, 4, 2, 1, bias=False), _inorm(dim // 2),
                       nn.ReLU(inplace=True)]
            dim //= 2
        layers += [nn.Conv2d(dim, 3, 7, 1, 3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = c.view(c.size(0), c.size(1), 1, 1).repeat(1, 1, x.size(2), x.size(3))
        return self.main(torch.cat([x, c], dim=1))


class Discriminator(nn.Module):
    """PatchGAN: repeat_num stride-2 4x4 convs with LeakyReLU(0.01), then two heads: a 3x3 conv
    to one real/fake map (src) and a conv over the whole remaining map to c_dim logits (cls)."""

    def __init__(self, image_size: int = 128, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)]
        dim = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
            dim *= 2
        kernel_size = image_size // 2**repeat_num
        self.main = nn.Sequential(*layers)
        self.conv1 = nn.Conv2d(dim, 1, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(dim, c_dim, kernel_size, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.main(x)
        out_cls = self.conv2(h)
        return self.conv1(h), out_cls.view(out_cls.size(0), out_cls.size(1))


# --------------------------------------------------------------------------------------------- #
#                                     The reference's solver                                    #
# --------------------------------------------------------------------------------------------- #


class Reference:
    """G, D, their Adam optimisers and the reference's steps on one fixed random CelebA-like batch."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args = args
        self.device = device
        self.c_dim = args.c_dim
        self.n_critic = args.n_critic
        seed_everything(args.seed)
        self.G = Generator(args.g_conv_dim, args.c_dim, args.g_repeat_num).to(device)
        self.D = Discriminator(args.image_size, args.d_conv_dim, args.c_dim, args.d_repeat_num).to(device)
        self.g_optimizer = torch.optim.Adam(self.G.parameters(), G_LR, BETAS)
        self.d_optimizer = torch.optim.Adam(self.D.parameters(), D_LR, BETAS)
        # The data stand in for the loader's output: host tensors, images in [-1, 1], 0/1 CelebA
        # attribute labels. Created once; the loader is benchmarked separately.
        n, s = args.batch_size, args.image_size
        self.x_host = torch.rand(n, 3, s, s) * 2 - 1
        self.label_host = (torch.rand(n, args.c_dim) < 0.5).float()
        # Hair-colour attributes are exclusive in create_labels. With the default attributes
        # these are the first three; for another c_dim, the first min(3, c_dim) play that role.
        attrs = SELECTED_ATTRS[: args.c_dim] + [f"attr{i}" for i in range(len(SELECTED_ATTRS), args.c_dim)]
        self.hair_color_indices = [i for i, a in enumerate(attrs) if a in HAIR_COLORS]
        self.losses: dict[str, float] = {}

    # ----- helpers with the reference's semantics --------------------------------------------- #

    def autocast(self):
        """bf16: autocast around the forward passes and losses, as torch.amp recommends; fp32: nothing."""
        if self.args.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def reset_grad(self) -> None:
        self.g_optimizer.zero_grad()
        self.d_optimizer.zero_grad()

    @staticmethod
    def denorm(x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2).clamp_(0, 1)

    @staticmethod
    def classification_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # CelebA: summed binary cross-entropy over attributes, averaged over the batch.
        return F.binary_cross_entropy_with_logits(logit, target, reduction="sum") / logit.size(0)

    def gradient_penalty(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """mean((||dy/dx||_2 - 1)^2), with a graph through dy/dx for the double backward.

        bf16: autograd.grad is a backward pass, so (as torch.amp advises) it runs outside autocast;
        its ops still run in bf16 because they replay the bf16 forward's saved tensors. Only the
        norm is computed in autocast. The double backward through bf16 convolutions was tested and
        works on CPU, so the penalty's D forward is not forced to fp32.
        """
        weight = torch.ones(y.size(), device=self.device)
        dydx = torch.autograd.grad(outputs=y, inputs=x, grad_outputs=weight,
                                   retain_graph=True, create_graph=True, only_inputs=True)[0]
        with self.autocast():
            dydx = dydx.view(dydx.size(0), -1)
            dydx_l2norm = torch.sqrt(torch.sum(dydx**2, dim=1))
            return torch.mean((dydx_l2norm - 1) ** 2)

    def create_labels(self, c_org: torch.Tensor) -> list[torch.Tensor]:
        """The reference's CelebA test targets: for each attribute, set that hair colour (and clear
        the others) or flip the attribute. Built on the host, then copied, as the reference does."""
        c_trg_list = []
        for i in range(self.c_dim):
            c_trg = c_org.clone()
            if i in self.hair_color_indices:
                c_trg[:, i] = 1
                for j in self.hair_color_indices:
                    if j != i:
                        c_trg[:, j] = 0
            else:
                c_trg[:, i] = c_trg[:, i] == 0
            c_trg_list.append(c_trg.to(self.device))
        return c_trg_list

    # ----- the training loop's parts ---------------------------------------------------------- #

    def preprocess(self) -> dict[str, torch.Tensor]:
        """Section 1 of the reference loop: random target labels (a permutation of the batch's own)
        and the copies to the device (no-ops on the CPU)."""
        label_org = self.label_host
        rand_idx = torch.randperm(label_org.size(0))
        label_trg = label_org[rand_idx]
        c_org, c_trg = label_org.clone(), label_trg.clone()
        return {
            "x_real": self.x_host.to(self.device),
            "c_org": c_org.to(self.device),
            "c_trg": c_trg.to(self.device),
            "label_org": label_org.to(self.device),
            "label_trg": label_trg.to(self.device),
        }

    def d_step(self, b: dict[str, torch.Tensor]) -> None:
        """Section 2: one combined D loss, one backward, one Adam step (current master solver)."""
        x_real = b["x_real"]
        with self.autocast():
            out_src, out_cls = self.D(x_real)
            d_loss_real = -torch.mean(out_src)
            d_loss_cls = self.classification_loss(out_cls, b["label_org"])

            x_fake = self.G(x_real, b["c_trg"])
            out_src, _ = self.D(x_fake.detach())
            d_loss_fake = torch.mean(out_src)

            # alpha is drawn on the host and copied, as in the reference.
            alpha = torch.rand(x_real.size(0), 1, 1, 1).to(self.device)
            x_hat = (alpha * x_real.data + (1 - alpha) * x_fake.data).requires_grad_(True)
            out_src, _ = self.D(x_hat)
        d_loss_gp = self.gradient_penalty(out_src, x_hat)

        with self.autocast():
            d_loss = d_loss_real + d_loss_fake + LAMBDA_CLS * d_loss_cls + LAMBDA_GP * d_loss_gp
        self.reset_grad()
        d_loss.backward()
        self.d_optimizer.step()

        # The reference reads every loss back for its log dict every iteration (not only when it
        # prints): on CUDA each .item() is a device synchronisation, so it belongs in the timing.
        self.losses = {
            "D/loss_real": d_loss_real.item(),
            "D/loss_fake": d_loss_fake.item(),
            "D/loss_cls": d_loss_cls.item(),
            "D/loss_gp": d_loss_gp.item(),
        }

    def g_step(self, b: dict[str, torch.Tensor]) -> None:
        """Section 3: the G update. x_fake is recomputed with a fresh G forward, exactly as the
        reference does, although G has not changed since the D step's x_fake (reusing that one
        would save a forward; the benchmark keeps the reference's cost)."""
        x_real = b["x_real"]
        with self.autocast():
            # Original-to-target domain.
            x_fake = self.G(x_real, b["c_trg"])
            out_src, out_cls = self.D(x_fake)
            g_loss_fake = -torch.mean(out_src)
            g_loss_cls = self.classification_loss(out_cls, b["label_trg"])
            # Target-to-original domain.
            x_reconst = self.G(x_fake, b["c_org"])
            g_loss_rec = torch.mean(torch.abs(x_real - x_reconst))
            g_loss = g_loss_fake + LAMBDA_REC * g_loss_rec + LAMBDA_CLS * g_loss_cls
        self.reset_grad()
        g_loss.backward()
        self.g_optimizer.step()
        self.losses.update({
            "G/loss_fake": g_loss_fake.item(),
            "G/loss_rec": g_loss_rec.item(),
            "G/loss_cls": g_loss_cls.item(),
        })

    def iterations(self) -> None:
        """n_critic iterations of the reference loop, so that the last one trains G. The loop's
        periodic work (printing every log_step, sampling, checkpoints, lr decay) is left out."""
        for i in range(self.n_critic):
            b = self.preprocess()
            self.d_step(b)
            if (i + 1) % self.n_critic == 0:
                self.g_step(b)

    def translate(self) -> torch.Tensor:
        """One batch of the reference's test(): G stays in train mode, as there (no .eval())."""
        with torch.no_grad():
            x_real = self.x_host.to(self.device)
            c_trg_list = self.create_labels(self.label_host)
            with self.autocast():
                x_fake_list = [x_real]
                for c_trg in c_trg_list:
                    x_fake_list.append(self.G(x_real, c_trg))
                x_concat = torch.cat(x_fake_list, dim=3)
            # The reference copies to the host first and denormalises there; save_image follows.
            return self.denorm(x_concat.data.cpu())


# --------------------------------------------------------------------------------------------- #
#                                             Timing                                            #
# --------------------------------------------------------------------------------------------- #


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    # Writing 5 to clear_refs resets the kernel's peak-RSS mark, which ru_maxrss reports, so the
    # peak is per measurement rather than per process. Where that is not allowed the peak is the
    # process's so far; "peak_rss_scope" says which.
    global _RSS_SCOPE
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _RSS_SCOPE = "measurement"
    except OSError:
        _RSS_SCOPE = "process"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


_RSS_SCOPE = "process"


def peak_memory(device: torch.device) -> dict:
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    out = {"peak_rss_mb": round(rss_kb / 1024, 1), "peak_rss_scope": _RSS_SCOPE,
           "peak_cuda_allocated_mb": None, "peak_cuda_reserved_mb": None}
    if device.type == "cuda":
        out["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["peak_cuda_reserved_mb"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return out


class ConvDtypes:
    """Records the dtype of every convolution's output while installed (to check that bf16 runs
    in bf16). Installed for the first call only, so it does not touch the timed samples."""

    def __init__(self, *modules: nn.Module):
        self.seen: set[str] = set()
        self.handles = [m.register_forward_hook(self._hook) for net in modules for m in net.modules()
                        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]

    def _hook(self, _module, _inputs, output) -> None:
        self.seen.add(str(output.dtype).replace("torch.", ""))

    def remove(self) -> list[str]:
        for h in self.handles:
            h.remove()
        return sorted(self.seen)


def time_calls(fn, device: torch.device, warmup: int, iters: int, per: int = 1,
               probe: ConvDtypes | None = None) -> tuple[list[float], list[str] | None]:
    """Milliseconds per call of fn (divided by `per`), after `warmup` untimed calls."""
    dtypes = None
    for k in range(warmup):
        fn()
        if k == 0 and probe is not None:
            dtypes = probe.remove()
            probe = None
    sync(device)
    samples = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append((time.perf_counter() - t0) * 1e3 / per)
        if probe is not None:  # warmup == 0: the probe rode on the first sample
            dtypes = probe.remove()
            probe = None
    return samples, dtypes


def summary(samples: list[float]) -> dict:
    return {
        "median_ms": round(statistics.median(samples), 3) if samples else None,
        "min_ms": round(min(samples), 3) if samples else None,
        "max_ms": round(max(samples), 3) if samples else None,
        "mean_ms": round(statistics.fmean(samples), 3) if samples else None,
        "samples": [round(s, 3) for s in samples],
    }


def common_fields(args: argparse.Namespace, device: torch.device) -> dict:
    f = {
        "impl": "pytorch",
        "threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": device_name(device),
        "precision": args.precision,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "g_conv_dim": args.g_conv_dim,
        "d_conv_dim": args.d_conv_dim,
        "g_repeat_num": args.g_repeat_num,
        "d_repeat_num": args.d_repeat_num,
        "c_dim": args.c_dim,
        "n_critic": args.n_critic,
        "warmup": args.warmup,
        "iters": args.iters,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        # Defaults a reference user gets (fp32 convolutions may run in TF32 on cuDNN), and the
        # reference's main.py turns cudnn.benchmark on.
        f["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        f["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        f["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return f


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def bench_loader(args: argparse.Namespace) -> dict:
    """The reference's per-image CelebA transform (PIL decode, CenterCrop(178), Resize(image_size)
    bilinear, ToTensor, Normalize(0.5, 0.5)) over every JPEG of --image-dir, in one process, as its
    DataLoader worker does it. One sample = one pass over the folder; reported as ms per image."""
    import numpy as np
    from PIL import Image

    files = sorted(os.path.join(args.image_dir, f) for f in os.listdir(args.image_dir) if f.endswith(".jpg"))
    crop, size = args.crop_size, args.image_size

    def one(path):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
        img = img.crop((left, top, left + crop, top + crop)).resize((size, size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
        return x.sub_(0.5).div_(0.5)

    def run():
        for f in files:
            one(f)

    samples = []
    for i in range(args.warmup + args.iters):
        t = time.perf_counter()
        run()
        if i >= args.warmup:
            samples.append((time.perf_counter() - t) * 1e3 / len(files))
    out = {"impl": "pytorch", "what": "loader", **summary(samples), "images": len(files)}
    out.update(common_fields(args, torch.device("cpu")))
    return out


def bench_faces(args: argparse.Namespace, device: torch.device) -> dict:
    """facenet-pytorch 2.6.0's MTCNN on --image-dir/photo-1024x768.png: detect with landmarks, then
    cut out every face (extract_face, its crop-and-resize to 160 px), as `MTCNN(keep_all=True)`
    does for a photo. stargan bench times its own detection + CelebA alignment on the same file."""
    from PIL import Image
    from facenet_pytorch import MTCNN, extract_face

    img = Image.open(os.path.join(args.image_dir, "photo-1024x768.png")).convert("RGB")
    mtcnn = MTCNN(keep_all=True, device=device)

    def run():
        boxes, _, _ = mtcnn.detect(img, landmarks=True)
        for box in boxes if boxes is not None else []:
            extract_face(img, box, image_size=160)

    reset_peak_memory(device)
    samples, _ = time_calls(run, device, args.warmup, args.iters)
    out = {"impl": "pytorch", "what": "faces", **summary(samples)}
    out.update(common_fields(args, device))
    out.update(peak_memory(device))
    return out


def bench_one(what: str, args: argparse.Namespace, device: torch.device) -> dict:
    if what == "loader":
        return bench_loader(args)
    if what == "faces":
        return bench_faces(args, device)
    ref = Reference(args, device)  # fresh, identically seeded networks for every measurement
    batch = ref.preprocess()
    per = 1
    if what == "d_step":
        fn = lambda: ref.d_step(batch)  # noqa: E731
    elif what == "g_step":
        fn = lambda: ref.g_step(batch)  # noqa: E731
    elif what == "iteration":
        fn, per = ref.iterations, ref.n_critic
    elif what == "translate":
        fn = ref.translate
    else:
        raise ValueError(what)
    sync(device)
    reset_peak_memory(device)
    samples, dtypes = time_calls(fn, device, args.warmup, args.iters, per, ConvDtypes(ref.G, ref.D))
    out = {"impl": "pytorch", "what": what, **summary(samples)}
    out.update(common_fields(args, device))
    out["conv_output_dtypes"] = dtypes
    out.update(peak_memory(device))
    if what == "iteration":
        out["note"] = f"per iteration: {args.n_critic} D steps + 1 G step, divided by {args.n_critic}"
    if args.precision == "bf16" and dtypes is not None and dtypes != ["bfloat16"]:
        print(f"warning: {what}: convolutions ran in {dtypes}, not bfloat16", file=sys.stderr)
    return out


# --------------------------------------------------------------------------------------------- #
#                                  FLOPs and the matmul calibration                             #
# --------------------------------------------------------------------------------------------- #


def _out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def conv_flops(cin: int, cout: int, k: int, hw_out: int) -> int:
    """2 x multiply-adds of a k x k convolution (bias not counted), per image."""
    return 2 * cin * cout * k * k * hw_out * hw_out


def convT_flops(cin: int, cout: int, k: int, hw_in: int) -> int:
    """2 x multiply-adds of a k x k transposed convolution: every input pixel scatters into k x k
    outputs of every output channel."""
    return 2 * cin * cout * k * k * hw_in * hw_in


def g_forward_flops(image_size: int, conv_dim: int, c_dim: int, repeat_num: int) -> int:
    s, dim = image_size, conv_dim
    total = conv_flops(3 + c_dim, dim, 7, _out(s, 7, 1, 3))
    s = _out(s, 7, 1, 3)
    for _ in range(2):
        s = _out(s, 4, 2, 1)
        total += conv_flops(dim, dim * 2, 4, s)
        dim *= 2
    total += repeat_num * 2 * conv_flops(dim, dim, 3, _out(s, 3, 1, 1))
    for _ in range(2):
        total += convT_flops(dim, dim // 2, 4, s)
        s = (s - 1) * 2 - 2 + 4
        dim //= 2
    total += conv_flops(dim, 3, 7, _out(s, 7, 1, 3))
    return total


def d_forward_flops(image_size: int, conv_dim: int, c_dim: int, repeat_num: int) -> int:
    s, cin, dim, total = image_size, 3, conv_dim, 0
    for _ in range(repeat_num):
        s = _out(s, 4, 2, 1)
        total += conv_flops(cin, dim, 4, s)
        cin, dim = dim, dim * 2
    k = image_size // 2**repeat_num
    total += conv_flops(cin, 1, 3, _out(s, 3, 1, 1))  # src head
    total += conv_flops(cin, c_dim, k, _out(s, k, 1, 0))  # cls head
    return total


def flops_report(args: argparse.Namespace, device: torch.device) -> dict:
    g = g_forward_flops(args.image_size, args.g_conv_dim, args.c_dim, args.g_repeat_num)
    d = d_forward_flops(args.image_size, args.d_conv_dim, args.c_dim, args.d_repeat_num)
    n = args.batch_size
    out = {
        "impl": "pytorch", "what": "flops",
        "counting": "convolution and transposed-convolution multiply-adds x 2, bias and "
                    "elementwise ops not counted",
        "g_forward_flops_per_image": g,
        "d_forward_flops_per_image": d,
        "g_forward_flops": g * n,
        "d_forward_flops": d * n,
        "image_size": args.image_size, "batch_size": n,
        "g_conv_dim": args.g_conv_dim, "d_conv_dim": args.d_conv_dim,
        "g_repeat_num": args.g_repeat_num, "d_repeat_num": args.d_repeat_num,
        "c_dim": args.c_dim, "n_critic": args.n_critic,
        "torch": torch.__version__,
    }
    if args.count_flops:
        out["executed_flops"] = executed_flops(args, device, g, d)
    return out


def executed_flops(args: argparse.Namespace, device: torch.device, g: int, d: int) -> dict:
    """The FLOPs PyTorch actually executes per step (convolutions, their backward, the penalty's
    double backward, matmuls), counted with torch.utils.flop_counter's formulas on one batch-1 step
    and scaled by the batch size (every counted op is linear in the batch). Cross-checks the
    analytical forward counts."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    # FlopCounterMode itself cannot be used: its module tracker hooks the backward and then
    # refuses autograd.grad on a leaf (the gradient penalty's x_hat). This is its counting part.
    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

    one = argparse.Namespace(**{**vars(args), "batch_size": 1})
    ref = Reference(one, device)
    b = ref.preprocess()

    def count(fn) -> int:
        with Count() as c:
            fn()
        return c.total

    with torch.no_grad():
        g_fwd = count(lambda: ref.G(b["x_real"], b["c_trg"]))
        d_fwd = count(lambda: ref.D(b["x_real"]))
    if (g_fwd, d_fwd) != (g, d):
        print(f"warning: counted forward FLOPs G {g_fwd} D {d_fwd} differ from the analytical "
              f"G {g} D {d}", file=sys.stderr)
    n = args.batch_size
    d_step = count(lambda: ref.d_step(b)) * n
    g_step = count(lambda: ref.g_step(b)) * n
    return {
        "g_forward": g_fwd * n,
        "d_forward": d_fwd * n,
        "d_step": d_step,
        "g_step": g_step,
        "iteration": (args.n_critic * d_step + g_step) // args.n_critic,
        "translate": count(ref.translate) * n,
    }


def sgemm(args: argparse.Namespace, device: torch.device) -> dict:
    """Time C = A @ B for N x N matrices in the requested precision (fp32 unless --precision bf16)."""
    n = args.sgemm
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    seed_everything(args.seed)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    reset_peak_memory(device)
    samples, _ = time_calls(lambda: torch.mm(a, b, out=c), device, args.warmup, args.iters)
    flop = 2 * n**3
    out = {"impl": "pytorch", "what": "sgemm", "n": n, "dtype": str(dtype).replace("torch.", ""),
           "flop": flop, **summary(samples)}
    out["gflops_median"] = round(flop / (statistics.median(samples) * 1e-3) / 1e9, 2)
    out["gflops_max"] = round(flop / (min(samples) * 1e-3) / 1e9, 2)
    out.update(common_fields(args, device))
    out.update(peak_memory(device))
    for k in ("image_size", "batch_size", "g_conv_dim", "d_conv_dim", "g_repeat_num", "d_repeat_num",
              "c_dim", "n_critic"):
        out.pop(k)
    return out


# --------------------------------------------------------------------------------------------- #
#                                              CLI                                              #
# --------------------------------------------------------------------------------------------- #


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--g-conv-dim", type=int, default=64)
    p.add_argument("--d-conv-dim", type=int, default=64)
    p.add_argument("--g-repeat-num", type=int, default=6)
    p.add_argument("--d-repeat-num", type=int, default=6)
    p.add_argument("--c-dim", type=int, default=5)
    p.add_argument("--n-critic", type=int, default=5)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--what", default=",".join(WHATS),
                   help=f"comma-separated subset of {','.join(WHATS)}")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--image-dir", default=None, help="loader: a folder of JPEGs (178x218 for CelebA)")
    p.add_argument("--crop-size", type=int, default=178, help="loader: centre-crop size")
    p.add_argument("--no-cudnn-benchmark", action="store_true",
                   help="the reference sets cudnn.benchmark = True; this turns it off")
    p.add_argument("--flops", action="store_true",
                   help="print the analytical forward FLOPs of G and D and exit")
    p.add_argument("--count-flops", action="store_true",
                   help="with --flops: also count the FLOPs PyTorch executes per step")
    p.add_argument("--sgemm", type=int, metavar="N", default=None,
                   help="time an N x N matmul and print the achieved GFLOP/s, then exit")
    args = p.parse_args(argv)
    whats = [w.strip() for w in args.what.split(",") if w.strip()]
    bad = [w for w in whats if w not in WHATS]
    if bad:
        p.error(f"--what: unknown {bad}; choose from {list(WHATS)}")
    args.whats = whats
    if args.count_flops and not args.flops:
        p.error("--count-flops needs --flops")
    if args.image_size // 2**args.d_repeat_num < 1:
        p.error("--image-size must be at least 2**d_repeat_num")
    if args.warmup < 0 or args.iters < 1:
        p.error("--warmup must be >= 0 and --iters >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: CUDA is not available")
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark

    if args.flops:
        emit(flops_report(args, device))
        return
    if args.sgemm is not None:
        emit(sgemm(args, device))
        return
    for what in args.whats:
        emit(bench_one(what, args, device))


if __name__ == "__main__":
    main()
