"""What the ROS 2 node's DDS transport adds to a frame: publish -> detections received over loopback DDS, beside the
in-process `stream` latency of the same frames (not a test).

    python bench/bench_ros2.py [--model ViT-B-32] [--frames 8] [--warmup 2] [--points 50000] [--pause 0.5]

A static 50k-point tabletop (bench_scene.tabletop: a table and four objects, z up) is sent as
``sensor_msgs/msg/PointCloud2`` (x, y, z, intensity: float32, 16 bytes a point) by a publisher in this process,
with ROS 2's default QoS, to ``pointfalip ros2 --transport dds`` started as a subprocess (Cyclone DDS, confined to the
loopback interface and a private domain by the configuration below); the latency is the time from the publisher's
``write`` (its serialisation included) until the Detection3DArray with the cloud's stamp is taken by a reliable
subscriber here. The same frames go, one by one and interleaved with the DDS ones, through `pointfalip.stream.stream`
in this process with the same settings (no sinks): the in-process latency. Both with and without reuse (a static
scene: with reuse, the objects keep their view features after the first frame), each after ``--pause`` seconds of
rest (compute threads spin a while after work: the other process' would be timed too). Medians over the frames after
``--warmup``. "node" is the node's own latency (message handed over by Cyclone -> answer published, from its log
lines); "wire" (DDS - publisher's serialisation - node) is what the transfer and Cyclone's ends cost beyond it. The
publisher's serialisation (Python packs the 800 kB of a cloud's data one int at a time) is measured apart and left
out of ratio* (the goal's, <= 1.05): a ROS 2 driver in C++ copies the bytes. Random weights: timings do not depend
on the weights' values.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scene import tabletop  # noqa: E402

from common import cpu_name  # noqa: E402

from pointfalip.ros2 import messages  # noqa: E402
from pointfalip.scene import SceneSettings  # noqa: E402
from pointfalip.sources import BagFrame  # noqa: E402
from pointfalip.stream import stream  # noqa: E402

GOAL = 1.05  # DDS latency / in-process latency
LABELS = "chair,lamp,bottle,cone,mug,bowl"
DOMAIN = 200 + os.getpid() % 30  # a private domain: not ROS' 0, apart from tests running beside
LOOPBACK_XML = """<CycloneDDS xmlns="https://cdds.io/config"><Domain Id="any">
  <General><Interfaces><NetworkInterface name="lo" multicast="false"/></Interfaces>
    <AllowMulticast>false</AllowMulticast></General>
  <Discovery><ParticipantIndex>auto</ParticipantIndex><MaxAutoParticipantIndex>20</MaxAutoParticipantIndex>
    <Peers AddLocalhost="false"><Peer address="127.0.0.1"/></Peers></Discovery>
