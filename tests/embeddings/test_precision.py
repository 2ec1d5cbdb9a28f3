"""``precision: auto`` on the CPU: bf16 only where the CPU computes it natively.

The detection reads /proc/cpuinfo flags; these tests feed it flag sets of CPUs with and
without AMX / AVX-512 BF16, so they hold on any machine. The cosine check runs bf16 autocast
on this CPU whatever it has (emulated where it lacks bf16: slower, the same numbers).
"""

from __future__ import annotations

import logging
from pathlib import Path

import embedding_test_nets as nets
import numpy as np
import pytest
import torch

from embeddings import LoadedModel, TorchEmbedder, resolve_precision
from embeddings.device import cpu_flags, native_bf16_flags
from embeddings.preprocessing import ArrayPreprocessor

CPU = torch.device("cpu")
SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8".split()
COOPER_LAKE = "fpu sse2 avx2 avx512f avx512_bf16".split()
ICE_LAKE = "fpu sse2 avx2 avx512f avx512_vnni".split()  # AVX-512, but no bf16 in it
EPYC_ZEN2 = "fpu sse2 avx2 fma".split()


@pytest.mark.parametrize(("flags", "expected"), [
    (SAPPHIRE_RAPIDS, torch.bfloat16), (COOPER_LAKE, torch.bfloat16),
    (ICE_LAKE, None), (EPYC_ZEN2, None), ([], None)])
def test_auto_on_the_cpu_picks_bf16_only_with_native_bf16(flags: list[str], expected: object,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    with caplog.at_level(logging.INFO, logger="driftline.embeddings"):
        assert resolve_precision("auto", CPU, cpu_flag_set=flags) is expected
    assert ("bf16 (native bf16" if expected else "fp32 (no AMX") in caplog.text


def test_explicit_precision_overrides_detection() -> None:
    assert resolve_precision("fp32", CPU, cpu_flag_set=SAPPHIRE_RAPIDS) is None
    assert resolve_precision("bf16", CPU, cpu_flag_set=EPYC_ZEN2) is torch.bfloat16


def test_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512_bf16 amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx512_bf16 amx_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx512_bf16", "amx_bf16"}
    assert native_bf16_flags(cpu_flags(info)) == {"avx512_bf16", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_bf16_embeddings_point_the_same_way_as_fp32() -> None:
    model = LoadedModel(nets.digits_cnn(), "state_dict", "t", (), classifier=True)
    x = np.random.default_rng(1).uniform(0, 16, size=(64, 1, 8, 8)).astype(np.float32)
    pre = ArrayPreprocessor((1, 8, 8))
    a = TorchEmbedder(model, pre, device="cpu", precision="fp32").embed(x)
    b = TorchEmbedder(model, pre, device="cpu", precision="bf16").embed(x)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= 0.999, cosine.min()
    assert not np.array_equal(a, b)  # bf16 really ran
