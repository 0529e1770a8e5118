"""Load test: N concurrent gradio_client clients against one app served on 127.0.0.1.

Starts a diffusion app (default `gradio_canny2image.py`, which runs the bundled tiny demo model when the real
checkpoint is absent) as a child process bound to loopback only, then runs `--clients` threads, each with its
own `gradio_client.Client`, sending Run requests until `--requests` have been sent or `--time-limit` seconds
have passed. Reports throughput, p50/p95 latency (queue wait included: the apps run one job at a time),
errors by message, and the server's resident memory (RSS) after the warm-up and after every `--rss-every`
requests; the run fails (exit 1) when RSS grew by more than `--max-rss-growth-mb` after the warm-up, or any
request failed.

    python -m bench.load_test                                      # 4 clients, 200 requests, tiny demo model
    python -m bench.load_test --clients 8 --requests 400 --steps 4
    python -m bench.load_test --config tests/configs/cldm_tiny.yaml --ckpt my_tiny.safetensors --resolution 64
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # never anything else: the load test must not expose the app


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def circle_png(folder: Path, size: int = 128) -> Path:
    """A white circle outline on black, the kind of input the tiny Fill50K model was trained on."""
    image = cv2.circle(np.zeros((size, size, 3), np.uint8), (size // 2, size // 2), size // 3, (255, 255, 255), 2)
    path = folder / "circle.png"
    cv2.imwrite(str(path), image)
    return path


def start_app(args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / args.app), "--host", HOST, "--port", str(port), "--device", "cpu",
               "--queue-size", str(max(16, args.clients))]
    if args.config:
        command += ["--config", args.config]
    if args.ckpt:
        command += ["--ckpt", args.ckpt]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def wait_until_serving(process: subprocess.Popen, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            last = (process.stderr.read().strip().splitlines() or ["(no output)"])[-1]
            raise SystemExit(f"error: the app exited with {process.returncode}: {last}")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"error: the app did not start serving within {timeout:.0f} s")


def percentile(values: List[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Load:
    """Shared state of the client threads: how many requests were sent, their latencies and errors."""

    def __init__(self, total: int, deadline: float):
        self.total, self.deadline = total, deadline
        self.sent = 0
        self.latencies: List[float] = []
        self.errors: dict = {}
        self.lock = threading.Lock()

    def claim(self) -> bool:
        with self.lock:
            if self.sent >= self.total or time.monotonic() >= self.deadline:
                return False
            self.sent += 1
            return True

    def record(self, latency: Optional[float], error: Optional[str] = None) -> None:
        with self.lock:
            if error is None:
                self.latencies.append(latency)
            else:
                key = error.splitlines()[0][:120] if error else "(empty message)"
                self.errors[key] = self.errors.get(key, 0) + 1


def client_loop(url: str, load: Load, request: dict, downloads: Path) -> None:
    from gradio_client import Client
    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(downloads))
    while load.claim():
        start = time.monotonic()
        try:
            gallery = client.predict(**request, api_name="/run")
            assert len(gallery) == 1 + request["num_samples"], f"{len(gallery)} gallery items"
            load.record(time.monotonic() - start)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            load.record(None, f"{type(e).__name__}: {e}")


def run(args: argparse.Namespace) -> dict:
    from gradio_client import handle_file
    work = Path(tempfile.mkdtemp(prefix="load-test-"))
    port = free_port()
    app = start_app(args, port)
    try:
        wait_until_serving(app, port, args.start_timeout)
        server = psutil.Process(app.pid)
        url = f"http://{HOST}:{port}/"
        request = dict(input_image=handle_file(str(circle_png(work))), prompt=args.prompt, num_samples=1,
                       image_resolution=args.resolution, ddim_steps=args.steps, seed=1)
        warm = Load(args.warmup, time.monotonic() + args.time_limit)
        client_loop(url, warm, request, work)
        if warm.errors:
            raise SystemExit(f"error: the warm-up requests failed: {warm.errors}")
        rss = [(0, server.memory_info().rss)]
        load = Load(args.requests, time.monotonic() + args.time_limit)
        threads = [threading.Thread(target=client_loop, args=(url, load, request, work / f"c{i}"), daemon=True)
                   for i in range(args.clients)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.25)
            done = len(load.latencies) + sum(load.errors.values())
            if done // args.rss_every > (len(rss) - 1):
                rss.append((done, server.memory_info().rss))
        wall = time.monotonic() - start
        done = len(load.latencies) + sum(load.errors.values())
        rss.append((done, server.memory_info().rss))
    finally:
        app.terminate()
        try:
            app.wait(timeout=20)
        except subprocess.TimeoutExpired:
            app.kill()
    lat = load.latencies
    growth_mb = (rss[-1][1] - rss[0][1]) / 2**20
    return {
        "app": args.app, "clients": args.clients, "requests": done, "ok": len(lat), "errors": load.errors,
        "wall_s": round(wall, 2), "throughput_rps": round(len(lat) / wall, 3) if wall else None,
        "p50_s": round(percentile(lat, 50), 3), "p95_s": round(percentile(lat, 95), 3),
        "max_s": round(max(lat), 3) if lat else None,
        "rss_mb": [(n, round(b / 2**20, 1)) for n, b in rss], "rss_growth_mb": round(growth_mb, 1),
        "rss_bound_mb": args.max_rss_growth_mb, "within_bound": growth_mb <= args.max_rss_growth_mb,
        "time_limited": done < args.requests,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--app", default="gradio_canny2image.py", help="app script to serve (default: %(default)s)")
    p.add_argument("--config", help="model yaml passed to the app (default: the app's choice)")
    p.add_argument("--ckpt", help="checkpoint passed to the app (default: the app's choice)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default: %(default)s)")
    p.add_argument("--requests", type=int, default=200, help="requests in all, after the warm-up (%(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="requests sent first, one at a time (%(default)s)")
    p.add_argument("--time-limit", type=float, default=600, help="stop sending after this many seconds (%(default)s)")
    p.add_argument("--steps", type=int, default=2, help="DDIM steps per request (default: %(default)s)")
    p.add_argument("--resolution", type=int, default=128, help="image resolution (default: %(default)s)")
    p.add_argument("--prompt", default="red circle with blue background")
    p.add_argument("--rss-every", type=int, default=50, help="sample the server's RSS every N requests")
    p.add_argument("--max-rss-growth-mb", type=float, default=150.0,
                   help="fail when the server's RSS grows more than this after the warm-up (default: %(default)s)")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for the app to serve")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.requests < 1:
        raise SystemExit("error: --clients and --requests must be >= 1")
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['app']}: {result['clients']} clients, {result['requests']} requests in {result['wall_s']} s"
              f"{' (time limit reached)' if result['time_limited'] else ''}")
        print(f"  throughput {result['throughput_rps']} requests/s; latency p50 {result['p50_s']} s, p95 "
              f"{result['p95_s']} s, max {result['max_s']} s")
        print(f"  errors: {sum(result['errors'].values())} {result['errors'] or ''}")
        print(f"  server RSS (MB) after N requests: {result['rss_mb']}; growth {result['rss_growth_mb']} MB "
              f"(bound {result['rss_bound_mb']} MB)")
    if result["errors"] or not result["within_bound"]:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
