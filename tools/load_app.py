"""The page under load: App.py served in its own process, --clients gradio_client clients at
once, each sending --requests requests (a mask upload or a click on the example's instance
map, over the example's four regions). Prints whether every answer equals the API's
(RegionClassifier's classes and probabilities, and the heat maps of App.analyse alone), the
server's peak memory (VmHWM) and its growth under the load, the seconds of each answer, and
how many were answered "busy" (beyond App.py's --QUEUE).

    python tools/load_app.py                                   # an untrained ResNet-18, 8 clients
    python tools/load_app.py --checkpoint logs/demo/best.pt --clients 8 --queue 2
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from App import analyse  # noqa: E402
from AttentionNet import AttentionNet  # noqa: E402
from RegionClassifier import RegionClassifier  # noqa: E402
from roilib.imageio import read_image, read_label_map, read_mask  # noqa: E402
from roilib.paths import REPO, find_path  # noqa: E402

MIB = 2 ** 20


def memory(pid, field):
    with open(f"/proc/{pid}/status") as file:
        return next(int(line.split()[1]) * 1024 for line in file if line.startswith(field + ":"))


def start_page(checkpoint, queue, threads):
    """App.py on a free port in a process of its own -> (process, url), once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    page = subprocess.Popen([sys.executable, os.path.join(REPO, "App.py"), f"--CHECKPOINT={checkpoint}",
                             f"--PORT={port}", "--DEVICE=cpu", "--EXAMPLES=0", "--CAMVID=",
                             *([f"--QUEUE={queue}"] if queue else [])],
                            env=dict(os.environ, OMP_NUM_THREADS=str(threads)), stdout=subprocess.DEVNULL)
    for _ in range(600):
        if page.poll() is not None:
            raise SystemExit(f"App.py stopped (exit code {page.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return page, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.1)
    page.kill()
    raise SystemExit("App.py did not answer within a minute")


def expected_answers(checkpoint, topk):
    """Per example region: (scores, attention, Grad-CAM) of App.analyse alone (the API's numbers)."""
    classifier = RegionClassifier.from_pretrained(checkpoint, device="cpu")
    photo = read_image(find_path("Test/example.png"))
    answers = []
    for i in range(1, 5):
        scores, _, attention, cam, _ = analyse(classifier, photo, read_mask(find_path(f"Test/example_mask{i}.png")), topk)
        answers.append((scores, attention, cam))
    return answers


def request(client, index, handle):
    """One page request for example region `index` (even: mask upload, odd: map click)."""
    editor = {"background": handle(find_path("Test/example.png")), "layers": [], "composite": None}
    region = index % 4 + 1
    if index % 2 == 0:
        return client.predict(editor, handle(find_path(f"Test/example_mask{region}.png")), api_name="/classify_mask")
    mask = read_mask(find_path(f"Test/example_mask{region}.png"))
    ys, xs = np.nonzero(mask)
    labels = find_path("Test/example_labels.png")
    assert read_label_map(labels)[ys[len(ys) // 2], xs[len(xs) // 2]] == region
    return client.predict(editor, handle(labels), True, int(xs[len(xs) // 2]), int(ys[len(ys) // 2]),
                          api_name="/classify_click")


def same_answer(output, expected):
    scores, _, attention, cam, message = output
    if scores is None or attention is None:
        return False, message
    found = {c["label"]: round(c["confidence"], 4) for c in scores["confidences"]}
    pictures = [cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB) for path in (attention, cam)]
    same = found == expected[0] and all(np.array_equal(p, e) for p, e in zip(pictures, expected[1:]))
    return same, message


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="", help="default: an untrained ResNet-18, 10 classes, 160x160")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="per client")
    parser.add_argument("--queue", type=int, default=0, help="App.py's --QUEUE (0: its default)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the page's process")
    args = parser.parse_args()
    from gradio_client import Client, handle_file
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint
        if not checkpoint:
            checkpoint = os.path.join(folder, "resnet18.pt")
            AttentionNet(10, arch="resnet18").save(checkpoint, window=[160, 160])
        expected = expected_answers(checkpoint, 5)
        page, url = start_page(checkpoint, args.queue, args.threads)
        try:
            warm = Client(url, verbose=False)
            same_answer(request(warm, 0, handle_file), expected[0])   # the first answer loads lazily
            start = time.perf_counter()
            same_answer(request(warm, 1, handle_file), expected[1])
            alone = time.perf_counter() - start
            idle = memory(page.pid, "VmRSS")

            def client_run(client_index):
                client = Client(url, verbose=False)
                rows = []
                for k in range(args.requests):
                    index = client_index + k
                    start = time.perf_counter()
                    try:
                        same, message = same_answer(request(client, index, handle_file), expected[index % 4])
                        rows.append(("same" if same else f"DIFFERENT ({message})", time.perf_counter() - start))
                    except Exception as error:   # Gradio's "queue is full": busy
                        busy = "queue is full" in str(error).lower()
                        rows.append(("busy" if busy else f"ERROR {type(error).__name__}: {error}",
                                     time.perf_counter() - start))
                return rows
            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                rows = [row for rows in pool.map(client_run, range(args.clients)) for row in rows]
            wall = time.perf_counter() - start
            peak = memory(page.pid, "VmHWM")
        finally:
            page.terminate()
            page.wait()
    answered = [seconds for outcome, seconds in rows if outcome == "same"]
    others = [outcome for outcome, _ in rows if outcome not in ("same", "busy")]
    print(f"{args.clients} clients x {args.requests} requests, App.py --QUEUE={args.queue or 'default'}, "
          f"{args.threads} torch threads, {wall:.1f} s in all")
    print(f"  answers equal to the API's: {len(answered)} of {len(rows)}; busy: "
          f"{sum(o == 'busy' for o, _ in rows)}; other: {len(others)}{' ' + others[0] if others else ''}")
    if answered:
        print(f"  seconds per answer (client side, queue included): median {np.median(answered):.2f}, "
              f"min {min(answered):.2f}, max {max(answered):.2f}; one client alone: {alone:.2f}")
    print(f"  server memory: {idle / MIB:.0f} MiB after one request, peak {peak / MIB:.0f} MiB "
          f"(+{(peak - idle) / MIB:.0f} MiB under the load)")
    return 0 if not others else 1


if __name__ == "__main__":
    sys.exit(main())
