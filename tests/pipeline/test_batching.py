"""workers.batching: tasks' images gathered into batches, the two halves overlapped or
in turn."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from workers.batching import Batcher
from workers.pipeline.chain import Prepared
from workers.training.synth import fonts, render_page


class RecordingChain:
    """A split chain over integers: detect doubles, finish adds one; it records the
    batches it saw and when each half ran."""

    def __init__(self, detect_s: float = 0.0, finish_s: float = 0.0, bad: int | None = None):
        self.detect_s, self.finish_s, self.bad = detect_s, finish_s, bad
        self.detect_batches: list[list[int]] = []
        self.spans: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()

    def detect(self, images, on_stage):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        on_stage("classify")
        on_stage("detect")
        if self.bad in images:
            raise ValueError(f"cannot read {self.bad}")
        time.sleep(self.detect_s)
        with self.lock:
            self.detect_batches.append(list(images))
            self.spans.append(("detect", t0, time.perf_counter()))
        return [2 * x for x in images]

    def finish(self, detected, on_stage):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        on_stage("crop")
        on_stage("ocr")
        time.sleep(self.finish_s)
        with self.lock:
            self.spans.append(("finish", t0, time.perf_counter()))
        return [x + 1 for x in detected]

    def run(self, images, on_stage):  # type: ignore[no-untyped-def]
        return self.finish(self.detect(images, on_stage), on_stage)


def read_all(batcher: Batcher, images: list[int]) -> tuple[list[int], list[list[str]]]:
    stages: list[list[str]] = [[] for _ in images]

    def one(k: int) -> int:
        return batcher.submit(images[k]).wait(stages[k].append, timeout=30)

    with ThreadPoolExecutor(len(images)) as pool:
        results = list(pool.map(one, range(len(images))))
    return results, stages


BOTH = pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "in-turn"])


@BOTH
def test_concurrent_submissions_share_a_batch_and_each_gets_its_own_answer(overlap) -> None:
    chain = RecordingChain(detect_s=0.05)
    batcher = Batcher(chain, max_batch=4, max_wait_ms=200, overlap=overlap)
    results, stages = read_all(batcher, [1, 2, 3, 4, 5, 6, 7, 8])
    assert results == [2 * x + 1 for x in [1, 2, 3, 4, 5, 6, 7, 8]]
    assert all(s == ["classify", "detect", "crop", "ocr"] for s in stages)
    assert sorted(len(b) for b in chain.detect_batches) == [4, 4]
    assert batcher.batch_sizes == {4: 2}


def test_a_lone_image_does_not_wait_longer_than_the_batch_window() -> None:
    batcher = Batcher(RecordingChain(), max_batch=8, max_wait_ms=20)
    batcher.read([0])  # threads started
    t0 = time.perf_counter()
    assert batcher.read([5]) == [11]
    assert time.perf_counter() - t0 < 0.5
    assert batcher.batch_sizes[1] == 2


@BOTH
def test_one_bad_image_fails_only_its_own_job(overlap) -> None:
    chain = RecordingChain(bad=3)
    batcher = Batcher(chain, max_batch=4, max_wait_ms=200, overlap=overlap)
    tickets = [batcher.submit(x) for x in [1, 2, 3, 4]]
    answers = []
    for ticket in tickets:
        try:
            answers.append(ticket.wait(lambda stage: None, timeout=30))
        except ValueError as exc:
            answers.append(str(exc))
    assert answers == [3, 5, "cannot read 3", 9]


def test_the_accelerator_half_of_one_batch_overlaps_the_cpu_half_of_the_previous() -> None:
    chain = RecordingChain(detect_s=0.1, finish_s=0.1)
    batcher = Batcher(chain, max_batch=2, max_wait_ms=50)
    read_all(batcher, list(range(8)))
    detects = sorted((a, b) for kind, a, b in chain.spans if kind == "detect")
    finishes = sorted((a, b) for kind, a, b in chain.spans if kind == "finish")
    overlapping = sum(1 for d0, d1 in detects for f0, f1 in finishes if d0 < f1 and f0 < d1)
    assert overlapping >= 2, (detects, finishes)


def test_in_turn_the_halves_never_overlap_and_batches_still_form() -> None:
    chain = RecordingChain(detect_s=0.05, finish_s=0.05)
    batcher = Batcher(chain, max_batch=4, max_wait_ms=50, overlap=False)
    results, _ = read_all(batcher, list(range(8)))
    assert results == [2 * x + 1 for x in range(8)]
    spans = sorted((a, b) for _, a, b in chain.spans)
    assert all(b0 <= a1 for (_, b0), (a1, _) in zip(spans, spans[1:], strict=False)), spans
    assert max(len(b) for b in chain.detect_batches) > 1


def test_an_abandoned_ticket_is_skipped_and_a_raising_callback_abandons() -> None:
    chain = RecordingChain(detect_s=0.2)
    batcher = Batcher(chain, max_batch=1, max_wait_ms=0)
    first = batcher.submit(1)  # occupies the accelerator for 0.2 s
    second = batcher.submit(2)
    second.abandon()
    assert first.wait(lambda stage: None, timeout=30) == 3
    third = batcher.submit(3)

    def cancel(stage: str) -> None:
        raise RuntimeError("job canceled")

    with pytest.raises(RuntimeError):
        third.wait(cancel, timeout=30)
    assert third.abandoned
    assert [2] not in chain.detect_batches


@BOTH
def test_a_chain_without_halves_runs_whole(overlap) -> None:
    class WholeChain:
        def run(self, images, on_stage):  # type: ignore[no-untyped-def]
            on_stage("ocr")
            return [-x for x in images]

    assert Batcher(WholeChain(), max_batch=4, overlap=overlap).read([1, 2, 3]) == [-1, -2, -3]


@BOTH
def test_each_image_is_prepared_on_its_submitters_thread_not_the_batchs(overlap) -> None:
    class PreparingChain(RecordingChain):
        def __init__(self) -> None:
            super().__init__(detect_s=0.05)
            self.prepared_on: dict[int, str] = {}

        def prepare(self, image):  # type: ignore[no-untyped-def]
            self.prepared_on[image] = threading.current_thread().name
            return 10 * image

    chain = PreparingChain()
    batcher = Batcher(chain, max_batch=4, max_wait_ms=200, overlap=overlap)
    results, _ = read_all(batcher, [1, 2, 3, 4])
    assert results == [2 * 10 * x + 1 for x in [1, 2, 3, 4]]
    assert sorted(x for batch in chain.detect_batches for x in batch) == [10, 20, 30, 40]
    assert len(set(chain.prepared_on.values())) == 4  # the four submitting threads
    assert not {"batch-accel", "batch-cpu"} & set(chain.prepared_on.values())


def test_a_timeout_raises_and_abandons() -> None:
    batcher = Batcher(RecordingChain(detect_s=1.0), max_batch=1)
    ticket = batcher.submit(1)
    with pytest.raises(TimeoutError):
        ticket.wait(lambda stage: None, timeout=0.1)
    assert ticket.abandoned


def test_the_real_chain_answers_the_same_in_a_batch_as_alone(pipeline, monkeypatch) -> None:
    images = [render_page(seed, fonts("heldout")).image for seed in (7, 8, 9, 10)]
    alone = [pipeline.run([image])[0] for image in images]
    handed: list[type] = []
    detect = pipeline.detect

    def watched(batch, on_stage=None):  # type: ignore[no-untyped-def]
        handed.extend(type(x) for x in batch)
        return detect(batch, on_stage)

    monkeypatch.setattr(pipeline, "detect", watched)
    batched = Batcher(pipeline, max_batch=4, max_wait_ms=500).read(images)
    # The batch gets the images as the submitters prepared them (resized, as tensors).
    assert handed == [Prepared] * 4
    for one, many in zip(alone, batched, strict=True):
        assert one.classification.label == many.classification.label
        assert [r.text for r in one.regions] == [r.text for r in many.regions]
        for a, b in zip(one.regions, many.regions, strict=True):
            assert max(abs(p - q) for p, q in zip(a.box, b.box, strict=True)) < 2.0
