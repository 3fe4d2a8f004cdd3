"""`resnet serve`: the API through FastAPI's TestClient (answers equal to `resnet predict`, every limit, batching,
health, metrics, the token) and one real server process on a loopback port under concurrent requests."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_helpers import (detector_and_scene, fashion_checkpoint, fashion_image, png_bytes, start_server, stop_server,
                           write_images)
from test_predict import png_claiming

from resnet.cli import main
from resnet.serve.app import Settings, app_from_settings, create_app
from resnet.serve.limits import Limits
from resnet.serve.model import Served, held_out

OPTIONS = dict(device="cpu", protocol="center", engine="torch-fp32", score_threshold=0.5, max_batch=8, max_wait_ms=5,
               max_queue=64, max_bytes=1_000_000, max_pixels=1_000_000, max_images=4, timeout=20, token=None)


def ready_client(app) -> TestClient:
    client = TestClient(app).__enter__()
    deadline = time.monotonic() + 30
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, client.get("/health").json()
        time.sleep(0.02)
    return client


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return fashion_checkpoint(tmp_path_factory.mktemp("serve") / "fashion.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"), 6)


@pytest.fixture(scope="module")
def client(checkpoint):
    client = ready_client(app_from_settings({**OPTIONS, "checkpoint": str(checkpoint)}, load_now=True))
    yield client
    client.__exit__(None, None, None)


def predict_json(capsys, checkpoint, paths, top=10):
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, paths), "--json", "--no-amp",
                 "--top", str(top)]) == 0
    return json.loads(capsys.readouterr().out)


def assert_same(served: list[dict], expected: list[dict]) -> None:
    assert len(served) == len(expected)
    for s, e in zip(served, expected):
        assert s["engine"] == e["engine"]
        assert [t["class"] for t in s["top"]][:1] == [t["class"] for t in e["top"]][:1]
        assert [t["index"] for t in s["top"]] == [t["index"] for t in e["top"]]
        assert [t["probability"] for t in s["top"]] == pytest.approx([t["probability"] for t in e["top"]], abs=1e-5)


def test_answers_equal_resnet_predict(client, checkpoint, images, capsys):
    expected = predict_json(capsys, checkpoint, images[:3])
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in images[:3]]
    r = client.post("/v1/predict?top_k=10", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "resnet20" and body["task"] == "classification" and body["latency_ms"] > 0
    assert [p["image"] for p in body["predictions"]] == [p.name for p in images[:3]]
    assert_same(body["predictions"], expected)
    raw = client.post("/v1/predict?top_k=10", content=images[0].read_bytes(), headers={"content-type": "image/png"})
    assert_same(raw.json()["predictions"], expected[:1])
    assert len(client.post("/v1/predict?top_k=2", files=files[:1]).json()["predictions"][0]["top"]) == 2


def test_an_onnx_file_is_served_as_resnet_predict_runs_it(checkpoint, images, tmp_path, capsys):
    """`resnet export` writes the file; ONNX Runtime runs it with the preprocessing from its metadata, in the server
    as in `resnet predict` (the same resnet.inference classifier)."""
    onnx = tmp_path / "fashion.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(onnx)]) == 0
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(onnx), *map(str, images[:3]), "--json", "--top", "10"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert {e["engine"] for e in expected} == {"onnxruntime-fp32"}
    client = ready_client(app_from_settings({**OPTIONS, "checkpoint": str(onnx), "engine": "auto"}, load_now=True))
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in images[:3]]
    body = client.post("/v1/predict?top_k=10", files=files).json()
    assert_same(body["predictions"], expected)
    card = client.get("/v1/model").json()
    assert card["input"]["engine"] == "onnxruntime-fp32" and card["classes"][0] == "T-shirt/top"
    assert card["input"]["image_size"] == 28 and card["input"]["channels"] == 1
    client.__exit__(None, None, None)


def test_model_card_health_metrics(client):
    card = client.get("/v1/model").json()
    assert card["name"] == "resnet20" and card["task"] == "classification" and len(card["classes"]) == 10
    assert card["classes"][0] == "T-shirt/top" and card["input"]["image_size"] == 28 and card["input"]["channels"] == 1
    assert client.get("/health").json() == {"status": "ready", "model": "resnet20"}
    client.post("/v1/predict", content=png_bytes(fashion_image(1)), headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert 'resnet_serve_requests_total{code="200",route="/v1/predict"}' in text
    assert "resnet_serve_batch_size_count" in text and "resnet_serve_queue_depth" in text
    assert "resnet_serve_request_seconds_bucket" in text
    assert "<!doctype html>" in client.get("/").text and "http" not in client.get("/").text.split("<script>")[1]


def test_held_out_metrics_come_from_the_run(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    rows = [{"step": 10, "val_top1_error": 0.5}, {"step": 20, "val_top1_error": 0.25, "train_loss": 1.0}]
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\nnot json\n")
    assert held_out(str(run)) == {}  # not a run directory: no config.json
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "best.safetensors").write_bytes(b"")
    assert held_out(str(run)) == {"val_top1_error": 0.25}
    assert held_out(str(run / "checkpoints" / "best.safetensors")) == {"val_top1_error": 0.25}
    assert held_out(str(tmp_path / "elsewhere.safetensors")) == {} and held_out("resnet20.akamaster-cifar10") == {}


class FakeNet(Served):
    """A stand-in network: records its batch sizes, can be held on an event, answers each image's sum."""

    task, name, channels, min_side, classes, meta = "classification", "fake", 1, None, [], {}

    def __init__(self, gate: threading.Event | None = None, delay: float = 0.0) -> None:
        self.gate, self.delay, self.batches = gate, delay, []

    def prepare(self, image):
        return image

    def run(self, batch):
        if self.gate is not None and len(self.batches) > 0:  # the warm-up batch passes
            self.gate.wait(30)
        time.sleep(self.delay)
        self.batches.append(len(batch))
        return [float(x.float().sum()) for x in batch]

    def answer(self, output, image, top_k):
        return {"image": image, "sum": output}

    def input_card(self):
        return {}


