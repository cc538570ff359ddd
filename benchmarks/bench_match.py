"""Matches per second of ``hooks.match`` against the obvious implementation, in one run.

    python benchmarks/bench_match.py            # full run (about a minute)
    python benchmarks/bench_match.py --quick    # fewer repetitions

Baseline ("jsonpath loop"): a loop over the webhook's events, each selector a
pre-parsed jsonpath-ng expression, its first match compared with the value
found in the event's sample. Floor: ``table.get(payload["data"]["object"]["type"])``
written by hand. Payloads pick events uniformly at random, so the loop walks
half the events on average. Also times creating N events one by one, to show
that catalog upkeep stays linear.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jsonpath_ng.ext import parse as jsonpath_parse

from dispatcher import Dispatcher

SIZES = (10, 100, 1_000, 10_000)
SINGLE = "$Event{data.object.type}"
MULTI = "$Event{type},$Event{data.action}"


def sample_for(kind: str, i: int) -> dict[str, Any]:
    if kind == "single":
        return {"id": f"evt_{i}", "data": {"object": {"type": f"type.{i}", "amount": i}}}
    return {"id": f"evt_{i}", "type": f"type.{i % 50}", "data": {"action": f"act.{i // 50}"}}


def build(kind: str, n: int) -> Dispatcher:
    hooks = Dispatcher()
    hooks.webhooks.create(tag="bench", name="Bench", description="benchmark webhook")
    selector = SINGLE if kind == "single" else MULTI
    for i in range(n):
        hooks.webhooks.events.create(
            name=f"Event {i}",
            tag=f"bench:e{i}",
            description="benchmark event",
            selector=selector,
            sample=sample_for(kind, i),
        )
    return hooks


def jsonpath_loop(hooks: Dispatcher, kind: str) -> Callable[[Any], Any]:
    """The obvious matcher: every event's selector evaluated in turn."""
    paths = ["$.data.object.type"] if kind == "single" else ["$.type", "$.data.action"]
    compiled = [jsonpath_parse(p) for p in paths]
    events = []
    for event in hooks.webhooks.events.fetch_all("bench"):
        expected = [c.find(event.sample)[0].value for c in compiled]
        events.append((event, list(zip(compiled, expected, strict=True))))

    def match(payload: Any) -> Any:
        for event, checks in events:
            for expr, want in checks:
                found = expr.find(payload)
                if not found or found[0].value != want:
                    break
            else:
                return event
        return None

    return match


def rate(func: Callable[[Any], Any], payloads: list[Any], min_time: float, repeat: int) -> float:
    """Best calls/second over ``repeat`` timed runs of at least ``min_time`` seconds each."""
    best = 0.0
    for _ in range(repeat):
        calls, start = 0, time.perf_counter()
        while True:
            for payload in payloads:
                func(payload)
            calls += len(payloads)
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = max(best, calls / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    min_time, repeat = (0.2, 3) if args.quick else (0.5, 5)
    rng = random.Random(7)

    print(f"{'selector':8} {'events':>7} {'match/s':>12} {'loop/s':>10} {'ratio':>9}")
    rates: dict[tuple[str, int], float] = {}
    for kind in ("single", "multi"):
        for n in SIZES:
            hooks = build(kind, n)
            payloads = [sample_for(kind, rng.randrange(n)) for _ in range(1000)]
            assert all(hooks.match(p, webhook="bench") for p in payloads)

            def ours(payload: Any, hooks: Dispatcher = hooks) -> Any:
                return hooks.match(payload, webhook="bench")

            mine = rate(ours, payloads, min_time, repeat)
            loop = jsonpath_loop(hooks, kind)
            few = payloads[: max(5, 20_000 // n)]
            base = rate(loop, few, min_time, 2)
            rates[kind, n] = mine
            print(f"{kind:8} {n:>7} {mine:>12,.0f} {base:>10,.0f} {mine / base:>8,.0f}x")

    # The hand-written floor, against a plain single-field match of the same payloads.
    hooks = build("single", 100)
    table = {f"type.{i}": i for i in range(100)}
    payloads = [sample_for("single", rng.randrange(100)) for _ in range(1000)]

    def floor(payload: Any) -> Any:
        return table.get(payload["data"]["object"]["type"])

    def ours(payload: Any) -> Any:
        return hooks.match(payload, webhook="bench")

    floor_rate = rate(floor, payloads, min_time, repeat)
    ours_rate = rate(ours, payloads, min_time, repeat)
    print()
    print(f"hand-written floor  {floor_rate:>12,.0f}/s")
    print(
        f"hooks.match         {ours_rate:>12,.0f}/s  cost {floor_rate / ours_rate:.2f}x the floor"
    )
    for kind in ("single", "multi"):
        ratio = rates[kind, 10] / rates[kind, 10_000]
        print(f"{kind}: rate at 10 events / rate at 10,000 events = {ratio:.2f}")

    print()
    for n in (1_000, 10_000):
        start = time.perf_counter()
        build("single", n)
        took = time.perf_counter() - start
        print(f"creating {n:>6} events one by one: {took:.3f} s ({took / n * 1e6:.1f} us/event)")


if __name__ == "__main__":
    main()
