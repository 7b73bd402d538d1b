"""The speech pipeline the project ships (audio/: its params.yaml, with links to the project's dvc.yaml and
components) end to end on a tiny synthetic set (the built-in Debian prompts need apt, which CI may lack): a real
`dvc repro` in audio/ (prepare, GX validation, audiomentations copies, Whisper-encoder fine-tuning, evaluation,
packaging), a real `bentoml serve` answering /classify_audio with the evaluate stage's own
predictions and refusing bad clips with a 400, from the checkout and from a Bento `tuneline build` made; and a corpus of bad audio files stopping the real stages before
training, each file named with its problem, the champion untouched; and Resemblyzer's speaker encoder through the
same stages. (`tuneline scratch` is modality-blind and runs
in the image test; the audio network from random weights is built in test_audio_model.py.)"""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY, bentoml_serve, dvc, make_project, merge, served_probabilities, stored_models

MODEL_NAME = "tuneline-audio"  # audio/params.yaml's: the session's text and image champions stay as they are
RATE = 8_000
CLASSES = {"hum": 150.0, "beep": 1_000.0, "whistle": 2_500.0}
TINY_AUDIO = {
    "data": {"path": "data/raw/clips", "max_rows": None, "val_fraction": 0.2, "test_fraction": 0.25},
    "audio": {"clip_seconds": 1.0},
    "augment": {"copies_per_example": 0.3},
    "train": {"max_steps": 12, "batch_size": 8, "learning_rate": 1.0e-3},
    "evaluate": TINY["evaluate"],
}


def wav(samples: np.ndarray, rate: int = RATE, subtype: str = "PCM_16", format_: str = "WAV") -> bytes:
    import io

    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=format_, subtype=subtype)
    return buffer.getvalue()