def fake_client(net: Served, **limits) -> TestClient:
    settings = Settings(source="fake", max_batch=limits.pop("max_batch", 8), max_wait_ms=limits.pop("max_wait_ms", 5),
                        limits=Limits(**{"timeout": 20, **limits}), token=None)
    return ready_client(create_app(lambda: net, settings))


def post_png(client, seed=0, **kwargs):
    return client.post("/v1/predict", content=png_bytes(fashion_image(seed)), headers={"content-type": "image/png"},
                       **kwargs)


def test_requests_that_arrive_together_run_as_one_batch():
    net = FakeNet()
    client = fake_client(net, max_batch=8, max_wait_ms=300)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: post_png(client, i), range(6)))
    assert all(a.status_code == 200 for a in answers)
    assert [a.json()["predictions"][0]["sum"] for a in answers] == [float(fashion_image(i).sum()) for i in range(6)]
    assert max(net.batches[1:]) > 1 and sum(net.batches[1:]) == 6  # the first batch is the warm-up
    single = FakeNet()
    client = fake_client(single, max_batch=1, max_wait_ms=300)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: post_png(client, i), range(4)))
    assert single.batches == [1] * 5


def test_health_and_metrics_answer_while_a_batch_runs():
    gate = threading.Event()
    client = fake_client(FakeNet(gate))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post_png, client)
        time.sleep(0.3)
        assert not pending.done()
        assert client.get("/health").status_code == 200
        assert "resnet_serve_queue_depth" in client.get("/metrics").text
        gate.set()
        assert pending.result(10).status_code == 200


def test_not_ready_until_loaded_and_warmed_up():
    loaded = threading.Event()

    def loader():
        loaded.wait(30)
        return FakeNet()

    client = TestClient(create_app(loader, Settings())).__enter__()
    assert client.get("/health").status_code == 503 and client.get("/health").json()["status"] == "loading"
    r = post_png(client)
    assert r.status_code == 503 and r.json()["limit"] == "loading"
    loaded.set()
    deadline = time.monotonic() + 10
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert post_png(client).status_code == 200


