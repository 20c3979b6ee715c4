"""Benchmark: runner overhead per node on a 100-node graph of trivial nodes.

Compares validate + execute (cold cache, then warm cache) with calling the same node functions
directly in a loop (the reference). Goal: < 2 ms of overhead per node.

    python tests/benchmarks/bench_runner.py [--nodes 100] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

from loralab.headless.execute import Executor
from loralab.headless.graph import validate


class Add:
    CATEGORY = "bench"
    RETURN_TYPES = ("INT",)
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"default": 0, "min": 0, "max": 10**9}),
                             "b": ("INT", {"default": 1, "min": 0, "max": 10})}}

    def add(self, a, b):
        return (a + b,)


class Out(Add):
    OUTPUT_NODE = True


REGISTRY = {"Add": Add, "Out": Out}


def chain(n: int) -> dict:
    wf = {"0": {"class_type": "Add", "inputs": {"a": 0, "b": 1}}}
    for i in range(1, n):
        wf[str(i)] = {"class_type": "Out" if i == n - 1 else "Add", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    return wf


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    wf = chain(args.nodes)

    def direct():
        value = 0
        for _ in range(args.nodes):
            value = Add().add(value, 1)[0]

    def cold():
        prompt, _, order = validate(wf, REGISTRY)
        Executor(REGISTRY, show_progress=False).run(prompt, order)

    warm_executor = Executor(REGISTRY, show_progress=False)
    prompt, _, order = validate(wf, REGISTRY)
    warm_executor.run(prompt, order)

    def warm():
        p, _, o = validate(wf, REGISTRY)
        warm_executor.run(p, o)

    times = {}
    for label, fn in (("direct calls (reference)", direct), ("runner, cold cache", cold), ("runner, warm cache", warm)):
        samples = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        times[label] = statistics.median(samples)
    ref = times["direct calls (reference)"]
    print(f"{args.nodes}-node chain of trivial nodes, median of {args.repeats}")
    print(f"{'':28} {'total ms':>9} {'ms/node':>8} {'overhead ms/node':>17} {'ratio':>9}")
    for label, t in times.items():
        print(f"{label:28} {t * 1e3:9.2f} {t * 1e3 / args.nodes:8.4f} {(t - ref) * 1e3 / args.nodes:17.4f} "
              f"{t / ref:9.1f}")


if __name__ == "__main__":
    main()
