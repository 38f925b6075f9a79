"""Bounded load test of the search service on loopback.

Starts `chan serve` on a free port (or targets --url), then C concurrent clients send
text -> image searches (caption texts of the index as queries) and, for a share of
requests, image -> caption searches by gallery image id, for D seconds. Prints
throughput, latency percentiles per route and every non-200 status; with --json the
last line is one JSON object with every figure.

    python benchmarks/load_test.py --index IDX --checkpoint CKPT --clients 16 --duration 30
    python benchmarks/load_test.py --index IDX --checkpoint CKPT --reload-damaged-every 5

With --reload-damaged-every S the server gets an API key, and every S seconds it is asked
to reload a damaged copy of the index (files list emptied, random bytes, storage
float64, a count off by one, a flipped byte in the vectors): every reload must be
refused with 409 and one clean line while the searches go on without an error.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True, help="index to serve and query")
    parser.add_argument("--checkpoint", type=Path, help="its checkpoint (default: manifest's)")
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds not measured")
    parser.add_argument(
        "--image-share", type=float, default=0.2, help="share of image -> caption requests (0.2)"
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--server-flag",
        action="append",
        default=[],
        help="extra `chan serve` flag: --server-flag=--inference-threads=2",
    )
    parser.add_argument(
        "--reload-damaged-every",
        type=float,
        default=0.0,
        metavar="S",
        help="every S seconds ask POST /v1/admin/reload for a damaged copy of the index "
        "(several kinds in turn); each must be refused with 409 while searches go on",
    )
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


API_KEY = "load-test-key"  # set on the server this script starts when it reloads


def damaged_copies(index: Path, root: Path) -> dict[str, Path]:
    """Copies of the index (hard links, but for the damaged file) broken as a careless
    operator or a bad disk would: name -> directory."""
    from index_builder.format import durable
    from index_builder.format import layout as fmt
    from index_builder.format import manifest as schema

    manifest = json.loads((index / fmt.MANIFEST).read_text())

    def resealed(change) -> bytes:
        copy = json.loads(json.dumps(manifest))
        change(copy)
        copy[schema.CHECKSUM_KEY] = schema.checksum(copy)
        return json.dumps(copy).encode()

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.unlink()  # a hard link: write a new file, never through the link
        path.write_bytes(bytes(data))

    edits = {
        "files emptied": lambda d: (d / fmt.MANIFEST).write_bytes(
            resealed(lambda m: m.update(files={}))),
        "manifest of random bytes": lambda d: (d / fmt.MANIFEST).write_bytes(os.urandom(64)),
        "storage float64": lambda d: (d / fmt.MANIFEST).write_bytes(
            resealed(lambda m: m.update(storage="float64"))),
        "images off by one": lambda d: (d / fmt.MANIFEST).write_bytes(resealed(
            lambda m: m["counts"].update(images=m["counts"]["images"] + 1))),
        "a flipped byte in regions.npy": lambda d: flip(d / "seg000" / "regions.npy"),
    }  # fmt: skip
    copies = {}
    for number, (name, edit) in enumerate(edits.items()):
        target = root / f"damaged{number}"
        durable.link_tree(index, target, skip={fmt.MANIFEST})
        (target / fmt.MANIFEST).write_bytes((index / fmt.MANIFEST).read_bytes())
        edit(target)
        copies[name] = target
    return copies


class Reloader(threading.Thread):
    """Asks the server to reload a damaged index every `every_s` seconds."""

    def __init__(self, base: str, copies: dict[str, Path], every_s: float, stop_at: float):
        super().__init__(daemon=True)
        self.base, self.copies, self.every_s, self.stop_at = base, copies, every_s, stop_at
        self.results: list[dict] = []

    def run(self) -> None:
        names = list(self.copies)
        while time.monotonic() + self.every_s < self.stop_at:
            time.sleep(self.every_s)
            name = names[len(self.results) % len(names)]
            body = json.dumps({"index": str(self.copies[name])}).encode()
            request = urllib.request.Request(
                f"{self.base}/v1/admin/reload", data=body, method="POST",
                headers={"Content-Type": "application/json", "X-API-Key": API_KEY},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    status, payload = response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                status, payload = exc.code, json.loads(exc.read() or b"{}")
            message = (payload.get("error") or {}).get("message", "")
            self.results.append({"damage": name, "status": status, "message": message})


def queries(index: Path, count: int = 2000) -> tuple[list[str], list[str]]:
    """Caption texts and image ids of live rows, drawn from the index metadata."""
    from index_builder.format import layout as fmt
    from index_builder.format.metadata import MetadataStore

    store = MetadataStore.open(index / fmt.METADATA)
    try:
        totals, rng = store.counts(), np.random.default_rng(0)
        caption_rows = rng.integers(0, totals["captions"], count).tolist()
        image_rows = rng.integers(0, totals["images"], count).tolist()
        texts = [c.text for c in store.captions(caption_rows) if not c.deleted]
        ids = [i.image_id for i in store.images(image_rows) if not i.deleted]
    finally:
        store.close()
    return texts, ids


def start_server(args) -> tuple[str, subprocess.Popen]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        "--index",
        str(args.index),
        "--port",
        str(port),
        "--queue-size",
        "64",
        *args.server_flag,
    ]
    if args.checkpoint:
        command += ["--checkpoint", str(args.checkpoint)]
    log = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the server
    env = {**os.environ, "CHAN_API_KEY": API_KEY} if args.reload_damaged_every else None
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
                if response.status == 200:
                    return base, process
        except OSError:
            time.sleep(0.5)
        if process.poll() is not None:
            break
    process.kill()
    raise SystemExit("the server did not become ready")


class Client(threading.Thread):
    """One keep-alive connection sending requests back to back."""

    def __init__(self, base: str, texts, ids, args, stop_at: float, measure_from: float, seed):
        super().__init__(daemon=True)
        host, port = base.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        self.texts, self.ids, self.args = texts, ids, args
        self.stop_at, self.measure_from = stop_at, measure_from
        self.random = random.Random(seed)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.statuses: Counter = Counter()

    def run(self) -> None:
        while time.monotonic() < self.stop_at:
            if self.random.random() < self.args.image_share:
                route = "/v1/search/captions"
                body = {"image_id": self.random.choice(self.ids), "k": self.args.k}
            else:
                route = "/v1/search/images"
                body = {"text": self.random.choice(self.texts), "k": self.args.k}
            started = time.monotonic()
            try:
                headers = {"Content-Type": "application/json"}
                if self.args.reload_damaged_every:
                    headers["X-API-Key"] = API_KEY
                self.connection.request("POST", route, json.dumps(body), headers)
                response = self.connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = "connection error"
                self.connection.close()
            if started >= self.measure_from:
                self.statuses[status] += 1
                if status == 200:
                    self.latency[route].append(time.monotonic() - started)


def run(args) -> dict:
    texts, ids = queries(args.index)
    process = None
    base = args.url
    if base is None:
        base, process = start_server(args)
    scratch = tempfile.TemporaryDirectory(prefix="chan-load-")
    reloader = None
    try:
        copies = damaged_copies(args.index, Path(scratch.name)) if args.reload_damaged_every else {}
        start = time.monotonic()
        measure_from = start + args.warmup
        stop_at = measure_from + args.duration
        clients = [
            Client(base, texts, ids, args, stop_at, measure_from, seed)
            for seed in range(args.clients)
        ]
        if copies:
            reloader = Reloader(base, copies, args.reload_damaged_every, stop_at)
            reloader.start()
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        if reloader is not None:
            reloader.join()
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        scratch.cleanup()
    statuses: Counter = sum((c.statuses for c in clients), Counter())
    report = {
        "clients": args.clients,
        "duration_s": args.duration,
        "url": base,
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": sum(v for k, v in statuses.items() if k != 200),
        "overloaded_503": statuses.get(503, 0),
        "routes": {},
    }
    if reloader is not None:
        refused = [r for r in reloader.results if r["status"] == 409]
        report["reloads"] = {
            "attempts": len(reloader.results),
            "refused_409": len(refused),
            "clean_lines": sum(
                r["message"].startswith("still serving the previous index:")
                and "\n" not in r["message"]
                for r in refused
            ),
            "results": reloader.results,
        }
    report["throughput_rps"] = round(statuses.get(200, 0) / args.duration, 2)
    for route in ("/v1/search/images", "/v1/search/captions"):
        values = [v for c in clients for v in c.latency[route]]
        if values:
            ms = np.array(values) * 1000
            report["routes"][route] = {
                "ok": len(values),
                "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p90_ms": round(float(np.percentile(ms, 90)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1),
            }
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(
        f"load test: {report['clients']} clients x {report['duration_s']} s against "
        f"{report['url']}: {report['requests']} requests, {report['throughput_rps']} ok/s, "
        f"{report['errors']} not ok ({report['statuses']})"
    )
    for route, figures in report["routes"].items():
        print(
            f"  {route}: {figures['ok']} ok, p50 {figures['p50_ms']} ms, "
            f"p90 {figures['p90_ms']} ms, p99 {figures['p99_ms']} ms"
        )
    reloads = report.get("reloads")
    if reloads:
        print(f"  reloads of damaged copies: {reloads['attempts']}, refused with 409: "
              f"{reloads['refused_409']}, with a clean one-line message: "
              f"{reloads['clean_lines']}")  # fmt: skip
        for result in reloads["results"]:
            print(f"    {result['damage']}: {result['status']} {result['message']}")
    if args.json:
        print(json.dumps(report))
    reloads_ok = not reloads or reloads["refused_409"] == reloads["attempts"] > 0
    return 0 if report["errors"] == 0 and reloads_ok else 1


if __name__ == "__main__":
    sys.exit(main())
