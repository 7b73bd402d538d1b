"""Text's frozen-feature cache: the vector a sequence classifier's head receives for each text (captured with a
hook), and mean-pooled last hidden states for ranking model.candidates with a linear probe."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from components.features import NotCacheable, add_weights, read_or_compute
from components.modalities.text.pooling import masked_mean
from components.modalities.text.pooling import of as pooling_of
from components.model import head_attribute


def cacheable_head(model: Any) -> tuple[Any, Any]:
    """(dropout, head): the modules that turn the frozen backbone's vector into logits, when every trainable
    parameter is inside the head; raises NotCacheable otherwise (e.g. DistilBERT's trainable pre_classifier)."""
    import torch

    head = getattr(model, head_attribute(model))
    head_ids = {id(p) for p in head.parameters()}
    outside = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in head_ids]
    if outside:
        raise NotCacheable(f"{len(outside)} trainable tensors outside the head (e.g. {outside[0]})")
    dropout = getattr(model, "dropout", None)
    if not isinstance(dropout, torch.nn.Dropout):
        dropout = torch.nn.Identity()
    return dropout, head


def head_inputs(model: Any, encoded: list[dict[str, Any]], pad_token_id: int, batch_size: int,
                device: str) -> Any:
    """What the head receives for each text (rows in input order), from one inference pass of the frozen model.

    The pass runs in eval mode (no dropout) on batches of similar length. The head applied to these vectors is
    checked against the model's own logits on the first batch, so a model that does more between backbone and head
    raises NotCacheable instead of training on the wrong inputs.
    """
    _, head = cacheable_head(model)
    captured: list[Any] = []
    hook = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach()))

    def vectors(ids: Any, mask: Any, first: bool) -> Any:
        captured.clear()
        logits = model(input_ids=ids, attention_mask=mask).logits
        if len(captured) != 1 or captured[0].dim() != 2:
            raise NotCacheable("the head does not receive one vector per text")
        if first and not _close(head(captured[0]), logits):
            raise NotCacheable("the head's input alone does not reproduce the model's logits")
        return captured[0]

    try:
        return _each_text(model, encoded, pad_token_id, batch_size, device, vectors)
    finally:
        hook.remove()


def mean_pooled(model: Any, encoded: list[dict[str, Any]], pad_token_id: int, batch_size: int, device: str) -> Any:
    """The backbone's last hidden states averaged over each text's real tokens: the usual embedding for a linear
    probe of any encoder, whatever head its architecture puts on top."""

    def vectors(ids: Any, mask: Any, first: bool) -> Any:
        return masked_mean(model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    return _each_text(model, encoded, pad_token_id, batch_size, device, vectors)


def _close(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-3))


def _each_text(model: Any, encoded: list[dict[str, Any]], pad_token_id: int, batch_size: int, device: str,
               vectors: Any) -> Any:
    """vectors(ids, mask, first_batch) for every text, run in eval mode on length-sorted batches; rows in input
    order, float32 on the CPU."""
    import torch

    was_training = model.training
    model.eval()
    lengths = np.array([len(item["input_ids"]) for item in encoded])
    order = np.argsort(lengths, kind="stable")
    out: Any = None
    try:
        with torch.no_grad():  # not inference_mode: the features become training inputs
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                width = int(lengths[index].max())
                ids = torch.full((len(index), width), pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(index), width), dtype=torch.long)
                for row, i in enumerate(index):
                    n = int(lengths[i])
                    ids[row, :n] = torch.tensor(encoded[i]["input_ids"])
                    mask[row, :n] = 1
                batch = vectors(ids.to(device), mask.to(device), start == 0).float().cpu()
                if out is None:
                    out = torch.zeros((len(encoded), batch.shape[1]), dtype=torch.float32)
                out[torch.as_tensor(index)] = batch
    finally:
        model.train(was_training)
    return out


def cache_key(model: Any, encoded: list[dict[str, Any]], kind: str = "head") -> str:
    """A hash of the kind of vector, the model's pooling, the frozen weights (everything but the head) and the token
    ids: one entry per model + data."""
    digest = hashlib.sha256(f"{kind}|{pooling_of(model)}".encode())
    add_weights(digest, model, skip=head_attribute(model) + ".")
    for item in encoded:
        digest.update(np.asarray(item["input_ids"], dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:24]


def cached_vectors(model: Any, encoded: list[dict[str, Any]], pad_token_id: int, batch_size: int, device: str,
                   cache_dir: str | Path | None, kind: str = "head") -> tuple[Any, bool]:
    """head_inputs (kind "head") or mean_pooled (kind "mean"), read from cache_dir when this model + data was seen
    before; (vectors, was_cached)."""
    compute = head_inputs if kind == "head" else mean_pooled
    path = Path(cache_dir) / f"{cache_key(model, encoded, kind)}.safetensors" if cache_dir is not None else None
    return read_or_compute(path, len(encoded), lambda: compute(model, encoded, pad_token_id, batch_size, device))

