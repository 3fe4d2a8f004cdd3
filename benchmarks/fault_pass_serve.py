"""The fault pass over `resnet serve` (issue 36): every case is a real request (or a raw socket) to a real
`python -m resnet serve` process on a free 127.0.0.1 port, serving a small Fashion-MNIST-style ResNet-20.

Cases: oversized bodies (declared, chunked), a client sending one byte a second while others are answered on
time, a thousand bad requests then a good one (the same answer as before them, the server's memory back near
where it was), decompression bombs (a header claiming 1.6 gigapixels; a real 81-megapixel PNG of 80 KB),
truncated uploads (a cut file; a connection closed mid-body), a malformed HTTP request, a file name that is a
path, a pickle as the body, a missing or wrong token, a full queue, SIGTERM with requests in flight.
Each row: the case, what must happen, what happened, ok. Prints the table, writes
benchmarks/results/fault_pass_serve.json (or --json OUT). About a minute on 2 cores.

Usage: python benchmarks/fault_pass_serve.py [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bench_serve import commit, cpu_name  # noqa: E402
from serve_helpers import fashion_checkpoint, fashion_image, png_bytes, start_server, stop_server  # noqa: E402
from test_predict import png_claiming  # noqa: E402

from record import write_result  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "fault_pass_serve.json"
TOKEN = "fault-pass-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw(url: str, data: bytes, close_after: bool = True, read: bool = True, timeout: float = 20) -> bytes:
    """Send raw bytes on a fresh connection; the server's answer (b"" when it closed without one)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        if close_after and not read:
            return b""
        try:
            return s.recv(65536) if read else b""
        except (TimeoutError, ConnectionError):
            return b""


