"""The CPU/GPU numeric fast path: bf16 autocast and channels_last where they pay, fp32 elsewhere."""

from __future__ import annotations

import json

import pytest
import torch

from resnet import precision
from resnet.train.loop import train
from resnet.train.recipes import get_recipe


@pytest.mark.parametrize("native", [False, True])
def test_cpu_default_follows_native_bf16(monkeypatch, native):
    monkeypatch.delenv("RESNET_CPU_FAST")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.amp_dtype("cpu", None) == (torch.bfloat16 if native else None)
    assert precision.channels_last("cpu", None) is native
    # an explicit choice wins either way, and CUDA is always on by default
    assert precision.amp_dtype("cpu", True) == torch.bfloat16 and precision.amp_dtype("cpu", False) is None
    assert precision.channels_last("cpu", True) and not precision.channels_last("cpu", False)
    assert precision.amp_dtype("cuda", None, "fp16") == torch.float16 and precision.channels_last("cuda", None)


@pytest.mark.parametrize("native", [False, True])
def test_environment_overrides_the_cpu_choice(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    for setting, on in (("1", True), ("0", False), ("auto", native)):
        monkeypatch.setenv("RESNET_CPU_FAST", setting)
        assert precision.amp_dtype("cpu", None) == (torch.bfloat16 if on else None)
        assert precision.channels_last("cpu", None) is on
        assert precision.amp_dtype("cpu", not on) == (None if on else torch.bfloat16)  # a flag still wins
    monkeypatch.setenv("RESNET_CPU_FAST", "fast")
    with pytest.raises(ValueError, match=r"RESNET_CPU_FAST='fast'"):
        precision.amp_dtype("cpu", None)


def test_evaluation_takes_the_fast_path_when_it_is_on(monkeypatch):
    """Scores from the evaluation protocols go through bf16 autocast when the CPU choice is on: close to fp32
    (same top-1), not equal to it."""
    from resnet import create_model
    from resnet.evaluate.protocols import softmax_scores

    model = create_model("resnet20", base_width=4).eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fp32 = softmax_scores(model, x)
    monkeypatch.setenv("RESNET_CPU_FAST", "1")
    fast = softmax_scores(model, x)
    assert not torch.equal(fast, fp32) and torch.allclose(fast, fp32, atol=0.03)
    assert torch.equal(fast.argmax(1), fp32.argmax(1))


def test_autocast_computes_in_bf16_only_when_asked():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with precision.autocast("cpu", torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16
    with precision.autocast("cpu", None):
        assert conv(x).dtype == torch.float32


def _run(folder, out, capsys, **fast) -> tuple[dict, str]:
    recipe = get_recipe("paper-cifar", iters=48, batch_size=32, val_split=False, eval_every=48, device="cpu", **fast)
    row = train("resnet20", "fashion-mnist", data_dir=str(folder), recipe=recipe, out=out,
                model_options={"base_width": 4}, progress=False)
    return row, capsys.readouterr().out


def test_bf16_channels_last_training_learns_like_fp32(tiny_fashion, tmp_path, capsys, monkeypatch):
    """The same short run in fp32 and in bf16 autocast + channels_last: both learn the task, to the same error
    within noise (128 test images), and the start line says which numeric path ran."""
    monkeypatch.delenv("RESNET_CPU_FAST")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    fp32, said_fp32 = _run(tiny_fashion, tmp_path / "fp32", capsys)  # the automatic choice on such a CPU
    bf16, said_bf16 = _run(tiny_fashion, tmp_path / "bf16", capsys, amp=True, channels_last=True)
    assert "fp32, NCHW" in said_fp32 and "bf16 autocast, channels_last" in said_bf16
    assert fp32["test_top1_error"] < 0.3 and bf16["test_top1_error"] < 0.3  # 4 balanced classes: chance is 0.75
    assert abs(fp32["test_top1_error"] - bf16["test_top1_error"]) <= 0.1
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["recipe"]["amp"] is True and config["recipe"]["channels_last"] is True
