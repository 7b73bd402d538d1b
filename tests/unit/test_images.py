"""components/images.py: what an image file holds or why it cannot be used, and the image sources."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.modalities.image import ImageModality
from components.modalities.image.files import class_folders, inspect_image, write_digits
from components.stage import StageError


def encoded(fmt: str, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=0).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "mode", "channels"), [("PNG", "RGB", 3), ("JPEG", "L", 1), ("PNG", "RGBA", 4),
                                                       ("BMP", "RGB", 3)])
def test_a_good_image_is_described(fmt: str, mode: str, channels: int) -> None:
    info = inspect_image(encoded(fmt, mode=mode))
    assert info.problem is None
    assert (info.format, info.width, info.height, info.mode, info.channels) == (fmt, 32, 24, mode, channels)
    assert len(info.sha256) == 64 and info.size_bytes > 0


@pytest.mark.parametrize(("data", "words"), [
    (b"", "empty"),
    (b"%PDF-1.7 not an image at all", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),
    (encoded("JPEG", (64, 64))[:300], "truncated"),
    (encoded("PNG", (64, 64))[:-20], "truncated"),
    (encoded("ICO", (16, 16)), "is ICO data"),
])
def test_bad_bytes_get_a_problem_that_names_it(data: bytes, words: str) -> None:
    info = inspect_image(data)
    assert info.problem is not None and words in info.problem, info.problem


def test_too_many_pixels_are_refused_before_decoding() -> None:
    info = inspect_image(encoded("PNG", (400, 300)), max_pixels=100_000)
    assert info.problem is not None and "400x300 pixels, over the limit of 100,000" in info.problem


def test_the_same_pixels_in_the_same_bytes_hash_the_same() -> None:
    assert inspect_image(encoded("PNG")).sha256 == inspect_image(encoded("PNG")).sha256
    assert inspect_image(encoded("PNG")).sha256 != inspect_image(encoded("PNG", (33, 24))).sha256


def test_the_builtin_digits_are_written_as_grey_pngs(tmp_path: Path) -> None:
    pairs = write_digits(tmp_path / "a")
    again = write_digits(tmp_path / "b")

    assert len(pairs) == 1797 and sorted({label for _, label in pairs}) == [str(d) for d in range(10)]
    info = inspect_image(pairs[0][0].read_bytes())
    assert (info.format, info.width, info.height, info.channels, info.problem) == ("PNG", 8, 8, 1, None)
    from sklearn.datasets import load_digits

    ink = load_digits().images[0]  # 0-16 -> 0-255 grey
    assert np.array_equal(np.asarray(Image.open(pairs[0][0])), np.round(ink * 255 / 16).astype(np.uint8))
    assert all(a.read_bytes() == b.read_bytes() for (a, _), (b, _) in zip(pairs[:50], again[:50], strict=True))


def test_class_folders_label_each_file_by_its_folder(tmp_path: Path) -> None:
    for name in ("cats/1.png", "cats/sub/2.jpg", "dogs/3.png", ".hidden/4.png", "cats/.DS_Store"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    pairs = [(path.relative_to(tmp_path).as_posix(), label) for path, label in class_folders(tmp_path)]
    assert pairs == [("cats/1.png", "cats"), ("cats/sub/2.jpg", "cats"), ("dogs/3.png", "dogs")]
    with pytest.raises(StageError, match="not a folder"):
        class_folders(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match="no class sub-folders"):
        class_folders(tmp_path / "empty")


def prepared(tmp_path: Path, data: dict, image: dict | None = None) -> tuple[object, dict[str, object]]:
    from components import modalities
    from components.config import parse_params
    from components.prepare import run

    params = parse_params({"data": {"modality": "image", **data}, "image": image or {}})
    result = run(params.data, modalities.for_params(params), tmp_path / "prepared")
    splits = {name: pd.read_json(tmp_path / "prepared" / f"{name}.jsonl", lines=True, dtype={"label": str})
              for name in ("train", "val", "test")}
    return result, splits


def test_prepare_splits_the_builtin_digits_and_copies_each_image_once(tmp_path: Path) -> None:
    result, splits = prepared(tmp_path, {"max_rows": 200})

    assert abs(sum(result.counts.values()) - 200) <= 10 and result.labels == [str(d) for d in range(10)]
    rows = [row for part in splits.values() for row in part.to_dict("records")]
    assert all(pd.isna(row["problem"]) and (tmp_path / "prepared" / row["image"]).is_file() for row in rows)
    assert {row["format"] for row in rows} == {"PNG"} and {row["width"] for row in rows} == {8}
    assert len(list((tmp_path / "prepared/images").iterdir())) == len({row["sha256"] for row in rows})


def test_prepare_keeps_unusable_images_as_rows_that_say_why(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    good = encoded("PNG", (20, 20))
    files = {"cats/a.png": good, "cats/b.png": encoded("PNG", (21, 20)), "cats/copy.png": good,
             "dogs/c.jpg": encoded("JPEG", (20, 22)), "dogs/d.jpg": encoded("JPEG", (30, 30))[:200],
             "dogs/notes.txt": b"not an image", "dogs/e.png": encoded("PNG", (22, 20))}
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)

    result, splits = prepared(tmp_path, {"path": str(source), "val_fraction": 0.2, "test_fraction": 0.2})

    rows = {row["file"].split("photos/")[-1]: (name, row) for name, part in splits.items()
            for row in part.to_dict("records")}
    assert set(rows) == set(files) and result.labels == ["cats", "dogs"]
    assert "truncated" in rows["dogs/d.jpg"][1]["problem"] and pd.isna(rows["dogs/d.jpg"][1]["image"])
    assert "not an image" in rows["dogs/notes.txt"][1]["problem"]
    assert rows["cats/a.png"][0] == rows["cats/copy.png"][0]  # the same bytes never straddle two splits
    assert rows["cats/a.png"][1]["image"] == rows["cats/copy.png"][1]["image"]
    assert result.summary["unusable_images"] == 2


def test_prepare_reads_a_table_of_image_paths(tmp_path: Path) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.png").write_bytes(encoded("PNG", (10 + i, 10)))
    (folder / "labels.csv").write_text("path,kind\n" + "".join(f"{i}.png,{'a' if i % 2 else 'b'}\n" for i in range(6))
                                       + "missing.png,a\n")
    result, splits = prepared(tmp_path, {"path": str(folder / "labels.csv"), "label_column": "kind",
                                         "val_fraction": 0.2, "test_fraction": 0.2}, {"column": "path"})
    rows = [row for part in splits.values() for row in part.to_dict("records")]
    assert len(rows) == 7 and sorted({row["label"] for row in rows}) == ["a", "b"]
    [missing] = [row for row in rows if pd.isna(row["image"])]
    assert "does not exist" in missing["problem"] and missing["line"] == 8


def test_validate_checks_images_with_its_suite_and_names_each_file(tmp_path: Path) -> None:
    from components.config import parse_params
    from components.validate import validate

    source = tmp_path / "photos"
    good = encoded("PNG", (20, 20))
    files = {"cats/a.png": good, "cats/b.png": encoded("PNG", (21, 20)), "cats/c.png": encoded("PNG", (3, 20)),
             "cats/d.png": encoded("PNG", (22, 20), mode="LA"), "dogs/e.jpg": encoded("JPEG", (30, 30))[:200],
             "dogs/f.png": encoded("PNG", (23, 20)), "dogs/g.png": encoded("PNG", (24, 20)), "dogs/h.png": good}
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    result, splits = prepared(tmp_path, {"path": str(source), "val_fraction": 0.2, "test_fraction": 0.2})
    params = parse_params({"image": {"min_side": 8}})

    verdict = validate(splits, result.labels, params.validate_params, ImageModality(params.settings("image")),
                       result.summary)

    failed = "\n".join(verdict.failures)
    assert not verdict.success
    assert "[unreadable_image]" in failed and "photos/dogs/e.jpg: could not be decoded completely" in failed
    assert "[image_too_small]" in failed and "photos/cats/c.png: 3x20 pixels" in failed
    assert "[image_channels]" in failed and "photos/cats/d.png: 22x20 pixels, 2 channel(s)" in failed
    # the same bytes under two labels: one image, two answers
    assert any("[conflicting_labels]" in w and "photos/cats/a.png" in w for w in verdict.warnings), verdict.warnings
    checks = {c["check"]: c for split in verdict.report["splits"].values() for c in split["checks"]}
    assert checks["unreadable_image"]["expectation"] == "expect_column_values_to_be_null"


def test_clean_digits_pass_validation(tmp_path: Path) -> None:
    from components.config import parse_params
    from components.validate import validate

    result, splits = prepared(tmp_path, {"max_rows": 300})
    params = parse_params({})
    verdict = validate(splits, result.labels, params.validate_params, ImageModality(params.settings("image")),
                       result.summary)
    assert verdict.success, verdict.failures


def test_augment_adds_perturbed_train_images_only_reproducibly(tmp_path: Path) -> None:
    from components.augment import run as augment
    from components.config import parse_params

    result, splits = prepared(tmp_path, {"max_rows": 120})
    params = parse_params({"augment": {"copies_per_example": 1.0}, "image": {"augment": {"p_crop": 1.0,
                                                                                        "p_rotate": 1.0}}})
    images = ImageModality(params.settings("image"))
    out = augment(params.augment, params.model, images, tmp_path / "prepared", tmp_path / "augmented")
    again = augment(params.augment, params.model, images, tmp_path / "prepared", tmp_path / "again")

    train = pd.read_json(tmp_path / "augmented/train.jsonl", lines=True, dtype={"label": str})
    copies = train[train["augmented"]]
    assert out.original_rows == len(splits["train"]) and out.added_rows + out.rejected == len(splits["train"])
    assert len(copies) == out.added_rows > 0 and set(copies["source_row"]) <= set(splits["train"]["source_row"])
    assert all((tmp_path / "augmented" / image).is_file() for image in train["image"])
    held_out = set(splits["val"]["sha256"]) | set(splits["test"]["sha256"])
    assert not set(copies["sha256"]) & held_out
    assert (copies["width"] == 8).all() and (copies["channels"] == 3).all()
    originals = dict(zip(splits["train"]["source_row"], splits["train"]["sha256"], strict=True))
    assert sum(originals[row.source_row] != row.sha256 for row in copies.itertuples()) > 0.9 * len(copies)
    assert (tmp_path / "augmented/train.jsonl").read_bytes() == (tmp_path / "again/train.jsonl").read_bytes()
    assert again.added_rows == out.added_rows
