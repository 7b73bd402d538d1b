"""Every file in tests/fixtures/bad/ through the real `dvc repro` of a project that already has a trained and packaged
model: each stops at prepare or validate with a message that names the problem, never trains, and loses nothing
(`dvc checkout` brings back the previous prepared data exactly). No mocks: real git, DVC, pandas and GX."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import dvc, set_params, stored_models, tree_digest

pytestmark = pytest.mark.slow

BAD = Path(__file__).resolve().parents[1] / "fixtures" / "bad"
# What a failed case may change besides the cached DVC outs: the params, the lock, validate's uncached reports.
RESTORED = ("params.yaml", "dvc.lock", "reports/validation.json", "reports/validation.html")

# file -> data-block overrides (beside data.path) -> words the message must hold -> the stage that stops it.
CASES: list[tuple[str, dict, tuple[str, ...], str]] = [
    ("empty.csv", {}, ("is empty",), "prepare"),
    ("header_only.csv", {}, ("has a header but no rows",), "prepare"),
    ("missing_text_column.csv", {}, ("missing ['text']", "found ['review', 'label']", "text.column"), "prepare"),
    ("missing_label_column.csv", {}, ("missing ['label']", "found ['text']", "data.label_column"), "prepare"),
    ("renamed_columns.csv", {}, ("did you mean 'Text' for 'text'? 'Label' for 'label'?",), "prepare"),
    ("wrong_delimiter.csv", {"delimiter": ","}, ("found one field 'text;label'", "set data.delimiter: ';'"),
     "prepare"),
    ("gzip_named.csv", {}, ("gzip-compressed data, not CSV text", "rename it to gzip_named.csv.gz"), "prepare"),
    ("binary.csv", {}, ("binary data (NUL bytes), not CSV text",), "prepare"),
    ("spreadsheet.csv", {}, ("a ZIP archive (an Excel .xlsx workbook is one), not CSV text",), "prepare"),
    ("csv_named.parquet", {}, ("is not Parquet data", "rename it to csv_named.csv"), "prepare"),
    ("html_page.jsonl", {}, ("is an HTML web page, not JSON Lines text",), "prepare"),
    ("json_array.json", {}, ("holds a JSON array, not JSON Lines",), "prepare"),
    ("csv_named.jsonl", {}, ("none of its 25 records could be read", "rename it to .csv"), "prepare"),
    ("jsonl_named.csv", {}, ("looks like JSON Lines", "rename it to jsonl_named.jsonl"), "prepare"),
    ("missing_key.jsonl", {}, ("missing ['text'], found ['review', 'label']",), "prepare"),
    ("latin1.csv", {}, ("not valid utf-8 text: line 8, column 4 has the byte(s) 0xe9", "data.encoding"), "prepare"),
    ("utf16.csv", {}, ("is UTF-16 text", "data.encoding: utf-16"), "prepare"),
    ("blank_texts.csv", {}, ("[null_text]", "line 8: null", "[blank_text]", "line 9: ''"), "validate"),
    ("control_only_texts.csv", {}, ("[blank_text]", "line 8: ''; line 9: ''; line 10: ''"), "validate"),
    ("null_labels.csv", {}, ("[null_label]", "line 8: label null", "line 9: label null"), "validate"),
    ("unknown_label.csv", {"labels": ["neg", "pos"]}, ("[unknown_label]", "line 8: label 'neutral'"), "validate"),
    ("single_class.csv", {}, ("[single_class]", "lists 1 label(s) ['pos']", "at least 2"), "validate"),
    # data.split hash puts the one `meh` row in val or test; with random it would be train's only one
    ("tiny_class.csv", {}, ("[min_per_class]", "label 'meh' has 0 train row(s), needs 2"), "validate"),
    ("too_many_fields.csv", {}, ("[malformed_lines]", "line 8: 3 field(s) where the header has 2"), "validate"),
    ("invalid_lines.jsonl", {}, ("[malformed_lines]", "line 4: not valid JSON", "line 9: a JSON array, not an object"),
     "validate"),
    ("unclosed_quote.csv", {}, ("[malformed_lines]", "line 8: ", "a double quote that is never closed"), "validate"),
]


def test_every_bad_file_has_a_case_and_a_readme_entry() -> None:
    files = sorted(p.name for p in BAD.iterdir() if p.name != "README.md")
    assert sorted(name for name, *_ in CASES) == files
    readme = (BAD / "README.md").read_text(encoding="utf-8")
    for name, _, _, stage in CASES:
        assert f"| `{name}` |" in readme and readme.split(f"| `{name}` |")[1].split("\n")[0].endswith(f"| {stage} |")


@pytest.fixture(scope="module")
def baseline(project: Path, reproduced: subprocess.CompletedProcess) -> Path:
    """The shared project on the built-in data, every stage up to date and a model packaged."""
    set_params(project, {})
    result = dvc(project, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    status = dvc(project, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout
    return project


@pytest.mark.parametrize(("name", "overrides", "words", "stage"), CASES, ids=[case[0] for case in CASES])
def test_bad_file_is_stopped_before_training_and_loses_nothing(baseline: Path, name: str, overrides: dict,
                                                               words: tuple[str, ...], stage: str) -> None:
    project = baseline
    saved = {relative: (project / relative).read_bytes() if (project / relative).exists() else None
             for relative in RESTORED}
    models_before = stored_models()
    record_before = (project / "models/packaged.json").read_text()
    candidate_before = tree_digest(project / "models/candidate")
    prepared_before = tree_digest(project / "data/prepared")

    target = project / "data/raw" / name
    shutil.copyfile(BAD / name, target)
    try:
        set_params(project, {"data": {"path": f"data/raw/{name}", "max_rows": None, **overrides}})
        result = dvc(project, "repro")
        candidate_after = tree_digest(project / "models/candidate")
    finally:
        # Back to the good state for the next case, the way a user would: the old params and lock, then checkout.
        target.unlink()
        for relative, content in saved.items():
            if content is None:
                (project / relative).unlink(missing_ok=True)
            else:
                (project / relative).write_bytes(content)
        checkout = dvc(project, "checkout")
    output = result.stdout + result.stderr

    assert result.returncode != 0, output[-3000:]
    assert f"{stage} stopped" in output, output[-3000:]
    for word in words:
        assert word in output, (word, output[-3000:])
    if stage == "prepare":
        assert f"data.path 'data/raw/{name}'" in output
        assert "Running stage 'validate'" not in output
    assert "Traceback" not in output
    assert "Running stage 'train'" not in output
    assert stored_models() == models_before
    assert (project / "models/packaged.json").read_text() == record_before
    assert candidate_after == candidate_before

    assert checkout.returncode == 0, checkout.stdout + checkout.stderr
    assert tree_digest(project / "data/prepared") == prepared_before
    status = dvc(project, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout
