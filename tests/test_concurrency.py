"""One runtime session under 8 threads: the same answers as one at a time, and flat memory."""

import threading

import numpy as np

from latexport.runtime.session import LatencyAdjustableSession

CALLS = 10_000
THREADS = 8
TEXTS = ["a good film", "the plot was very dull", "best actor, worst story", "it was a long and boring movie",
         "music", "the ending was sad but the music was great"]


def resident_megabytes() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_threads_match_sequential_and_memory_stays_flat(bert_classifier):
    session = LatencyAdjustableSession(bert_classifier)
    rng = np.random.default_rng(0)
    ratios = rng.uniform(0.01, 1.0, size=CALLS)
    picks = rng.integers(0, len(TEXTS), size=(CALLS, 2))
    calls = [([TEXTS[a], TEXTS[b]], float(r)) for (a, b), r in zip(picks, ratios)]

    def run(index):
        texts, ratio = calls[index]
        return session.run(session.encode(texts), ratio)

    expected = [run(i) for i in range(CALLS)]
    results = [None] * CALLS
    memory = {}

    def worker(start):
        for index in range(start, CALLS, THREADS):
            results[index] = run(index)
            if index == 2000:
                memory["early"] = resident_megabytes()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
        assert not thread.is_alive(), "a worker hung"
    memory["late"] = resident_megabytes()
    assert all(np.array_equal(got, want) for got, want in zip(results, expected))
    assert memory["late"] - memory["early"] < 30, memory
