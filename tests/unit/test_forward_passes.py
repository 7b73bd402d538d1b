"""serving.runner: how many forward passes a process runs at once (serve.forward_passes), and how a call slot's share
of the batch bounds the batcher."""

from __future__ import annotations

import pytest

from components.config import ServeParams
from serving import runner


class Eager:
    device = "cpu"


class Traced(Eager):
    overlapping_passes = True


class OnGpu(Traced):
    device = "cuda"


@pytest.mark.parametrize(("predictor", "cores", "processes", "passes"), [
    (Traced(), 2, 1, 2),   # two passes on one core each
    (Traced(), 16, 1, 2),  # two passes on eight cores each
    (Traced(), 2, 2, 1),   # two worker processes on 2 cores: one core each, one pass each
    (Traced(), 1, 1, 1),
    (Eager(), 16, 1, 1),   # eager passes would take turns at the interpreter lock
    (OnGpu(), 16, 1, 1),   # one device: its passes queue there anyway
])
def test_auto_runs_two_passes_where_they_overlap_on_a_cpu_with_two_cores_per_process(
        monkeypatch: pytest.MonkeyPatch, predictor: object, cores: int, processes: int, passes: int) -> None:
    monkeypatch.setattr(runner, "_cores", lambda: cores)

    assert runner.forward_passes("auto", predictor, processes) == passes


def test_a_number_is_taken_as_given() -> None:
    assert runner.forward_passes(3, Eager()) == 3


def test_the_traced_and_onnx_text_runtimes_declare_overlapping_passes_through_the_temperature_wrapper() -> None:
    from components.modalities.text.fast import OnnxClassifier, TracedClassifier
    from components.modalities.text.predict import Classifier
    from components.predict import Calibrated

    assert Calibrated(TracedClassifier.__new__(TracedClassifier)).overlapping_passes is True
    assert Calibrated(OnnxClassifier.__new__(OnnxClassifier)).overlapping_passes is True
    assert getattr(Calibrated(Classifier.__new__(Classifier)), "overlapping_passes", False) is False


def test_with_passes_at_once_each_call_takes_its_share_of_the_batch_and_alone_it_takes_whole_requests() -> None:
    serve = ServeParams(max_batch_size=32, max_texts_per_request=256)

    assert runner.batch_share(serve, 2) == 16
    assert runner.batch_share(serve, 3) == 11  # rounded up
    assert runner.request_batcher(lambda requests: requests, serve, RuntimeError, calls=2)._max_texts == 16
    assert runner.request_batcher(lambda requests: requests, serve, RuntimeError)._max_texts == 256


def test_the_param_refuses_zero_and_words_other_than_auto() -> None:
    assert ServeParams(forward_passes="auto").forward_passes == "auto"
    assert ServeParams(forward_passes=2).forward_passes == 2
    for bad in (0, "two"):
        with pytest.raises(ValueError, match="forward_passes"):
            ServeParams(forward_passes=bad)