def post(url: str, content: bytes, kind: str = "image/png", headers: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.post(url + "/v1/predict", content=content, headers={"content-type": kind, **AUTH, **(headers or {})},
                      timeout=60, **kwargs)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


class Pass:
    """The rows of the table."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def check(self, case: str, expected: str, observed: str, ok: bool) -> None:
        self.rows.append({"case": case, "expected": expected, "observed": observed, "ok": bool(ok)})
        print(f"{'ok ' if ok else 'BAD'} {case}: {observed}", file=sys.stderr)


def bodies(p: Pass, url: str) -> None:
    answer = raw(url, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 25000000\r\n\r\n")
    p.check("oversized body (Content-Length 25 MB, nothing sent)", "413 at once, naming --max-bytes",
            f"{status_of(answer)} {'names --max-bytes' if b'--max-bytes' in answer else 'no option named'}",
            status_of(answer) == 413 and b"--max-bytes" in answer)

    def chunks():
        for _ in range(30):
            yield b"\0" * 1_000_000

    r = post(url, chunks())
    p.check("oversized chunked body (30 MB, no length)", "413 naming --max-bytes",
            f"{r.status_code} {r.json()['option']}",
            r.status_code == 413 and r.json()["option"] == "--max-bytes")


def slow_client(p: Pass, url: str, good: bytes) -> None:
    def dribble() -> bytes:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nAuthorization: Bearer "
                      + TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n")
            s.settimeout(1)
            for _ in range(20):
                try:
                    s.sendall(b"x")
                    answer = s.recv(4096)
                    if answer:
                        return answer
                except TimeoutError:
                    continue
                except OSError:
                    return b""
            return b""

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(dribble)
        time.sleep(0.5)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            r = post(url, good)
            times.append((time.perf_counter() - t0, r.status_code))
            time.sleep(0.2)
        answer = slow.result(60)
    worst = max(t for t, _ in times)
    p.check("a client sending one byte a second, five others meanwhile",
            "others 200 in < 2 s; the slow one 408 at --timeout (3 s)",
            f"others {[s for _, s in times]} worst {worst:.2f} s; slow {status_of(answer)}",
            all(s == 200 for _, s in times) and worst < 2 and status_of(answer) == 408)


def bad_requests(p: Pass, url: str, pid: int, good: bytes, before: dict, rss_start: float) -> None:
    png = png_bytes(fashion_image(5))
    bad = [(b"hello", "image/png"), (png[:40], "image/png"), (b"", "image/png"), (png, "text/plain"),
           (b"--x\r\nContent-Disposition: form-data; name=file\r\n\r\nabc", "multipart/form-data; boundary=x"),
           (pickle.dumps({"a": 1}), "image/png"), (png, "multipart/form-data")]
    codes: dict[int, int] = {}
    for i in range(1000):
        data, kind = bad[i % len(bad)]
        code = post(url, data, kind).status_code
        codes[code] = codes.get(code, 0) + 1
    after = post(url, good).json()["predictions"][0]
    rss_end = rss_mb(pid)
    same = after["top"] == before["top"]
    p.check("a thousand bad requests, then a good one", "all 4xx; the good answer unchanged; RSS within 50 MB",
            f"codes {dict(sorted(codes.items()))}; same answer {same}; RSS {rss_start:.0f} -> {rss_end:.0f} MB",
            all(400 <= c < 500 for c in codes) and same and rss_end - rss_start < 50)


def bombs(p: Pass, url: str, pid: int, folder: Path) -> None:
    png_claiming(folder / "claims.png", 40_000, 40_000)
    r = post(url, (folder / "claims.png").read_bytes())
    p.check("PNG header claiming 40000x40000 (1.6 GP)", "413 naming --max-pixels",
            f"{r.status_code} {r.json()['option']}",
            r.status_code == 413 and r.json()["option"] == "--max-pixels")
    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, format="PNG", optimize=False)  # 81 MP of zeros: about 80 KB
    rss = rss_mb(pid)
    r = post(url, buffer.getvalue())
    grown = rss_mb(pid) - rss
    p.check(f"a real 9000x9000 PNG of {len(buffer.getvalue()) // 1000} KB (81 MP)",
            "413 naming --max-pixels, never decoded (RSS < +40 MB)", f"{r.status_code} {r.json()['option']}; "
            f"RSS +{grown:.0f} MB", r.status_code == 413 and r.json()["option"] == "--max-pixels" and grown < 40)


def truncated(p: Pass, url: str, good: bytes) -> None:
    r = post(url, good[: len(good) // 2])
    p.check("a truncated PNG", "422 naming the image", f"{r.status_code} {r.json()['error'][:60]}",
            r.status_code == 422)
    raw(url, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nAuthorization: Bearer "
        + TOKEN.encode() + b"\r\nContent-Length: 10000\r\n\r\n" + good[:100], read=False)
    time.sleep(0.5)
    r = post(url, good)
    p.check("a connection closed mid-body", "the next request 200", str(r.status_code), r.status_code == 200)
    answer = raw(url, b"GARBAGE / HTTP/9\r\n\r\n")
    r = post(url, good)
    p.check("a malformed HTTP request line", "400 (uvicorn), the next request 200",
            f"{status_of(answer)}, next {r.status_code}", status_of(answer) == 400 and r.status_code == 200)
    r = httpx.post(url + "/v1/predict", files=[("file", ("../../../../etc/passwd", good))], headers=AUTH, timeout=30)
    p.check("a file name that is a path (../../../../etc/passwd)", "200: the name is only a label",
            f"{r.status_code} image={r.json()['predictions'][0]['image']!r}", r.status_code == 200)
    r = post(url, pickle.dumps(os.system), "application/octet-stream")
    r2 = post(url, pickle.dumps(os.system), "image/png")
    p.check("a pickle as the body", "415 (never unpickled)", f"{r.status_code}, as image/png {r2.status_code}",
            r.status_code == 415 and r2.status_code == 415)


def tokens(p: Pass, url: str, good: bytes) -> None:
    codes = [post(url, good, headers=h).status_code for h in ({"authorization": ""}, {"authorization": "Bearer no"})]
    health = httpx.get(url + "/health", timeout=10).status_code
    metrics = httpx.get(url + "/metrics", timeout=10).status_code
    p.check("missing / wrong token", "401 / 401; /health 200 without it; /metrics 401",
            f"{codes[0]} / {codes[1]}; /health {health}; /metrics {metrics}",
            codes == [401, 401] and health == 200 and metrics == 401)


def full_queue(p: Pass, checkpoint: Path, good: bytes) -> None:
    process, url = start_server(checkpoint, "--max-queue", "2", "--max-batch", "1", "--max-wait-ms", "0",
                                "--token", TOKEN)
    try:
        files = [("file", (f"{i}.png", good)) for i in range(2)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: httpx.post(url + "/v1/predict", files=files, headers=AUTH, timeout=60),
                                    range(16)))
        codes = sorted({r.status_code for r in answers})
        retry = [r.headers.get("retry-after") for r in answers if r.status_code == 503]
        p.check("a full queue (--max-queue 2, 16 clients of 2 images)", "some 200, the rest 503 with Retry-After",
                f"codes {codes}; {len(retry)} refused, Retry-After {sorted(set(retry))}",
                200 in codes and 503 in codes and set(codes) <= {200, 503} and all(retry))
    finally:
        stop_server(process)


def sigterm(p: Pass, checkpoint: Path, good: bytes) -> None:
    process, url = start_server(checkpoint, "--max-batch", "64", "--max-wait-ms", "1500", "--grace", "10",
                                "--token", TOKEN)
    with ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(post, url, good) for _ in range(8)]
        time.sleep(0.7)
        start = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        codes = [f.result(60).status_code for f in pending]
    rc = process.wait(30)
    seconds = time.perf_counter() - start
    try:
        httpx.get(url + "/health", timeout=2)
        refused = False
    except httpx.ConnectError:
        refused = True
    p.check("SIGTERM with 8 requests in flight", "all 8 answered 200, exit within --grace, then refused",
            f"codes {codes}; exit {rc} after {seconds:.1f} s; new connections refused {refused}",
            codes == [200] * 8 and seconds < 10 and refused)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still stops its servers (finally)
    p = Pass()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fault-pass-serve-") as folder:
        folder = Path(folder)
        checkpoint = fashion_checkpoint(folder / "fashion.safetensors")
        good = png_bytes(fashion_image(1))
        process, url = start_server(checkpoint, "--timeout", "3", "--max-images", "8", "--token", TOKEN)
        try:
            before = post(url, good).json()["predictions"][0]
            for _ in range(20):  # settle the allocator before measuring memory
                post(url, good)
            rss_start = rss_mb(process.pid)
            bodies(p, url)
            slow_client(p, url, good)
            bad_requests(p, url, process.pid, good, before, rss_start)
            bombs(p, url, process.pid, folder)
            truncated(p, url, good)
            tokens(p, url, good)
            alive = process.poll() is None
            p.check("the server after all of the above", "still running", "running" if alive else "exited", alive)
        finally:
            stop_server(process)
        full_queue(p, checkpoint, good)
        sigterm(p, checkpoint, good)
    width = max(len(r["case"]) for r in p.rows)
    print(f"\n{'case':<{width}}  ok   observed")
    for r in p.rows:
        print(f"{r['case']:<{width}}  {'yes' if r['ok'] else 'NO ':<4} {r['observed']}")
    report = {"benchmark": "fault_pass_serve", "cpu": cpu_name(), "commit": commit(),
              "loadavg_before": [round(v, 2) for v in load_before],
              "loadavg_after": [round(v, 2) for v in os.getloadavg()], "rows": p.rows,
              "ok": sum(r["ok"] for r in p.rows), "cases": len(p.rows)}
    write_result(args.json, report, echo=False)
    print(f"{report['ok']}/{report['cases']} cases ok; wrote {args.json}")
    return 0 if report["ok"] == report["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