def tone(hertz: float, seed: int, seconds: float = 0.8, level: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    time = np.arange(int(RATE * seconds)) / RATE
    wobble = hertz * (1 + 0.05 * rng.uniform(-1, 1))
    return level * np.sin(2 * np.pi * wobble * time) + 0.02 * rng.standard_normal(time.size)


def write_clips(folder: Path, per_class: int = 14) -> None:
    for label, hertz in CLASSES.items():
        for i in range(per_class):
            path = folder / label / f"{i:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(wav(tone(hertz, seed=hash((label, i)) % 10_000)))


def audio_folder(tmp_path_factory: pytest.TempPathFactory, project_root: Path, name: str) -> Path:
    audio = make_project(tmp_path_factory.mktemp(name), project_root) / "audio"
    shipped = yaml.safe_load((project_root / "audio/params.yaml").read_text())
    assert shipped["data"]["modality"] == "audio" and shipped["package"]["model_name"] == MODEL_NAME
    (audio / "params.yaml").write_text(yaml.safe_dump(merge(shipped, TINY_AUDIO), sort_keys=False))
    write_clips(audio / "data/raw/clips")
    return audio


@pytest.fixture(scope="module")
def audio_project(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Path:
    """The project's audio/ folder inside a fresh repository, on synthetic clips, its params thinned, reproduced."""
    audio = audio_folder(tmp_path_factory, project_root, "audio")
    result = dvc(audio, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return audio


def test_dvc_repro_runs_every_stage_on_audio(audio_project: Path) -> None:
    metrics = json.loads((audio_project / "metrics/test.json").read_text())
    assert metrics["test_rows"] > 0 and set(metrics["model"]["per_class"]) == set(CLASSES)
    assert metrics["baseline_name"] == "log-mel logistic regression"
    assert json.loads((audio_project / "reports/validation.json").read_text())["success"] is True
    augmented = pd.read_json(audio_project / "data/augmented/train.jsonl", lines=True)
    assert augmented["augmented"].sum() > 0
    meta = json.loads((audio_project / "models/candidate/tuneline.json").read_text())
    assert meta["modality"] == "audio" and meta["clip_seconds"] == 1.0 and meta["sample_rate"] == 16_000
    assert json.loads((audio_project / "models/candidate/config.json").read_text())["max_source_positions"] == 50
    packaged = json.loads((audio_project / "models/packaged.json").read_text())
    assert packaged["tag"].startswith(MODEL_NAME + ":")
    assert "up to date" in dvc(audio_project, "status").stdout


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_served_clips_get_the_evaluate_stages_predictions_and_bad_ones_a_400(audio_project: Path,
                                                                            tmp_path: Path) -> None:
    predictions = pd.read_csv(audio_project / "reports/predictions.csv", dtype={"label": str, "predicted": str})
    labels = json.loads((audio_project / "data/prepared/labels.json").read_text())
    tag = json.loads((audio_project / "models/packaged.json").read_text())["tag"]
    env = os.environ | {"TUNELINE_MODEL_TAG": tag, "TUNELINE_PARAMS": str(audio_project / "params.yaml")}
    with bentoml_serve(audio_project, "serving.service:TunelineService", env, tmp_path / "serve.log") as url:
        files = [audio_project / clip for clip in predictions["audio"]]
        answer = httpx.post(f"{url}/classify_audio", json={"audio": [encoded(f.read_bytes()) for f in files],
                                                           "top_k": len(labels)}, timeout=120)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == tag
        assert [p["label"] for p in body["predictions"]] == predictions["predicted"].tolist()
        served = served_probabilities(body, labels).max(axis=1)
        assert np.abs(served - predictions["probability"].to_numpy()).max() < 1e-4

        good = encoded(files[0].read_bytes())
        refused = {
            "not base64": ({"audio": ["%%% not base64 %%%"]}, "audio[0] is not base64"),
            "not audio": ({"audio": [encoded(b"label,text\nyes,a table\n" * 9)]}, "is not audio"),
            "silent": ({"audio": [good, encoded(wav(np.zeros(RATE)))]}, "audio[1] is silent"),
            "six channels": ({"audio": [encoded(wav(np.tile(tone(300, 1)[:, None], (1, 6))))]}, "6 channels"),
            "empty list": ({"audio": []}, ""),
            "unknown field": ({"audio": [good], "wave": 1}, ""),
        }
        for name, (request, expected) in refused.items():
            response = httpx.post(f"{url}/classify_audio", json=request, timeout=60)
            assert response.status_code == 400 and expected in response.text, (name, response.text)
        response = httpx.post(f"{url}/classify", json={"texts": ["a text"]}, timeout=60)
        assert response.status_code == 400 and "classifies audio" in response.text

        # the same endpoint takes the files themselves, as multipart/form-data, and answers the same
        uploads = [("audio", (f.name, f.read_bytes(), "audio/wav")) for f in files[:4]]
        answer = httpx.post(f"{url}/classify_audio", files=uploads, data={"top_k": str(len(labels))}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert [p["label"] for p in answer.json()["predictions"]] == predictions["predicted"].tolist()[:4]
        bad = httpx.post(f"{url}/classify_audio", files=[("audio", ("x.wav", b"RIFF....WAVE", "audio/wav"))],
                         timeout=60)
        assert bad.status_code == 400 and "audio[0]" in bad.text, bad.text


def test_a_bento_tuneline_build_made_serves_its_model_with_the_audio_params(audio_project: Path, tmp_path: Path,
                                                                           project_root: Path) -> None:
    """`tuneline --root audio build` records the speech project's params and model in the Bento: served from another
    folder with no TUNELINE_PARAMS or TUNELINE_MODEL_TAG, it answers /classify_audio as evaluate did, and applies the
    audio block it was built with (here mono only), not the text params.yaml its src/ also holds."""
    import subprocess
    import sys

    predictions = pd.read_csv(audio_project / "reports/predictions.csv", dtype={"label": str, "predicted": str})
    tag = json.loads((audio_project / "models/packaged.json").read_text())["tag"]
    params_file = audio_project / "params.yaml"
    shipped = params_file.read_text()
    params_file.write_text(yaml.safe_dump(merge(yaml.safe_load(shipped), {"audio": {"max_channels": 1}})))
    try:
        built = subprocess.run([str(Path(sys.executable).parent / "tuneline"), "--root", str(audio_project), "build",
                                "--model", tag], cwd=tmp_path, capture_output=True, text=True)
    finally:
        params_file.write_text(shipped)  # the Bento holds its own copy; the file may change after the build
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    bento = built.stdout.split("built Bento ", 1)[1].split()[0]
    # what reading and resampling clips imports, pinned in the Bento beyond serving/bentofile.yaml's text packages
    import bentoml

    requirements = (Path(bentoml.bentos.get(bento).path) / "env/python/requirements.txt").read_text()
    assert "\nsoundfile==" in requirements and "\nsoxr==" in requirements, requirements
    bare_env = {k: v for k, v in os.environ.items() if k not in ("TUNELINE_MODEL_TAG", "TUNELINE_PARAMS")}
    with bentoml_serve(tmp_path, bento, bare_env, tmp_path / "bento.log") as url:
        assert httpx.get(f"{url}/model", timeout=30).json()["tag"] == tag
        files = [audio_project / clip for clip in predictions["audio"]]
        answer = httpx.post(f"{url}/classify_audio", json={"audio": [encoded(f.read_bytes()) for f in files]},
                            timeout=120)
        assert answer.status_code == 200, answer.text
        assert [p["label"] for p in answer.json()["predictions"]] == predictions["predicted"].tolist()
        served = np.array([p["probability"] for p in answer.json()["predictions"]])
        assert np.abs(served - predictions["probability"].to_numpy()).max() < 1e-4
        stereo = wav(np.tile(tone(300, 1)[:, None], (1, 2)))
        response = httpx.post(f"{url}/classify_audio", json={"audio": [encoded(stereo)]}, timeout=60)
        assert response.status_code == 400 and "2 channels" in response.text, response.text

    missing = subprocess.run([str(Path(sys.executable).parent / "tuneline"), "--root", str(audio_project), "build",
                              "--model", f"{MODEL_NAME}:nosuchtag"], cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 1 and "no model" in missing.stderr and "Traceback" not in missing.stderr


def test_resemblyzer_trains_through_the_same_stages_and_predicts_as_evaluate_did(
        tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> None:
    """model.name_or_path resemblyzer (the speaker encoder, its bottom LSTM layer frozen) through the real stages:
    the packaged model is Resemblyzer's, and loaded back it gives the evaluate stage's probabilities."""
    from components.modalities.audio import AudioModality

    audio = audio_folder(tmp_path_factory, project_root, "resemblyzer")
    params = yaml.safe_load((audio / "params.yaml").read_text())
    params = merge(params, {"model": {"name_or_path": "resemblyzer", "freeze_embeddings": False, "freeze_layers": 1},
                            "package": {"model_name": "tuneline-audio-resemblyzer"}})
    (audio / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(audio, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    meta = json.loads((audio / "models/candidate/tuneline.json").read_text())
    assert meta["architecture"] == "resemblyzer" and meta["base_model"].startswith("Resemblyzer GE2E")
    trained = json.loads((audio / "metrics/train.json").read_text())
    assert 0 < trained["trainable_params"] < trained["total_params"]  # the bottom LSTM layer stayed frozen
    predictions = pd.read_csv(audio / "reports/predictions.csv", dtype={"label": str, "predicted": str})
    predictor = AudioModality().load_predictor(audio / "models/candidate", "cpu")  # with its temperature
    again = predictor.predict([str(audio / clip) for clip in predictions["audio"]])
    assert [p.label for p in again] == predictions["predicted"].tolist()
    probabilities = np.array([p.probability for p in again])
    assert np.abs(probabilities - predictions["probability"].to_numpy()).max() < 1e-4


def with_data_size(data: bytes, size: int) -> bytes:
    at = data.find(b"data")
    return data[:at + 4] + struct.pack("<I", size) + data[at + 8:]


BAD_FILES = {  # file -> what the validation report must say about it
    "hum/empty.wav": "the file is empty",
    "hum/table.wav": "is not audio soundfile can read",
    "beep/cut-header.wav": "is not audio soundfile can read",
    "beep/no-samples.wav": "holds no audio (0 samples)",
    "beep/a-day.wav": "a wrong or forged header",
    "whistle/silent.wav": "audio_silent",
    "whistle/clipped.wav": "audio_clipped",
    "whistle/six-channels.wav": "audio_channels",
    "hum/one-hertz.wav": "is sampled at 1 Hz",
    "beep/really-mp3.wav": "is MP3 data named .wav",
}


def write_bad_files(clips: Path) -> None:
    good = wav(tone(300, 0))
    contents = {
        "hum/empty.wav": b"",
        "hum/table.wav": b"label,text\nyes,this is a table\n" * 20,
        "beep/cut-header.wav": good[:30],
        "beep/no-samples.wav": with_data_size(good[:44], 0),
        "beep/a-day.wav": with_data_size(good, 24 * 3600 * RATE * 2),
        "whistle/silent.wav": wav(np.zeros(RATE)),
        "whistle/clipped.wav": wav(np.clip(tone(400, 2, level=3.0), -1, 1)),
        "whistle/six-channels.wav": wav(np.tile(tone(500, 3)[:, None], (1, 6))),
        "hum/one-hertz.wav": wav(tone(300, 4), rate=1),
        "beep/really-mp3.wav": wav(tone(600, 5), format_="MP3", subtype=None),
    }
    for name, data in contents.items():
        (clips / name).write_bytes(data)
    (clips / "lonely" / "only.wav").parent.mkdir()
    (clips / "lonely" / "only.wav").write_bytes(good)  # a label with one clip


def test_a_bad_audio_corpus_stops_before_training_naming_each_file(tmp_path_factory: pytest.TempPathFactory,
                                                                   project_root: Path) -> None:
    audio = audio_folder(tmp_path_factory, project_root, "bad-audio")
    write_bad_files(audio / "data/raw/clips")
    before = stored_models()
    result = dvc(audio, "repro")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert "failed to reproduce 'validate'" in output, output[-3000:]
    assert not (audio / "models/candidate").exists() and stored_models() == before
    report = json.loads((audio / "reports/validation.json").read_text())
    text = json.dumps(report)
    for name, problem in BAD_FILES.items():
        assert name.split("/")[1] in text and problem in text, (name, problem)
    assert "lonely" in text  # a label with one clip cannot fill three splits


def test_a_folder_with_one_class_is_refused_by_name(tmp_path_factory: pytest.TempPathFactory,
                                                    project_root: Path) -> None:
    audio = audio_folder(tmp_path_factory, project_root, "one-class")
    import shutil

    for label in list(CLASSES)[1:]:
        shutil.rmtree(audio / "data/raw/clips" / label)
    result = dvc(audio, "repro")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert "hum" in output and "label" in output, output[-3000:]
