"""The champion registry against a real (temporary, per test session) BentoML model store."""

from pathlib import Path

import pytest

from components import registry
from components.package import store
from components.stage import StageError


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return f"reg-{request.node.name.replace('_', '-')[5:40].strip('-')}"


def stored(tmp_path: Path, name: str, f1: float) -> str:
    folder = tmp_path / f"m{f1}"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(str(f1).encode())
    return store(folder, name, {"test_macro": {"f1": f1}, "decision": "promote", "base_model": "tiny"})


def test_promote_and_roll_back_are_logged(tmp_path: Path, name: str) -> None:
    first, second, third = (stored(tmp_path, name, f1) for f1 in (0.5, 0.6, 0.7))
    assert registry.champion(name) is None
    assert registry.set_champion(name, first, "promote", "first") is None
    assert registry.set_champion(name, second, "promote", "better") == first
    assert registry.set_champion(name, third, "promote", "better again") == second

    assert registry.rollback(name) == second
    assert registry.champion(name) == second
    assert registry.rollback(name) == first  # the champion before `second` became it
    assert registry.rollback(name, third) == third
    events = [(e["event"], e["tag"], e["previous"]) for e in registry.history(name)]
    assert events[-3:] == [("rollback", second, third), ("rollback", first, second), ("rollback", third, first)]
    assert all(e["at"] and e["by"] for e in registry.history(name))

    listed = registry.stored_models(name)
    assert {m.tag for m in listed} == {first, second, third}
    assert [m.tag for m in listed if m.champion] == [third]
    assert {m.test_macro_f1 for m in listed} == {0.5, 0.6, 0.7}


def test_unknown_tags_and_nothing_to_roll_back_are_named(tmp_path: Path, name: str) -> None:
    with pytest.raises(StageError, match="no earlier champion"):
        registry.rollback(name)
    with pytest.raises(StageError, match="no model .* `tuneline models`"):
        registry.set_champion(name, f"{name}:doesnotexist", "promote", "typo")
    tag = stored(tmp_path, name, 0.5)
    registry.set_champion(name, tag, "promote", "first")
    with pytest.raises(StageError, match="no earlier champion"):
        registry.rollback(name)
    assert registry.champion(name) == tag
    other = stored(tmp_path, f"{name}-other", 0.9)
    with pytest.raises(StageError, match="is not a"):
        registry.set_champion(name, other, "promote", "wrong model")
    assert registry.champion(name) == tag
