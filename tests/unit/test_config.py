from pathlib import Path

import pytest

from components.config import ConfigError, load_params, parse_params


def test_project_params_file_parses(project_root: Path) -> None:
    params = load_params(project_root / "params.yaml")
    assert params.data.is_builtin
    assert params.model.is_builtin
    assert params.validate_params.min_per_class >= 1
    assert params.paths.prepared == "data/prepared"


def test_empty_document_gives_defaults() -> None:
    params = parse_params(None)
    assert params.train.recipe == params.train.learning_rate == params.augment.copies_per_example == "auto"
    assert params.serve.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"train": {"lerning_rate": 1e-4}}, "train.lerning_rate: unknown key"),
        ({"trian": {}}, "trian: unknown key"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"learning_rate": "fast"}}, "train.learning_rate"),
        ({"train": {"lr_scheduler": "exp"}}, "train.lr_scheduler"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction"),
        ({"data": {"val_fraction": 0.5, "test_fraction": 0.45}}, "val_fraction + test_fraction"),
        ({"validate": {"min_per_class": 0}}, "validate.min_per_class"),
        ({"evaluate": {"min_macro_f1": 2}}, "evaluate.min_macro_f1"),
        ({"package": {"model_name": "Bad Name!"}}, "package.model_name"),
        ({"serve": {"port": 70000}}, "serve.port"),
        ({"serve": {"host": "localhost"}}, "serve.host: Value error, must be an IP address"),
        ({"serve": {"layout": "gpu"}}, "serve.layout: Input should be 'auto', 'single' or 'split'"),
    ],
)
def test_bad_values_are_named(raw: dict, named: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_params(raw)
    assert named in str(error.value)


def test_every_bad_key_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        parse_params({"train": {"epochs": -1, "batch_sise": 8}, "augment": {"p_swap": 3}})
    message = str(error.value)
    assert "3 invalid setting(s)" in message
    for key in ("train.epochs", "train.batch_sise", "augment.p_swap"):
        assert key in message


def test_not_a_mapping_is_rejected() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_params(["data"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(broken)


def test_a_value_that_fits_no_alternative_gets_one_line_naming_them_all() -> None:
    with pytest.raises(ConfigError) as error:
        parse_params({"train": {"epochs": "lots", "class_weights": 7}})
    message = str(error.value)
    assert "2 invalid setting(s)" in message
    assert "train.epochs: Input should be 'auto'; or: Input should be a valid number" in message
    assert "train.class_weights: Input should be 'none' or 'balanced'; or:" in message
    assert parse_params({"train": {"epochs": "auto"}}).train.epochs == "auto"
    assert parse_params({"train": {"epochs": 4}}).train.epochs == 4.0
