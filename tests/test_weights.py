"""Pretrained weights by name: downloads from a local HTTP server (success, cache reuse, hash mismatch, failure),
the published table, create_model(pretrained=...), and fitting weights to a net (conv1 as timm adapts it)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading

import pytest
import torch
import torchvision

import resnet
from resnet import weights
from resnet.cli import main


class Server:
    """Files of a folder over HTTP on 127.0.0.1, counting the requests for each path."""

    def __init__(self, folder) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A torchvision resnet18 state dict served as `resnet18-<sha256[:8]>.pth`, registered as a weights name."""
    folder = tmp_path / "www"
    folder.mkdir()
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), folder / "tmp.pth")
    digest = hashlib.sha256((folder / "tmp.pth").read_bytes()).hexdigest()
    good = folder / f"resnet18-{digest[:8]}.pth"
    (folder / "tmp.pth").rename(good)
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
    (folder / f"resnet18-{wrong}.pth").write_bytes(good.read_bytes())  # right bytes, wrong published hash
    server = Server(folder)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    for tag, name in (("test-good", good.name), ("test-bad", f"resnet18-{wrong}.pth"), ("test-gone", "resnet18-12345678.pth")):
        entry = weights.Weights("resnet18", tag, server.url + name, 12.5, resize_size=232)
        monkeypatch.setitem(weights.WEIGHTS, entry.name, entry)
    yield server, source
    server.close()


def test_download_checks_the_hash_and_reuses_the_cache(served, tmp_path):
    server, source = served
    model = resnet.create_model("resnet18", pretrained="test-good")
    assert server.requests == [f"/{weights.WEIGHTS['resnet18.test-good'].file_name}"]
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / weights.WEIGHTS["resnet18.test-good"].file_name
    assert cached.is_file()
    for key, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key
    assert model.meta["resize_size"] == 232 and model.meta["image_size"] == 224 and model.meta["style"] == "imagenet"
    assert model.input_std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])
    assert model.meta["classes"][:2] == ["tench", "goldfish"]  # ImageNet's class order, as torchvision's
    again = resnet.create_model("resnet18", pretrained="resnet18.test-good")
    assert len(server.requests) == 1  # the cached file, no second download
    assert torch.equal(again.fc.weight, model.fc.weight)


def test_hash_mismatch_and_failed_download_are_one_line_naming_the_url(served, tmp_path, capsys):
    server, _ = served
    bad = weights.WEIGHTS["resnet18.test-bad"]
    with pytest.raises(ValueError, match="SHA-256 does not start with") as e:
        resnet.create_model("resnet18", pretrained="test-bad")
    assert bad.url in str(e.value) and "pass the file instead" in str(e.value) and "\n" not in str(e.value)
    assert not bad.cache_path().exists() and not list(bad.cache_path().parent.glob("*.partial"))
    gone = weights.WEIGHTS["resnet18.test-gone"]
    data = tmp_path / "data"
    assert main(["train", "--model", "resnet18", "--data", "synthetic", "--init", "test-gone", "--out", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnet train: error: ") and gone.url in err and "--init FILE" in err
    assert len(err.splitlines()) == 1


def test_weights_command_lists_names_with_published_top1_and_cache_state(served, capsys):
    assert main(["weights", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    # torchvision's own enum is the reference for its URLs and published accuracies
    for depth in (18, 34, 50, 101, 152):
        enum = getattr(torchvision.models, f"ResNet{depth}_Weights")
        for version in (1, 2):
            published = getattr(enum, f"IMAGENET1K_V{version}", None)
            name = f"resnet{depth}.torchvision-v{version}"
            assert (name in rows) == (published is not None)
            if published is not None:
                assert rows[name]["url"] == published.url
                assert rows[name]["top1"] == published.meta["_metrics"]["ImageNet-1K"]["acc@1"]
                assert rows[name]["resize"] == published.transforms().resize_size[0]
    assert rows["resnet50.timm-a1"]["top1"] == 81.240 and rows["resnet50.timm-a1"]["crop"] == 288
    assert not rows["resnet18.test-good"]["cached"]
    resnet.create_model("resnet18", pretrained="test-good")
    assert main(["weights", "--model", "resnet18"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if " test-good " in x][0]
    assert line.split()[-1] == "yes"
    assert main(["weights", "--model", "plain34"]) == 2


def test_an_unknown_name_or_wrong_net_is_one_line():
    with pytest.raises(FileNotFoundError, match="torchvision-v1, torchvision-v2, timm-a1, timm-a1h"):
        resnet.create_model("resnet50", pretrained="torchvison-v2")
    with pytest.raises(ValueError, match="no weights 'torchvision-v2' for resnet18"):
        resnet.create_model("resnet18", pretrained="torchvision-v2")
    with pytest.raises(ValueError, match="are for resnet50, not resnet101"):
        resnet.create_model("resnet101", pretrained="resnet50.timm-a1")


def test_a_local_file_named_as_published_gets_that_entrys_preprocessing(tmp_path):
    source = torchvision.models.resnet50(weights=None)
    torch.save(source.state_dict(), tmp_path / "resnet50-11ad3fa6.pth")  # torchvision's V2 file name
    model = resnet.create_model("resnet50", pretrained=tmp_path / "resnet50-11ad3fa6.pth")
    assert model.options["bottleneck_stride"] == "3x3"  # v1.5, torchvision's placement
    assert model.meta["resize_size"] == 232 and model.meta["weights"] == "resnet50.torchvision-v2"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), source.eval()(x), atol=1e-4, rtol=1e-4)
    other = tmp_path / "mine.pth"
    torch.save(source.state_dict(), other)
    assert resnet.create_model("resnet50", pretrained=other).meta["resize_size"] == 256  # torchvision's default
    with pytest.raises(ValueError, match="bottleneck_stride"):
        resnet.create_model("resnet50", pretrained=other, bottleneck_stride="1x1")


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_first_conv_adapts_as_timm_does(channels):
    from timm.models import adapt_input_conv  # the reference implementation

    weight = torch.randn(64, 3, 7, 7)
    assert torch.allclose(weights.adapt_first_conv(weight, channels), adapt_input_conv(channels, weight), atol=1e-6)


def test_one_channel_weights_on_three_channel_data_and_the_reverse(tmp_path, capsys):
    gray = torchvision.models.resnet18(weights=None)
    gray.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    torch.save(gray.state_dict(), tmp_path / "gray.pth")
    rgb = resnet.create_model("resnet18", pretrained=tmp_path / "gray.pth", in_channels=3)
    assert "1 -> 3 input channel(s)" in capsys.readouterr().err
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():  # a gray image copied into three channels gives the gray net's logits
        assert torch.allclose(rgb.eval()(image.expand(-1, 3, -1, -1)), gray.eval()(image), atol=1e-4)
    assert rgb.input_mean.shape == (3, 1, 1)
    back = resnet.create_model("resnet18", pretrained=tmp_path / "gray.pth", in_channels=1)
    assert torch.equal(back.conv1.weight, gray.conv1.weight)


def test_other_mismatches_are_one_error_listing_the_keys(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ValueError) as e:
        resnet.create_model("resnet34", pretrained=tmp_path / "r18.pth")
    message = str(e.value)
    assert "missing: layer1.2.bn1.bias" in message and str(tmp_path / "r18.pth") in message and "\n" not in message
