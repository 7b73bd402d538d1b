"""components/ingest.py: incoming files validated alone, new rows kept, bad files quarantined with their report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components import modalities
from components.config import parse_params
from components.ingest import incoming_files, ingest
from components.prepare import run as prepare


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder whose data set is a small CSV of two labels, with labels.json prepared."""
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    rows = [(f"a known text about film number {i}", "good" if i % 2 else "bad") for i in range(40)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(raw / "base.csv", index=False)
    (tmp_path / "data" / "incoming").mkdir()
    return tmp_path


def params():
    return parse_params({"data": {"path": "data/raw/base.csv"}})


def drop(project: Path, name: str, content: str | bytes) -> None:
    path = project / "data" / "incoming" / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def test_good_rows_are_kept_once_and_a_bad_file_does_not_stop_the_next(project: Path) -> None:
    prepare(params().data, modalities.for_params(params()), "data/prepared")
    drop(project, "1-good.csv", 'text,label\n"A Known text about film number 3!",good\n"brand new words",bad\n'
                                '"brand new words",bad\n')
    drop(project, "2-bad.csv", 'text,label\n"fine",good\n"",bad\n"an unknown label",meh\n')
    drop(project, "3-good.jsonl", '{"text": "more new words", "label": "good"}\n')
    drop(project, "4-broken.csv", b"PK\x03\x04not a csv at all")
    drop(project, "5-half.csv.part", 'text,label\n"not complete yet",good\n')

    result = ingest(params())

    assert [(t.file, t.rows, t.new_rows) for t in result.taken] == [("1-good.csv", 3, 1), ("3-good.jsonl", 1, 1)]
    assert [q.file for q in result.quarantined] == ["2-bad.csv", "4-broken.csv"]
    bad, broken = result.quarantined
    assert "null_text" in bad.reason and "unknown_label" in bad.reason and "meh" in bad.reason
    assert "ZIP archive" in broken.reason
    report = json.loads(Path(bad.report).read_text())
    assert report["file"] == "2-bad.csv" and report["validation"]["success"] is False
    assert Path(bad.moved_to).read_text().startswith("text,label")
    assert Path(bad.report).with_suffix(".html").is_file()
    # only the in-progress file is still waiting; the taken ones are kept under .taken
    assert incoming_files("data/incoming") == []
    assert sorted(p.name for p in Path("data/incoming").iterdir() if p.is_file()) == ["5-half.csv.part"]
    assert len(list(Path("data/incoming/.taken").iterdir())) == 2
    written = sorted(Path("data/raw/accepted").glob("*.parquet"))
    assert [pd.read_parquet(p)["text"].tolist() for p in written] == [["brand new words"], ["more new words"]]


def test_prepare_appends_the_accepted_rows_after_the_source(project: Path) -> None:
    drop(project, "new.csv", "text,label\nsomething never seen,good\nanother unseen one,bad\n")
    ingest(params())
    result = prepare(params().data, modalities.for_params(params()), "data/prepared", "data/raw/accepted")

    assert sum(result.counts.values()) == 42
    assert "1 accepted file(s)" in result.source and "(2 rows)" in result.source
    rows = pd.concat(pd.read_json(f"data/prepared/{s}.jsonl", lines=True) for s in ("train", "val", "test"))
    added = rows[rows["text"].isin(["something never seen", "another unseen one"])]
    assert sorted(added["source_row"]) == [40, 41]  # after the source's 40 records


def test_a_second_pass_takes_nothing_twice(project: Path) -> None:
    drop(project, "a.csv", "text,label\nfresh words here,good\n")
    first = ingest(params())
    drop(project, "b.csv", "text,label\nFresh words here.,good\n")
    second = ingest(params())

    assert first.new_rows == 1 and second.new_rows == 0 and second.taken[0].duplicates == 1
    assert len(list(Path("data/raw/accepted").glob("*.parquet"))) == 1


def test_without_a_labels_list_any_label_is_taken(project: Path) -> None:
    drop(project, "new-class.csv", "text,label\nsomething else entirely,neutral\n")
    result = ingest(params())  # nothing prepared yet and no data.labels: validate's later run decides
    assert result.new_rows == 1 and not result.quarantined


def test_a_folder_of_audio_per_class_is_taken_and_prepare_hears_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from components.modalities.audio.augment import wav_bytes

    monkeypatch.chdir(tmp_path)

    def clip(path: Path, hertz: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(wav_bytes(0.2 * np.sin(2 * np.pi * hertz * np.arange(4_000) / 8_000), 8_000))

    for i in range(12):
        clip(tmp_path / "data/raw/clips/low" / f"{i}.wav", 200 + 7 * i)
        clip(tmp_path / "data/raw/clips/high" / f"{i}.wav", 1_500 + 7 * i)
    audio = parse_params({"data": {"modality": "audio", "path": "data/raw/clips"}})
    prepare(audio.data, modalities.for_params(audio), "data/prepared")
    clip(tmp_path / "data/incoming/batch-1/low/new.wav", 333.0)
    clip(tmp_path / "data/incoming/batch-1/high/again.wav", 1_500.0)  # the same samples as high/0.wav
    (tmp_path / "data/incoming/batch-2.part/low").mkdir(parents=True)  # still being copied: left alone

    result = ingest(audio)

    assert [(t.file, t.rows, t.new_rows, t.duplicates) for t in result.taken] == [("batch-1", 2, 1, 1)]
    assert incoming_files("data/incoming") == [] and Path("data/incoming/batch-2.part").is_dir()
    (table,) = sorted(Path("data/raw/accepted").glob("*.parquet"))
    kept = pd.read_parquet(table)
    assert kept["label"].tolist() == ["low"] and (table.parent / kept["audio"][0]).is_file()
    result = prepare(audio.data, modalities.for_params(audio), "data/prepared", "data/raw/accepted")
    assert sum(result.counts.values()) == 25 and "1 accepted file(s)" in result.source