def assert_refused(r, status: int, limit: str, option: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["limit"] == limit and body["option"] == option and body["status"] == status and body["error"]
    assert "\n" not in body["error"]
    return body


def test_body_limit_from_content_length_and_from_a_chunked_body(client):
    big = b"\x89PNG" + b"x" * 1_000_001
    assert_refused(client.post("/v1/predict", content=big, headers={"content-type": "image/png"}),
                   413, "bytes", "--max-bytes")

    def chunks():
        for _ in range(11):
            yield b"x" * 100_000

    assert_refused(client.post("/v1/predict", content=chunks(), headers={"content-type": "image/png"}),
                   413, "bytes", "--max-bytes")
    assert post_png(client).status_code == 200


def test_pixels_and_decompression_bombs_refused_from_the_header(client, tmp_path):
    png_claiming(tmp_path / "huge.png", 2000, 2000)  # 4 MP, above this server's 1 MP
    png_claiming(tmp_path / "bomb.png", 40_000, 40_000)  # above PIL's own bomb limit
    for name in ("huge.png", "bomb.png"):
        body = assert_refused(client.post("/v1/predict", files=[("file", (name, (tmp_path / name).read_bytes()))]),
                              413, "pixels", "--max-pixels")
        assert name in body["error"]
    real = png_bytes(fashion_image(0, size=1001))  # a real image just above the limit
    assert_refused(client.post("/v1/predict", content=real, headers={"content-type": "image/png"}),
                   413, "pixels", "--max-pixels")


def test_images_per_request(client):
    files = [("file", (f"{i}.png", png_bytes(fashion_image(i)), "image/png")) for i in range(5)]
    assert_refused(client.post("/v1/predict", files=files), 413, "images", "--max-images")
    assert client.post("/v1/predict", files=files[:4]).status_code == 200


def test_bad_images_and_content_types(client):
    png = png_bytes(fashion_image(0))
    cases = [(b"hello", "text/plain", 415, "content-type"), (b"hello", "image/png", 415, "image"),
             (png[: len(png) // 2], "image/png", 422, "image"), (b"", "image/png", 422, "empty")]
    for data, kind, status, limit in cases:
        body = assert_refused(client.post("/v1/predict", content=data, headers={"content-type": kind}), status, limit)
        assert "Traceback" not in body["error"]
    assert_refused(client.post("/v1/predict", files=[("other", ("a.png", png))]), 422, "multipart")
    assert_refused(client.post("/v1/predict", data={"file": "not a file"}, files=[("x", ("a", b"1"))]),
                   422, "multipart")
    body = assert_refused(client.post("/v1/predict", files=[("file", ("ok.png", png)), ("file", ("bad.png", b"no"))]),
                          415, "image")
    assert "bad.png" in body["error"]
    assert client.post("/v1/predict", files=[("file", ("ok.png", png))]).status_code == 200


def test_a_full_queue_is_503_with_retry_after():
    gate = threading.Event()
    client = fake_client(FakeNet(gate), max_queue=2, max_batch=1, max_wait_ms=0)
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(post_png, client)  # in the network, held
        time.sleep(0.3)
        waiting = [pool.submit(post_png, client) for _ in range(2)]  # fill the queue
        time.sleep(0.3)
        r = post_png(client)
        body = assert_refused(r, 503, "queue", "--max-queue")
        assert "queue" in body["error"] and int(r.headers["retry-after"]) >= 1
        gate.set()
        assert running.result(10).status_code == 200 and all(w.result(10).status_code == 200 for w in waiting)
    r = post_png(client)
    assert r.status_code == 200


def test_a_request_past_the_timeout_is_504_and_the_next_is_answered():
    net = FakeNet(delay=0)
    client = fake_client(net, timeout=0.5, max_batch=1, max_wait_ms=0)
    net.delay = 1.0
    assert_refused(post_png(client), 504, "timeout", "--timeout")
    net.delay = 0
    time.sleep(1.0)
    assert post_png(client).status_code == 200


def test_token_on_every_route_but_health(checkpoint):
    client = ready_client(app_from_settings({**OPTIONS, "checkpoint": str(checkpoint), "token": "s3cret"},
                                            load_now=True))
    png = png_bytes(fashion_image(0))
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}):
        for method, path in (("post", "/v1/predict"), ("get", "/v1/model"), ("get", "/metrics")):
            r = getattr(client, method)(path, headers={**headers, "content-type": "image/png"},
                                        **({"content": png} if method == "post" else {}))
            assert_refused(r, 401, "token", "--token (or $RESNET_SERVE_TOKEN)")
            assert r.headers["www-authenticate"] == "Bearer"
    good = {"authorization": "Bearer s3cret"}
    assert client.get("/health").status_code == 200 and client.get("/v1/model", headers=good).status_code == 200
    assert client.post("/v1/predict", content=png, headers={**good, "content-type": "image/png"}).status_code == 200
    client.__exit__(None, None, None)


def test_top_k_is_checked(client):
    assert client.post("/v1/predict?top_k=0", content=png_bytes(fashion_image(0)),
                       headers={"content-type": "image/png"}).status_code == 422


def test_missing_package_is_one_line(monkeypatch, capsys, checkpoint):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert main(["serve", "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fastapi" in err and "[serve]" in err


def test_warning_for_a_public_address_without_token(monkeypatch, capsys, checkpoint):
    import uvicorn

    from resnet.commands.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)  # nothing is bound
    monkeypatch.delenv("RESNET_SERVE_TOKEN", raising=False)
    assert main(["serve", "--checkpoint", str(checkpoint), "--host", "0.0.0.0"]) == 0
    assert "without a token" in capsys.readouterr().err
    monkeypatch.setenv("RESNET_SERVE_TOKEN", "t")
    assert main(["serve", "--checkpoint", str(checkpoint), "--host", "0.0.0.0"]) == 0
    assert "without a token" not in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(checkpoint), "--max-batch", "0"]) == 2


# ----------------------------------------------------------------------------- a real server process


def slow_upload(url: str, seconds: float) -> bytes:
    """Send headers promising 100 bytes, then one byte a second; return what the server answered."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=seconds + 10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n")
        end = time.monotonic() + seconds
        s.settimeout(1)
        answer = b""
        while time.monotonic() < end and not answer:
            try:
                s.sendall(b"x")
                answer = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
        return answer


def test_a_real_server_under_concurrent_requests_then_sigterm(checkpoint, images, capsys):
    """One `resnet serve` process: concurrent answers equal `resnet predict`'s, a slow upload is cut at --timeout
    while the server goes on, and SIGTERM lets a request in flight finish before the process exits."""
    expected = predict_json(capsys, checkpoint, images)
    process, url = start_server(checkpoint, "--max-batch", "64", "--max-wait-ms", "600", "--timeout", "2.5",
                                "--engine", "torch-fp32", "--grace", "10")
    try:
        def ask(i):
            path = images[i % len(images)]
            r = httpx.post(url + "/v1/predict?top_k=10", files=[("file", (path.name, path.read_bytes()))], timeout=30)
            return i, r

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(12)))
        for i, r in answers:
            assert r.status_code == 200, r.text
            assert_same(r.json()["predictions"], [expected[i % len(images)]])
        metrics = httpx.get(url + "/metrics", timeout=5).text
        batches = float(metrics.split("resnet_serve_batch_size_count ")[1].split()[0])
        assert batches < 12  # requests that arrived together shared batches (the warm-up is one)
        answer = slow_upload(url, 5)  # one byte a second: refused at the 2.5 s time-out, the server goes on
        assert answer.startswith(b"HTTP/1.1 408") and b"--timeout" in answer
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(ask, 0)
            time.sleep(0.3)  # the request waits for its batch (600 ms)
            process.send_signal(signal.SIGTERM)
            _, r = pending.result(30)
        assert r.status_code == 200 and r.json()["predictions"][0]["top"]
        assert process.wait(20) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)
    finally:
        stop_server(process)


def test_detector_answers_equal_resnet_predict(tmp_path, capsys):
    path, scene = detector_and_scene(tmp_path)
    assert main(["predict", str(scene), "--checkpoint", str(path), "--json", "--score-threshold", "0"]) == 0
    expected = json.loads(capsys.readouterr().out)[0]
    client = ready_client(app_from_settings({**OPTIONS, "checkpoint": str(path), "score_threshold": 0.0},
                                            load_now=True))
    body = client.post("/v1/predict", files=[("file", ("scene.png", scene.read_bytes()))]).json()
    assert body["task"] == "detection" and client.get("/v1/model").json()["classes"] == ["cat", "dog"]
    served = body["predictions"][0]
    assert served["image"] == "scene.png" and len(served["detections"]) == len(expected["detections"]) > 0
    for s, e in zip(served["detections"], expected["detections"]):
        rest = {k: v for k, v in e.items() if k not in ("box", "score")}  # class, label or category id, mask
        assert {k: v for k, v in s.items() if k not in ("box", "score")} == rest and "mask" in rest
        assert s["box"] == pytest.approx(e["box"], abs=1e-3) and s["score"] == pytest.approx(e["score"], abs=1e-5)
    client.__exit__(None, None, None)


def test_batcher_drops_images_of_requests_that_gave_up():
    from resnet.serve.batching import Batcher

    seen = []

    async def scenario():
        batcher = Batcher(lambda batch: seen.extend(batch) or batch, max_batch=4, max_wait_ms=50)
        batcher.start()
        kept, dropped = batcher.submit(["kept"]), batcher.submit(["dropped"])
        dropped[0].cancel()
        assert await asyncio.gather(*kept) == ["kept"]
        await batcher.stop()

    asyncio.run(scenario())
    assert seen == ["kept"]


def test_the_benchmark_quick_mode_writes_valid_json(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_serve

    out = tmp_path / "bench.json"
    assert bench_serve.main(["--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["cpu"] and report["quick"] and len(report["loadavg_before"]) == 3
    [model] = report["models"]
    assert model["offline"]["images_per_s"] > 0
    assert {(r["mode"], r["clients"]) for r in model["served"]} == {(m, n) for m in ("batching", "no batching")
                                                                    for n in (1, 8)}
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in model["served"])


def test_container_and_kubernetes_recipes():
    """The Containerfile runs `resnet serve` (arguments the real parser takes) as a non-root user with a HEALTHCHECK
    on /health; the Deployment's probes use /health; hadolint passes where it is installed."""
    import re
    import shutil
    import subprocess
    from pathlib import Path

    import yaml

    from resnet.cli import build_parser

    deploy = Path(__file__).resolve().parents[1] / "deploy"
    recipe = (deploy / "Containerfile").read_text()
    user = re.search(r"^USER (\S+)", recipe, re.M).group(1)
    assert user not in ("root", "0") and "HEALTHCHECK" in recipe and "/health" in recipe.split("HEALTHCHECK")[1]
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])", recipe, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])", recipe, re.M).group(1))
    assert entry[:2] == ["resnet", "serve"]
    args = build_parser(entry[1:] + cmd).parse_args(entry[1:] + cmd)
    assert args.host == "0.0.0.0" and args.port == 8000
    deployment, service = yaml.safe_load_all((deploy / "kubernetes.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert build_parser(["serve", *container["args"]]).parse_args(["serve", *container["args"]]).grace == 20
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    if shutil.which("hadolint"):
        result = subprocess.run(["hadolint", str(deploy / "Containerfile")], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_the_serving_page_commands_parse():
    """Every `resnet ...` line of docs/serving.md parses with the real command line (and the options it names
    are the server's)."""
    import shlex
    from pathlib import Path

    from resnet.cli import build_parser

    page = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    lines = [line.split("  #")[0].strip() for line in page.splitlines() if line.startswith("resnet ")]
    assert sum(line.startswith("resnet serve") for line in lines) >= 2
    for line in lines:
        argv = shlex.split(line)[1:]
        build_parser(argv).parse_args(argv)
    options = set(re.findall(r"`(--[a-z-]+[a-z0-9]*)", page)) - {"--json", "--int8"}  # predict's and export's
    serve = build_parser(["serve"])._subparsers._group_actions[0].choices["serve"]
    known = {o for action in serve._actions for o in action.option_strings}
    assert options <= known, options - known


@pytest.mark.slow
def test_workers_processes_answer_on_one_port_and_sum_their_metrics(checkpoint, images, capsys):
    expected = predict_json(capsys, checkpoint, images[:1])
    process, url = start_server(checkpoint, "--workers", "2", "--engine", "torch-fp32", wait=180)
    try:
        for _ in range(4):
            r = httpx.post(url + "/v1/predict?top_k=10", content=images[0].read_bytes(),
                           headers={"content-type": "image/png"}, timeout=60)
            assert_same(r.json()["predictions"], expected)
        text = httpx.get(url + "/metrics", timeout=10).text
        assert 'resnet_serve_requests_total{code="200",route="/v1/predict"} 4.0' in text
    finally:
        assert stop_server(process) == 0
