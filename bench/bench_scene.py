"""Latency per frame of a robot's stream (`pointfalip.stream.stream`), with and without reuse of unchanged objects,
by stage, and what Foxglove output adds to a frame (not a test).

    python bench/bench_scene.py [--model ViT-B-16] [--frames 20] [--baseline-frames 5] [--repeats 3] [--logs 20]

Table 1, streams: 20-frame bags (5 Hz stamps) of the static four-object tabletop below and of the same table where
the lamp moves 3 cm a frame, through `stream` with tracking, for the default recognizer preset (pointclip_v2,
10 views) and the fast one (robot_fast, PointCLIP's 6 views), in fp32 and bf16: the first frame, and the median of
the frames after it ("steady"). Without reuse every frame costs the same, so those runs stop after
``--baseline-frames``. Table 2 is the stage breakdown of one frame and the Foxglove output cost.

A 50k-point tabletop scene: a 1.2 m x 0.8 m table (2 mm noise) with four demo objects (chair, lamp, bottle,
cone) scaled to 12-25 cm, z up, in metres; each repeat moves it 1 cm so the tracker follows the objects. Stages:
segmentation, projection and encoder (the recognizer's own timings), tracking, then the Foxglove output of the
frame (`SceneChannels.log_frame`: the coloured cloud, the SceneUpdate and the transform): to an MCAP file, to the
live WebSocket server with a loopback client subscribed to every channel (the cost is the caller's: encoding and
queueing; the server sends from its own threads), and to both at once as `pointfalip scene --mcap --serve` does.
Recognition stages are the best of ``--repeats`` frames; Foxglove times are medians of ``--logs`` calls (the
MCAP's closing time shared out over them). Random weights: timing does not depend on the weights' values.
"""
import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from common import cpu_name, fp32_and_bf16

from pointfalip import Recognizer
from pointfalip.demo import demo_clouds
from pointfalip.foxglove import LiveServer, McapRecording, SceneChannels
from pointfalip.scene import SceneRecognizer, load_segmentation_config
from pointfalip.sources import BagFrame
from pointfalip.stream import stream
from pointfalip.tracking import load_tracking_config

OVERHEAD_TARGET = 0.05  # MCAP + live streaming may add at most this share to a frame
STEP = np.array([0.01, 0.0, 0.0], dtype=np.float32)  # metres the scene moves between repeats
FRAME_NS = 100_000_000  # 10 Hz stamps


