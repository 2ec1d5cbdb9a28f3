"""The loop: strategies, schedule, early stopping, grid, seeds, failure modes, DDP."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from training_test_nets import quick

from training import (
    LabelledRows,
    TrainingDeviceError,
    TrainingDivergedError,
    fit,
    fit_distributed,
    predict,
    split_by_time,
)
from training.loop import _lr_factor
from training.strategies import layer_groups


def accuracy(model: torch.nn.Module, rows: LabelledRows) -> float:
    return float((predict(model, rows.x).argmax(1) == rows.y).mean())


@pytest.fixture(scope="module")
def split(drifted: LabelledRows, reference: LabelledRows):
    return split_by_time(drifted, LabelledRows(reference.x, reference.y))


@pytest.mark.parametrize("strategy", ["head", "gradual", "full", "lora"])
def test_every_strategy_recovers_part_of_the_drift(strategy, champion, split) -> None:
    before = {k: v.clone() for k, v in champion.state_dict().items()}
    result = fit(champion, split, quick(strategy=strategy, epochs=10))
    assert accuracy(result.model, split.holdout) > accuracy(champion, split.holdout) + 0.03
    # the champion is never modified; the challenger has its architecture
    assert all(torch.equal(before[k], v) for k, v in champion.state_dict().items())
    assert set(result.model.state_dict()) == set(before)
    if strategy == "head":
        changed = [k for k, v in result.model.state_dict().items()
                   if not torch.equal(v, before[k])]
        assert changed == ["4.weight", "4.bias"]
        assert result.trainable_parameters == 32 * 2 + 2


def test_gradual_groups_are_top_down(champion) -> None:
    assert layer_groups(champion) == [["4"], ["2"], ["0"]]


def test_warmup_then_cosine() -> None:
    factors = [_lr_factor(s, 100, 10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))


def test_same_seed_same_model_and_grid_choice(champion, split) -> None:
    cfg = quick(lr_grid=(1e-4, 1e-2), epochs=4)
    a, b = fit(champion, split, cfg), fit(champion, split, cfg)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(),
                                                 b.model.state_dict().values(), strict=True))
    assert a.lr == 1e-2 and set(a.grid) == {"0.0001", "0.01"}  # the tiny rate barely moves
    c = fit(champion, split, cfg.replace(seed=1))
    assert not torch.equal(c.model.state_dict()["0.weight"], a.model.state_dict()["0.weight"])


def test_early_stopping_restores_the_best_epoch(champion, split) -> None:
    # a rate far too high for SGD: validation loss gets worse after the first epochs
    result = fit(champion, split, quick(optimizer="sgd", lr_grid=(2.0,), epochs=12,
                                        patience=2, clip_norm=100.0, explode_norm=1e12))
    epochs = [e for e in result.history]
    assert len(epochs) < 12  # stopped early
    assert result.val_loss == min(e.val_loss for e in epochs)
    assert result.best_epoch == 1 + int(np.argmin([e.val_loss for e in epochs]))


def test_non_finite_loss_stops_with_the_step(champion, split) -> None:
    x = split.train.x.copy()
    x[70] = np.nan  # in the second batch of the first epoch (or later)
    bad = type(split)(LabelledRows(x, split.train.y), split.validation, split.holdout, None)
    with pytest.raises(TrainingDivergedError) as info:
        fit(champion, bad, quick(epochs=2))
    assert info.value.reason == "non-finite loss" and info.value.step >= 1


def test_exploding_gradient_stops(champion, split) -> None:
    with pytest.raises(TrainingDivergedError, match="gradient norm") as info:
        fit(champion, split, quick(explode_norm=1e-6))
    assert info.value.step == 1


def test_a_diverging_grid_point_is_skipped(champion, split) -> None:
    result = fit(champion, split, quick(lr_grid=(1e-2, 1e9), epochs=2, explode_norm=1e6))
    assert result.lr == 1e-2
    assert [d["lr"] for d in result.diverged] == [1e9]
    assert result.diverged[0]["step"] > 1


def test_cuda_without_cuda_is_an_error(champion, split) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingDeviceError, match="CUDA is not available"):
        fit(champion, split, quick(device="cuda"))


def test_two_processes_give_the_same_model_as_one(champion, split) -> None:
    one = fit(champion, split, quick(batch_size=64, epochs=3))
    two = fit_distributed(champion, split, quick(batch_size=32, epochs=3, lr_scaling="none"),
                          nproc=2, start_method="fork")
    assert two.world_size == 2 and one.world_size == 1
    for (k, a), b in zip(one.model.state_dict().items(), two.model.state_dict().values(),
                         strict=True):
        assert torch.allclose(a, b, atol=1e-5), k
    assert two.val_loss == pytest.approx(one.val_loss, rel=1e-5)


def test_bf16_autocast_on_the_cpu_when_asked(champion, split) -> None:
    result = fit(champion, split, quick(precision="bf16", epochs=2))
    assert np.isfinite(result.val_loss)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # weights fp32


def test_regression_task(split) -> None:
    from training.models import mlp

    x = split.train.x
    target = LabelledRows(x, (x[:, 0] * 2.0 - x[:, 1]).astype(np.float32))
    val = LabelledRows(split.validation.x, (split.validation.x[:, 0] * 2.0
                                            - split.validation.x[:, 1]).astype(np.float32))
    data = type(split)(target, val, val, None)
    torch.manual_seed(0)
    result = fit(mlp(4, 1, (16,)), data, quick(task="regression", epochs=10))
    assert result.val_metric < 0.5  # mean absolute error, the target's spread is ~2.2


def test_torchscript_models_fine_tune(champion, split) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in 2.9+
        scripted = torch.jit.script(champion)
    before = scripted.state_dict()["0.weight"].clone()
    result = fit(scripted, split, quick(strategy="gradual", epochs=4))
    assert isinstance(result.model, torch.jit.ScriptModule)
    assert torch.equal(scripted.state_dict()["0.weight"], before)  # champion untouched
    assert accuracy(result.model, split.holdout) > accuracy(champion, split.holdout)
