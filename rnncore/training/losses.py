"""Losses, each fused with its gradient: ``loss, d_pred = loss_fn(pred, target, ...)``.

Softmax cross-entropy follows the lecture notes (../shared/seeds): for one sequence

    o^(t)  = c + V h^(t)                    (the logits, what the model returns)
    ŷ^(t)  = softmax(o^(t))
    L^(t)  = -log ŷ^(t)[y^(t)]
    L      = Σ_t L^(t)
    ∂L/∂o^(t) = ŷ^(t) - onehot(y^(t))

and over a batch L sums over every valid (t, b) position. ``reduction="mean"`` divides by the number
of valid positions (so the loss is nats per token, and the gradient is divided by the same count).

The cross-entropy runs in one compiled pass (rnncore._kernels.cross_entropy): each row of logits is
read once for its max, once for exp, and its gradient written once, without temporaries the size of
the logits; its loss is summed in double.

Positions at or past ``lengths[b]`` (padding) add nothing to the loss and get a zero gradient.
Clipping is *not* done here: the gradient returned is the exact gradient of the loss returned
(clip in the optimizer step, see rnncore.training.optim).
"""
import numpy as np

from rnncore import _kernels as K
from rnncore.engine.threads import get_num_threads
from rnncore.engine.validation import check_ids, check_lengths, check_reduction

__all__ = ["softmax_cross_entropy", "mse", "length_mask", "log_softmax", "softmax", "softmax_backward"]

def length_mask(lengths, T, B):
    """Boolean (T, B) mask, True where t < lengths[b]; all True when lengths is None."""
    if lengths is None:
        return np.ones((T, B), dtype=bool)
    lengths = check_lengths(lengths, T, B, minimum=0, dtype=np.int64)
    return np.arange(T)[:, None] < lengths[None, :]


def _valid_mask(lead_shape, lengths, mask):
    """Mask over the leading (non-class) dims of the prediction: from lengths (time-major) and/or mask."""
    valid = np.ones(lead_shape, dtype=bool)
    if lengths is not None:
        if len(lead_shape) != 2:
            raise ValueError(f"lengths need time-major (T, B) predictions, got leading shape {lead_shape}")
        valid &= length_mask(lengths, *lead_shape)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != lead_shape:
            raise ValueError(f"mask: expected shape {lead_shape}, got {mask.shape}")
        valid &= mask
    return valid


def softmax(z, axis=-1, mask=None):
    """softmax(z) = exp(z - max z) / Σ exp(z - max z) along axis (shifted by the max so exp never
    overflows). mask: boolean, broadcast against z: the softmax over the True positions only, 0 at
    the others (e.g. attention over the valid source steps). rnncore's one softmax: the models'
    sampling, attention and estimators all call it."""
    if mask is not None:
        z = np.where(mask, z, -np.inf)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(p, dp, axis=-1):
    """dz = J_softmax(z)^T dp = p * (dp - Σ p dp), from p = softmax(z) (zero where p is 0: masked)."""
    return p * (dp - (p * dp).sum(axis=axis, keepdims=True))


def log_softmax(logits, axis=-1):
    """log softmax, stable: shift by the max so exp never overflows."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax_cross_entropy(logits, targets, lengths=None, mask=None, reduction="sum"):
    """Softmax cross-entropy and its gradient with respect to the logits.

    logits:  (T, B, V) for a prediction at every step, or (B, V) for one per sequence (any (..., V)).
    targets: integer class ids of shape logits.shape[:-1].
    lengths: (B,) valid steps per sequence for time-major (T, B, V) logits; padding adds nothing.
    mask:    optional boolean array of shape logits.shape[:-1]; False positions add nothing.
    reduction: "sum" (L = Σ_t L^(t), summed over the batch too) or "mean" (divided by the number of
        valid positions).
    Returns (loss as a Python float, d_logits of logits' shape and dtype).
    """
    check_reduction(reduction)
    logits = np.asarray(logits)
    if logits.dtype not in (np.float32, np.float64):
        logits = logits.astype(np.float64)
    targets = np.asarray(targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets: expected shape {logits.shape[:-1]}, got {targets.shape}")
    valid = _valid_mask(logits.shape[:-1], lengths, mask)
    # padding may hold any id; only valid positions must name a class
    targets = check_ids(targets, logits.shape[-1], "targets", what="class ids", where=valid)
    n = int(valid.sum())
    scale = 1.0 / n if reduction == "mean" and n else 1.0
    V = logits.shape[-1]
    z = np.ascontiguousarray(logits).reshape(-1, V)
    d_logits = np.empty_like(z)
    # L = Σ_{valid} (log Σ exp(o - max o) - (o[y] - max o));  ∂L/∂o = scale (softmax(o) - onehot(y)),
    # zero at padding
    loss = K.cross_entropy(d_logits, z, np.ascontiguousarray(targets).reshape(-1),
                           None if n == valid.size else valid.reshape(-1).view(np.uint8), scale,
                           get_num_threads())
    return loss * scale, d_logits.reshape(logits.shape)


def mse(pred, target, lengths=None, mask=None, reduction="mean"):
    """Mean squared error (as torch.nn.MSELoss, no 1/2) and its gradient with respect to pred.

    pred, target: same shape, (T, B, O) per step or (B, O) per sequence (any shape); targets must be
        finite where they count (padding may hold anything, e.g. NaN).
    lengths: (B,) for time-major (T, B, ...) predictions; padding adds nothing.
    mask:    optional boolean array of pred.shape[:-1].
    reduction: "sum" (Σ (pred - target)²) or "mean" (divided by the number of valid elements).
    Returns (loss as a Python float, d_pred of pred's shape and dtype).
    """
    check_reduction(reduction)
    pred = np.asarray(pred)
    if pred.dtype.kind != "f":
        pred = pred.astype(np.float64)
    target = np.asarray(target, dtype=pred.dtype)
    if target.shape != pred.shape:
        raise ValueError(f"target: expected shape {pred.shape}, got {target.shape}")
    if pred.ndim < 2:
        raise ValueError(f"pred: expected (..., O) with at least 2 dims, got shape {pred.shape}")
    valid = _valid_mask(pred.shape[:-1], lengths, mask)[..., None]
    finite = np.isfinite(target)
    if not finite.all() and (~finite & valid).any():
        bad = target[~finite & valid][0]
        raise ValueError(f"target: expected finite values, got {bad} at {np.argwhere(~finite & valid)[0].tolist()}")
    diff = np.where(valid, pred - target, 0).astype(pred.dtype, copy=False)
    # L = Σ (pred - target)²,  ∂L/∂pred = 2 (pred - target)
    loss = float(np.sum(np.square(diff, dtype=np.float64)))
    d_pred = 2 * diff
    if reduction == "mean":
        n = int(valid.sum()) * pred.shape[-1]
        if n:
            loss /= n
            d_pred /= d_pred.dtype.type(n)
    return loss, d_pred
