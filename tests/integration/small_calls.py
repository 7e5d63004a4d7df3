"""Calls a small model at a steady pace from a process of its own, so that the work of whoever
sends large calls cannot delay these, and reports how late each answer came.

    python -m tests.integration.small_calls TARGET MODEL

prints ``ready`` once connected, then calls MODEL every 10 ms (a 1x4 FP64 row, the stock
tritonclient) until its stdin closes, and prints the latencies in seconds as one JSON list. Each
latency runs from when the call was due, so a pod that stalls for a second counts a second's worth
of late answers, not one.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as tc

PERIOD_S = 0.01


def main(target: str, model: str) -> None:
    client = tc.InferenceServerClient(target)
    row = tc.InferInput("input-0", [1, 4], "FP64")
    row.set_data_from_numpy(np.ones((1, 4)))
    for _ in range(20):
        client.infer(model, [row], client_timeout=30)
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    print("ready", flush=True)
    latencies = []
    due = time.perf_counter()
    while not closed.is_set():
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        client.infer(model, [row], client_timeout=30)
        latencies.append(time.perf_counter() - due)
        due += PERIOD_S
    client.close()
    print(json.dumps(latencies), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