</Domain></CycloneDDS>
"""
FLOAT32 = 7  # sensor_msgs/PointField datatype
TIMEOUT_S = 600.0  # one answer at most (a lost best-effort cloud is sent again after it)


def cloud_message(points: np.ndarray, stamp_ns: int) -> "messages.PointCloud2":
    records = np.zeros((len(points), 4), np.float32)
    records[:, :3] = points
    fields = [messages.PointField(name=n, offset=4 * i, datatype=FLOAT32, count=1) for i, n in enumerate("xyzi")]
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return messages.PointCloud2(
        header=messages.Header(stamp=messages.Time(sec=sec, nanosec=nanosec), frame_id="base_link"), height=1,
        width=len(points), fields=fields, is_bigendian=False, point_step=16, row_step=16 * len(points),
        data=records.view(np.uint8).reshape(-1).tolist(), is_dense=True)


class Node:
    """`pointfalip ros2 --transport dds` as a subprocess; its stderr lines collected by a thread."""

    def __init__(self, args, reuse: bool):
        cmd = [sys.executable, "-m", "pointfalip", "ros2", "--transport", "dds", "--labels", LABELS,
               "--model", args.model, "--pretrained", "none", "--precision", "fp32", "--device", "cpu"]
        self.proc = subprocess.Popen(cmd + ([] if reuse else ["--no-reuse"]), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if "recognising" in line:
                self.ready.set()

    def latencies_ms(self) -> list[float]:
        return [float(m.group(1)) for m in (re.search(r"latency (\d+) ms", x) for x in self.lines) if m]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def measure(args, points: np.ndarray, reuse: bool) -> dict:
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.pub import DataWriter
    from cyclonedds.qos import Policy, Qos
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic
    from cyclonedds.util import duration

    node = Node(args, reuse)
    scene = SceneSettings(labels=LABELS, model=args.model, pretrained="none", precision="fp32", device="cpu",
                          up_axis="z", reuse=reuse).build()
    try:
        if not node.ready.wait(TIMEOUT_S):
            raise SystemExit("the node did not start:\n" + "\n".join(node.lines))
        qos = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.Durability.Volatile,
                  Policy.History.KeepLast(10))  # ROS 2's default profile
        p = DomainParticipant(DOMAIN)
        writer = DataWriter(p, Topic(p, "rt/points", messages.PointCloud2), qos=qos)
        reader = DataReader(p, Topic(p, "rt/pointfalip/detections", messages.Detection3DArray), qos=qos)
        while not (writer.get_publication_matched_status().current_count
                   and reader.get_subscription_matched_status().current_count):
            time.sleep(0.05)
        local, wire, serialise, lost = [], [], [], 0
        for k in range(args.warmup + args.frames):
            stamp = 1_700_000_000_000_000_000 + k * 100_000_000
            time.sleep(args.pause)  # the other process' compute threads go idle (they spin a while after work)
            t0 = time.perf_counter()
            for _ in stream(scene, [BagFrame(stamp, points, "base_link")]):
                pass
            local.append(time.perf_counter() - t0)
            msg = cloud_message(points, stamp)
            t0 = time.perf_counter()
            msg.serialize(use_version_2=False)  # what write() does first: the Python publisher's own cost
            serialise.append(time.perf_counter() - t0)
            time.sleep(args.pause)
            answered = None
            while answered is None:
                t0 = time.perf_counter()
                writer.write(msg)
                end = t0 + TIMEOUT_S
                while answered is None and time.perf_counter() < end:
                    for s in reader.take(N=10):
                        if s.sample_info.valid_data and s.header.stamp.sec * 10**9 + s.header.stamp.nanosec == stamp:
                            answered = time.perf_counter() - t0
                    time.sleep(0.001)
                lost += answered is None
            wire.append(answered)
        node_ms = node.latencies_ms()
    finally:
        node.stop()
    steady = slice(args.warmup, None)
    return {"local": statistics.median(local[steady]) * 1e3, "dds": statistics.median(wire[steady]) * 1e3,
            "serialise": statistics.median(serialise[steady]) * 1e3,
            "node": statistics.median(node_ms[-args.frames:]) if node_ms else float("nan"), "lost": lost,
            "objects": len(scene.recognize(points).objects)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--frames", type=int, default=8, help="frames measured after the warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of rest before each timed frame")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="bench_ros2_")
    config = Path(folder) / "loopback.xml"
    config.write_text(LOOPBACK_XML)
    os.environ.update(CYCLONEDDS_URI=config.as_uri(), ROS_DOMAIN_ID=str(DOMAIN))  # this process and the node's

    points = tabletop(args.points)
    rows = [(reuse, measure(args, points, reuse)) for reuse in (True, False)]
    print(f"CPU: {cpu_name()}; model {args.model} (random weights, fp32); {len(points)} points "
          f"({16 * len(points) / 1e6:.1f} MB a cloud); medians of {args.frames} frames after {args.warmup}")
    print(f"{'reuse':<6} {'objects':>7} {'in-process ms':>14} {'DDS ms':>9} {'pub. ser. ms':>13} {'node ms':>8} "
          f"{'wire ms':>8} {'ratio':>6} {'ratio*':>7} {'goal':>5} {'lost':>5}")
    for reuse, r in rows:
        ratio, ratio_c = r["dds"] / r["local"], (r["dds"] - r["serialise"]) / r["local"]
        print(f"{'on' if reuse else 'off':<6} {r['objects']:>7} {r['local']:>14.1f} {r['dds']:>9.1f} "
              f"{r['serialise']:>13.1f} {r['node']:>8.0f} {r['dds'] - r['serialise'] - r['node']:>8.1f} "
              f"{ratio:>6.3f} {ratio_c:>7.3f} {'ok' if ratio_c <= GOAL else 'over':>5} {r['lost']:>5}")
    print("DDS: publish (write) -> Detection3DArray taken here; pub. ser.: the Python publisher's serialisation inside "
          "write (a C++ driver's is a copy); node: the node's own latency, message in -> answer out (its log, whole ms); wire: DDS - "
          "pub. ser. - node; ratio = DDS / in-process, ratio* = (DDS - pub. ser.) / in-process (the goal's)")


if __name__ == "__main__":
    main()
