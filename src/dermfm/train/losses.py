"""Training objectives, written with explicit ``(batch, view, dim)`` tensors.

* :func:`clip_loss`: symmetric InfoNCE with a learnable temperature (CLIP).
* :func:`siglip_loss`: pairwise sigmoid loss with learnable scale and bias (SigLIP).
* :func:`make_loss`: MAKE's multi-positive contrastive loss over several text views of each
  image, each view weighted by the (detached) softmax of its similarity to the diagnosis view.
* :func:`local_alignment_loss`: MAKE's local alignment of each sub-caption with the image region
  it attends to among the patch features.
* :func:`masked_latent_loss`: masked latent modelling (predict a frozen teacher's features of
  the full image from a masked image).

Under ``torch.distributed`` every loss sees the global batch: features are gathered from all
ranks with gradients (each rank computes the same global loss; DDP's gradient averaging then
yields exactly the single-process gradient). Inputs are L2-normalised features.

``labels`` (optional ``(B,)`` class ids, ``-1`` unknown) remove false negatives: two images of
the same diagnosis are not pushed apart through texts that only state the diagnosis.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world_size() -> int:
    """Number of processes in the default group (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients to the local part."""
    if world_size() == 1:
        return x
    if x.requires_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x))
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _same_label(labels: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """``(n, n)`` bool: distinct items that share a known label (false negatives)."""
    if labels is None:
        return torch.zeros(n, n, dtype=torch.bool, device=device)
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    return same & ~torch.eye(n, dtype=torch.bool, device=device)


def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric cross-entropy over the ``(B, B)`` similarity matrix (CLIP InfoNCE).

    Args:
        image: ``(B, D)`` normalised image features of this rank.
        text: ``(B, D)`` normalised text features, row ``i`` paired with image ``i``.
        logit_scale: the learnable *log* scale; similarities are multiplied by its ``exp``.
        labels: optional ``(B,)`` class ids; pairs with the same label are left out of the
            denominators.
    """
    image, text = gather(image), gather(text)
    labels = gather(labels) if labels is not None else None
    logits = logit_scale.exp() * image @ text.T
    logits = logits.masked_fill(_same_label(labels, len(image), image.device), float("-inf"))
    target = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def siglip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sigmoid loss over all ``(B, B)`` pairs: matching pairs positive, others negative.

    Normalised by the batch size as in SigLIP. Same-label pairs (``labels``) are ignored.
    """
    image, text = gather(image), gather(text)
    labels = gather(labels) if labels is not None else None
    n = len(image)
    logits = logit_scale.exp() * image @ text.T + logit_bias
    sign = 2 * torch.eye(n, device=image.device) - 1
    keep = (~_same_label(labels, n, image.device)).float()
    return -(F.logsigmoid(sign * logits) * keep).sum() / n


def view_weights(texts: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """MAKE's diagnosis-guided weights: softmax over valid views of each view's similarity to
    view 0 (the diagnosis caption), divided by ``temperature``; detached. ``(B, V)``."""
    sims = torch.einsum("bvd,bd->bv", texts, texts[:, 0]).detach() / temperature
    return torch.softmax(sims.masked_fill(~valid, float("-inf")), dim=1)


def make_loss(
    image: torch.Tensor,
    texts: torch.Tensor,
    valid: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor | None = None,
    label_views: torch.Tensor | None = None,
    weight_temperature: float = 0.5,
) -> torch.Tensor:
    """Multi-positive contrastive loss over text views (MAKE).

    Every valid view of image ``b`` is a positive for ``b``; the image-to-text term's target is
    the distribution ``w[b]`` over its own views (:func:`view_weights`), and the text-to-image
    term weighs each text's cross-entropy by its ``w``.

    Args:
        image: ``(B, D)`` normalised image features.
        texts: ``(B, V, D)`` normalised text features; view 0 states the diagnosis.
        valid: ``(B, V)`` bool, views that exist (view 0 must exist for every row).
        logit_scale: learnable log scale.
        labels: optional ``(B,)`` class ids for false-negative removal.
        label_views: ``(V,)`` bool, views whose text depends only on the label (only those are
            treated as false negatives for other images of the same label); all views if omitted.
        weight_temperature: temperature of :func:`view_weights`.
    """
    image, texts, valid = gather(image), gather(texts), gather(valid)
    labels = gather(labels) if labels is not None else None
    b, v, _ = texts.shape
    if not bool(valid[:, 0].all()):
        raise ValueError("make_loss: view 0 (the diagnosis caption) must be present for every row")
    weights = view_weights(texts, valid, weight_temperature)
    scale = logit_scale.exp()
    flat = texts.reshape(b * v, -1)
    logits = scale * image @ flat.T  # (B images, B*V texts)
    false_neg = torch.zeros(b, b, v, dtype=torch.bool, device=image.device)
    if labels is not None:
        lv = label_views if label_views is not None else torch.ones(v, dtype=torch.bool)
        false_neg = _same_label(labels, b, image.device)[:, :, None] & lv.to(image.device)
    idx = torch.arange(b, device=image.device)
    # image -> text: missing views and false negatives leave the denominator
    i2t = logits.masked_fill(~valid.reshape(1, b * v) | false_neg.reshape(b, b * v), float("-inf"))
    own_log_p = torch.log_softmax(i2t, dim=1).reshape(b, b, v)[idx, idx].masked_fill(~valid, 0.0)
    image_to_text = -(weights * own_log_p).sum(1).mean()
    # text -> image: each text against all images (missing texts carry zero weight)
    t2i = logits.T.reshape(b, v, b).masked_fill(false_neg.permute(1, 2, 0), float("-inf"))
    t_own = torch.log_softmax(t2i, dim=2)[idx, :, idx].masked_fill(~valid, 0.0)  # (B, V)
    text_to_image = -(weights * t_own).sum(1).mean()
    return (image_to_text + text_to_image) / 2


def local_alignment_loss(
    patches: torch.Tensor,
    texts: torch.Tensor,
    valid: torch.Tensor,
    logit_scale: torch.Tensor,
    weights: torch.Tensor | None = None,
    attention_temperature: float = 0.1,
) -> torch.Tensor:
    """Align each sub-caption with the region of an image it attends to (MAKE's local term).

    For text ``t`` and image ``j``, attention over ``j``'s patches is
    ``softmax_p(t . patch_p / attention_temperature)``; the attended region feature ``r_tj`` is
    the attention-weighted patch mean, normalised. Each text is then classified among the images
    by ``cos(t, r_tj)`` (target: its own image), and the per-text cross-entropies are averaged
    with ``weights`` (``(B, V)``, e.g. :func:`view_weights`; uniform over valid views if omitted).

    Args:
        patches: ``(B, P, D)`` normalised patch features.
        texts: ``(B, V, D)`` normalised text features.
        valid: ``(B, V)`` bool.
        logit_scale: learnable log scale.
    """
    patches, texts, valid = gather(patches), gather(texts), gather(valid)
    weights = gather(weights) if weights is not None else None
    b = texts.shape[0]
    attn = torch.softmax(torch.einsum("kvd,jpd->kvjp", texts, patches) / attention_temperature, -1)
    region = F.normalize(torch.einsum("kvjp,jpd->kvjd", attn, patches), dim=-1)
    logits = logit_scale.exp() * torch.einsum("kvd,kvjd->kvj", texts, region)
    idx = torch.arange(b, device=texts.device)
    own = torch.log_softmax(logits, dim=2)[idx, :, idx].masked_fill(~valid, 0.0)  # (B, V)
    if weights is None:
        weights = valid.float() / valid.float().sum(1, keepdim=True).clamp_min(1)
    return -(weights * own).sum(1).mean()


def masked_latent_loss(
    predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean cosine distance between predicted and teacher features at masked positions.

    Args:
        predicted: ``(B, C, h, w)`` student predictions from the masked image.
        target: ``(B, C, h, w)`` frozen teacher features of the full image.
        mask: ``(B, h, w)`` bool, the positions that were masked in the student's input.
    """
    if not bool(mask.any()):
        raise ValueError("masked_latent_loss: the mask hides no position")
    cos = F.cosine_similarity(predicted, target.detach(), dim=1)  # (B, h, w)
    return (1 - cos)[mask].mean()