def tabletop(num_points: int = 50_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    objects = [("chair", 0.25, (-0.35, -0.1)), ("lamp", 0.2, (0.3, 0.2)), ("bottle", 0.12, (0.1, -0.25)),
               ("cone", 0.15, (-0.1, 0.25))]
    clouds = demo_clouds(num_points=5000)
    parts = []
    for name, size, (x, y) in objects:
        pts = clouds[name][:, [0, 2, 1]] * [1, -1, 1]  # y-up demo object -> z up
        pts = pts - [pts[:, 0].mean(), pts[:, 1].mean(), pts[:, 2].min()]
        pts = pts / np.ptp(pts, axis=0).max() * size
        parts.append(pts + [x, y, 0.0])
    n_table = num_points - sum(len(p) for p in parts)
    table = np.c_[rng.uniform(-0.6, 0.6, n_table), rng.uniform(-0.4, 0.4, n_table), rng.normal(0, 0.002, n_table)]
    return np.concatenate([table] + parts).astype(np.float32)


class Subscriber:
    """A loopback Foxglove WebSocket client, in a thread, subscribed to every channel; counts what it receives."""

    def __init__(self, url: str, topics: int):
        from websockets.sync.client import connect

        self.ws = connect(url, subprotocols=["foxglove.sdk.v1"], open_timeout=10).__enter__()
        channels = {}
        while len(channels) < topics:
            reply = self.ws.recv(timeout=10)
            if isinstance(reply, str) and json.loads(reply)["op"] == "advertise":
                channels.update({c["topic"]: c["id"] for c in json.loads(reply)["channels"]})
        self.ws.send(json.dumps({"op": "subscribe", "subscriptions": [
            {"id": i, "channelId": cid} for i, cid in enumerate(channels.values())]}))
        self.messages = 0
        self.bytes = 0
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        try:
            for reply in self.ws:
                if isinstance(reply, bytes):
                    self.messages += 1
                    self.bytes += len(reply)
        except Exception:  # noqa: BLE001 - the server closed the connection
            pass

    def close(self) -> None:
        self.ws.close()
        self.thread.join(5)


def median_log_time(channels: SceneChannels, points: np.ndarray, result, count: int, stamp_ns: int) -> float:
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        channels.log_frame(points, result, stamp_ns=stamp_ns + i * FRAME_NS)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def foxglove_costs(points: np.ndarray, result, labels: list[str], count: int) -> dict[str, float]:
    """Seconds a frame's log_frame costs: to an MCAP file, to a live server with a subscriber, and to both."""
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        channels = SceneChannels(labels=labels)
        recording = McapRecording(Path(folder) / "mcap.mcap", scene=channels).__enter__()
        per_call = median_log_time(channels, points, result, count, result.stamp_ns)
        t0 = time.perf_counter()
        recording.close()
        out["mcap"] = per_call + (time.perf_counter() - t0) / count
        out["mcap_bytes"] = (Path(folder) / "mcap.mcap").stat().st_size / count

        channels = SceneChannels(labels=labels)
        with LiveServer(port=0, scene=channels) as server:
            client = Subscriber(server.url, topics=3)
            server.wait_for_subscriber(timeout=10)
            out["live"] = median_log_time(channels, points, result, count, result.stamp_ns)
            time.sleep(0.5)
            out["live_received"] = client.messages
            client.close()

        channels = SceneChannels(labels=labels)
        recording = McapRecording(Path(folder) / "both.mcap", scene=channels).__enter__()
        with LiveServer(port=0, scene=channels) as server:
            client = Subscriber(server.url, topics=3)
            server.wait_for_subscriber(timeout=10)
            per_call = median_log_time(channels, points, result, count, result.stamp_ns)
            t0 = time.perf_counter()
            recording.close()
            out["both"] = per_call + (time.perf_counter() - t0) / count
            client.close()
    return out


MOVER_STEP = 0.03  # metres a frame the moving bag's lamp moves (beyond reuse_max_move, within the tracking gate)
PERIOD_NS = 200_000_000  # 5 Hz


def moving_lamp(scene: np.ndarray, frame: int) -> np.ndarray:
    """The tabletop with the lamp (the object around (0.3, 0.2)) moved MOVER_STEP * frame along y."""
    out = scene.copy()
    lamp = (np.abs(out[:, 0] - 0.3) < 0.12) & (np.abs(out[:, 1] - 0.2) < 0.12) & (out[:, 2] > 0.006)
    out[lamp, 1] += MOVER_STEP * frame
    return out


def stream_latency(model, preset: str, clouds: list, reuse: bool) -> tuple[float, float, int]:
    """(first frame s, median of the later frames s, objects encoded in the later frames) of one stream."""
    rec = Recognizer(model, dataset="modelnet40", preset=preset, up_axis="z")
    scene = SceneRecognizer(rec, load_segmentation_config("tabletop"), top_k=3, track=True,
                            tracking=load_tracking_config("tabletop"), reuse=reuse)
    frames = [BagFrame(k * PERIOD_NS, c, "table") for k, c in enumerate(clouds)]
    totals, encoded = [], 0
    for k, item in enumerate(stream(scene, frames)):
        totals.append(item.result.timings["total"])
        encoded += sum(not o.reused for o in item.result.objects) if k else 0
    return totals[0], statistics.median(totals[1:]), encoded


def latency_table(models, frames: int, baseline_frames: int) -> None:
    static = tabletop()
    bags = {"static": [static] * frames, "one moving": [moving_lamp(static, k) for k in range(frames)]}
    segment_warm = SceneRecognizer(Recognizer(models[0][1], labels=["a"]), load_segmentation_config("tabletop"))
    segment_warm.recognize(static)  # imports open3d and warms the caches outside the timings
    print("| precision | preset | bag | reuse | frames | first frame (s) | steady median (s) | "
          "objects encoded after frame 0 |")
    print("|---|---|---|---|---|---|---|---|")
    for precision, model in models:
        for preset in ("pointclip_v2", "robot_fast"):
            for bag, clouds in bags.items():
                for reuse in (True, False):
                    if not reuse and bag != "static":
                        continue  # without reuse a moving object costs what a static one does
                    used = clouds if reuse else clouds[:baseline_frames]
                    first, steady, encoded = stream_latency(model, preset, used, reuse)
                    print(f"| {precision} | {preset} | {bag} | {'yes' if reuse else 'no'} | {len(used)} | {first:.2f} | "
                          f"{steady:.3f} | {encoded} of {4 * (len(used) - 1)} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--frames", type=int, default=20, help="frames of each bag streamed with reuse")
    ap.add_argument("--baseline-frames", type=int, default=5, help="frames streamed without reuse")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--logs", type=int, default=20, help="log_frame calls a Foxglove time is the median of")
    ap.add_argument("--skip-stages", action="store_true", help="only the stream table")
    args = ap.parse_args()
    scene = tabletop()
    fp32, bf16 = fp32_and_bf16(args.model)
    print(f"{args.model}, {len(scene)}-point tabletop scene with 4 objects, CPU: {cpu_name()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print()
    latency_table([("fp32", fp32), ("bf16", bf16)], args.frames, args.baseline_frames)
    if args.skip_stages:
        return
    print()
    print(f"One frame by stage (no reuse): best of {args.repeats} frames; Foxglove: median of {args.logs} calls")
    print("| precision | objects | segmentation (s) | projection (s) | encoder (s) | tracking (ms) | MCAP write (ms) | "
          "live stream (ms) | MCAP + live (ms) | total per frame (s) | MCAP + live share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        recognizer = SceneRecognizer(Recognizer(model, dataset="modelnet40", up_axis="z"),
                                     load_segmentation_config("tabletop"), top_k=3, track=True,
                                     tracking=load_tracking_config("tabletop"), reuse=False)
        recognizer.recognize(scene, stamp_ns=0)  # warm-up
        best = None
        for i in range(1, args.repeats + 1):
            result = recognizer.recognize(scene + i * STEP, stamp_ns=i * FRAME_NS, frame_id="camera")
            if best is None or result.timings["total"] < best.timings["total"]:
                best, best_points = result, scene + i * STEP
        assert len({o.id for o in best.objects}) == len(best.objects) and all(o.id is not None for o in best.objects)
        fox = foxglove_costs(best_points, best, recognizer.recognizer.labels, args.logs)
        t = best.timings
        frame = t["total"] + fox["both"]
        share = fox["both"] / frame
        print(f"| {name} | {len(best.objects)} | {t['segmentation']:.2f} | {t.get('projection', 0):.3f} | "
              f"{t.get('encoder', 0):.2f} | {t['tracking'] * 1e3:.2f} | {fox['mcap'] * 1e3:.1f} | "
              f"{fox['live'] * 1e3:.1f} | {fox['both'] * 1e3:.1f} | {frame:.2f} | {share:.2%} |")
        notes.append(f"{name}: MCAP {fox['mcap_bytes'] / 1e6:.2f} MB a frame; the live client received "
                     f"{fox['live_received']} of {3 * args.logs} messages; MCAP + live share {share:.2%} "
                     f"({'within' if share <= OVERHEAD_TARGET else 'ABOVE'} the {OVERHEAD_TARGET:.0%} target)")
    print()
    for line in notes:
        print(line)


if __name__ == "__main__":
    main()
