"""ONNX export: BN folding keeps the outputs, the file runs in ONNX Runtime with any batch size."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from resnet.cli import main
from resnet.export import export_onnx, fold_batchnorm
from resnet import create_model
from helpers import randomize_bn



def count_bn(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name,size", [("resnet20", 32), ("plain20", 32), ("resnet50", 64)])
def test_folding_batchnorm_gives_the_same_outputs(name, size):
    model = randomize_bn(create_model(name, **({"shortcut": "C"} if name == "resnet20" else {})))
    before = count_bn(model)
    folded = fold_batchnorm(model)
    assert count_bn(folded) == 0 and count_bn(model) == before  # the original is untouched
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        # random deep nets reach logits in the hundreds: compare relative to their size
        assert (folded(x) - expected).abs().max() <= 1e-5 * expected.abs().max()


def run_ort(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("name,size", [("resnet20", 32), ("resnet18", 64)])
def test_onnx_runtime_matches_torch_at_two_batch_sizes(tmp_path, name, size):
    model = randomize_bn(create_model(name, num_classes=10))
    out = tmp_path / "m.onnx"
    report = export_onnx(model, out, image_size=size, meta={"model": name})
    assert report["max_abs_diff"] < 1e-4
    graph = onnx.load(str(out))
    onnx.checker.check_model(graph)
    assert not [n for n in graph.graph.node if n.op_type == "BatchNormalization"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic (dynamic) batch
    assert any(p.key == "resnet" for p in graph.metadata_props)
    for batch in (2, 5):  # independently of the export's own check
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_ort(out, x)
        assert got.shape == (batch, 10)
        assert np.abs(got - expected).max() < 1e-4


def test_no_fold_keeps_batchnorm_nodes(tmp_path):
    model = randomize_bn(create_model("resnet20"))
    report = export_onnx(model, tmp_path / "m.onnx", image_size=32, fold_bn=False)
    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert sum(n.op_type == "BatchNormalization" for n in graph.graph.node) == count_bn(model)
    assert report["max_abs_diff"] < 1e-4


def test_a_failed_check_leaves_no_file_and_keeps_the_old_one(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(ValueError, match="nothing written"):
        export_onnx(randomize_bn(create_model("resnet20")), out, image_size=32, tolerance=0.0)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_export_command(tmp_path, capsys):
    from resnet.checkpoint import save_weights

    model = randomize_bn(create_model("resnet20"))
    save_weights(tmp_path / "c.safetensors", model, {"model": "resnet20", "options": model.options, "image_size": 32,
                                                     "style": "small"}, torch.rand(3, 32, 32))
    assert main(["export", "--checkpoint", str(tmp_path / "c.safetensors"), "--out", str(tmp_path / "c.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "max |onnxruntime - pytorch|" in printed and "19 BN folded" in printed
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert np.abs(run_ort(tmp_path / "c.onnx", x) - model(x).numpy()).max() < 1e-4


def readme_onnx_example() -> str:
    """The docs' onnxruntime example (docs/using-a-trained-net.md), as a user would copy it."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "using-a-trained-net.md").read_text()
    [code] = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "onnxruntime" in block]
    return code


@pytest.mark.parametrize("name,size,style,image_size,std", [
    ("resnet20", 28, "small", (60, 45), None),  # per-pixel mean, image resized and cropped to 28
    ("resnet18", 64, "imagenet", (90, 120), [0.229, 0.224, 0.225]),  # per-channel mean and std, 73 then 64
])
def test_readme_onnx_example_gives_the_same_top5_as_predict(tmp_path, capsys, name, size, style, image_size, std):
    from PIL import Image

    from resnet.checkpoint import save_weights

    torch.manual_seed(0)  # the same net whatever ran before (a random net's near-ties decide the 0.02-point check)
    model = randomize_bn(create_model(name, num_classes=12))
    mean = torch.rand(3, size, size) if style == "small" else torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    meta = {"model": name, "options": model.options, "classes": [str(i) for i in range(12)],
            "class_names": [f"thing {i}" for i in range(12)], "image_size": size, "style": style,
            **({"input_std": std} if std else {})}
    save_weights(tmp_path / "c.safetensors", model, meta, mean)
    assert main(["export", "--checkpoint", str(tmp_path / "c.safetensors"), "--out", str(tmp_path / "c.onnx")]) == 0
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "c.onnx")).metadata_props}
    np.testing.assert_allclose(np.array(json.loads(props["input_mean"])), mean.numpy(), atol=1e-7)
    assert json.loads(props["input_size"]) == [3, size, size] and json.loads(props["class_names"])[3] == "thing 3"
    assert ("input_std" in props) == bool(std) and ("divided by input_std" in capsys.readouterr().out) == bool(std)
    w, h = image_size
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    assert main(["predict", "--checkpoint", str(tmp_path / "c.safetensors"), str(tmp_path / "photo.png"),
                 "--json"]) == 0
    [predicted] = json.loads(capsys.readouterr().out)
    code = readme_onnx_example().replace('onnx_file, image_file = "r56.onnx", "cat.jpg"',
                                         f'onnx_file, image_file = {str(tmp_path / "c.onnx")!r}, '
                                         f'{str(tmp_path / "photo.png")!r}')
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, "README.md", "exec"), {})
    lines = output.getvalue().splitlines()
    assert [line.strip().split("  ", 1)[1] for line in lines] == [t["class"] for t in predicted["top"]]
    assert [float(line.split("%")[0]) for line in lines] == pytest.approx(
        [100 * t["probability"] for t in predicted["top"]], abs=0.02)
