"""Optimizers (SGD with momentum, RMSprop, Adam), gradient clipping and learning-rate schedules.

An optimizer holds the model's live ``params`` and ``grads`` dicts (name -> array) and updates the
parameters in place. Clipping belongs to the step, never to the loss: ``step()`` first clips the
gradients (by value, then by global norm), then applies the update rule at the learning rate the
schedule gives for this step. It does not zero the gradients: the trainer does, as backprop adds
into them (llm.c style).

Update rules (g = gradient after clipping and weight decay, t = 1, 2, ... the step number):

    SGD       v = μ v + g;                          p -= lr v        (nesterov: p -= lr (g + μ v))
    RMSprop   s = α s + (1 - α) g²;                 p -= lr g / (√s + ε)
    Adam      m = β1 m + (1 - β1) g;  v = β2 v + (1 - β2) g²
              p -= lr m̂ / (√v̂ + ε),  m̂ = m / (1 - β1^t),  v̂ = v / (1 - β2^t)

These are torch.optim's formulas (same defaults), so results can be compared with it.

A step is two compiled passes over all parameters at most, whatever their number (as torch's fused
optimizers; rnncore/_optim.pxi): the global norm (with the clamping by value on the way), then the
update (with the scaling by the norm, the weight decay and the rule). Each buffer of the state is one
flat array per dtype, and ``state[buffer][name]`` a view into it. The bits do not depend on the
thread count.
"""
import math

import numpy as np

from rnncore import _kernels as K
from rnncore.engine.threads import get_num_threads
from rnncore.layers.recurrent import mark_modified

__all__ = [
    "Optimizer", "SGD", "RMSprop", "Adam", "OPTIMIZERS", "make_optimizer",
    "clip_grad_norm", "clip_grad_value", "global_norm",
    "Constant", "StepDecay", "Cosine", "SCHEDULES", "make_schedule",
]


# ---------------------------------------------------------------------------------------------
# clipping


def _by_dtype(arrays):
    """The arrays in lists of one dtype each (the compiled passes take one dtype at a time)."""
    groups = {}
    for a in arrays:
        groups.setdefault(np.asarray(a).dtype, []).append(a)
    return list(groups.values())


def _sumsq(groups, clip_value, num_threads):
    # Σ g² over every gradient, clamping each to [-clip_value, clip_value] first (clip_value > 0)
    return sum(K.grad_sumsq(g, clip_value, num_threads) for g in groups)


def global_norm(grads):
    """sqrt(Σ_name Σ g²) over every gradient array (float32/float64, C-contiguous), accumulated in
    float64 in a fixed order."""
    return math.sqrt(_sumsq(_by_dtype(grads.values()), 0.0, get_num_threads()))


def clip_grad_norm(grads, max_norm):
    """Scale all gradients in place by min(1, max_norm / ‖g‖), ‖g‖ the global norm; return ‖g‖ (before)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm: expected a positive number, got {max_norm!r}")
    norm = global_norm(grads)
    if norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= g.dtype.type(scale)
    return norm


def clip_grad_value(grads, clip_value):
    """Clamp every gradient element to [-clip_value, clip_value], in place (the optimizer's pass)."""
    if not clip_value > 0:
        raise ValueError(f"clip_value: expected a positive number, got {clip_value!r}")
    _sumsq(_by_dtype(grads.values()), clip_value, get_num_threads())


# ---------------------------------------------------------------------------------------------
# learning-rate schedules: schedule(step) -> lr, step = number of updates already done (0-based)


class Constant:
    name = "constant"

    def __init__(self, lr):
        self.lr = _positive("lr", lr)

    def __call__(self, step):
        return self.lr

    def config(self):
        return {"name": self.name, "lr": self.lr}


class StepDecay:
    """lr * gamma ** (step // step_size): multiply by gamma every step_size updates."""
    name = "step"

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr = _positive("lr", lr)
        if int(step_size) != step_size or step_size < 1:
            raise ValueError(f"step_size: expected a positive integer, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = _positive("gamma", gamma)

    def __call__(self, step):
        return self.lr * self.gamma ** (step // self.step_size)

    def config(self):
        return {"name": self.name, "lr": self.lr, "step_size": self.step_size, "gamma": self.gamma}


class Cosine:
    """Linear warm-up over warmup_steps, then cosine decay from lr to min_lr at total_steps."""
    name = "cosine"

    def __init__(self, lr, total_steps, min_lr=0.0, warmup_steps=0):
        self.lr = _positive("lr", lr)
        if int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"total_steps: expected a positive integer, got {total_steps!r}")
        self.total_steps = int(total_steps)
        if not 0 <= min_lr <= lr:
            raise ValueError(f"min_lr: expected a number in [0, lr={lr}], got {min_lr!r}")
        self.min_lr = float(min_lr)
        if int(warmup_steps) != warmup_steps or not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps: expected an integer in [0, {total_steps}), got {warmup_steps!r}")
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        progress = min(step - self.warmup_steps, span) / span
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def config(self):
        return {"name": self.name, "lr": self.lr, "total_steps": self.total_steps,
                "min_lr": self.min_lr, "warmup_steps": self.warmup_steps}


SCHEDULES = {cls.name: cls for cls in (Constant, StepDecay, Cosine)}


def make_schedule(config):
    """Build a schedule from its config() dict (as stored in a checkpoint)."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {sorted(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name](**config)


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------
# optimizers


class Optimizer:
    """Base class: clipping, schedule, weight decay, step count and state (de)serialization.

    params, grads: dicts name -> array (same keys and shapes); params are updated in place.
    lr: a positive number or a schedule (callable step -> lr, with .config()).
    clip_norm: clip the global gradient norm to this value before each update (None: no clipping).
    clip_value: clamp each gradient element to [-clip_value, clip_value] first (None: no clamping).
    weight_decay: L2 penalty added to the gradient (g += weight_decay * p), as torch.optim.
    """
    name = None
    buffer_names = ()

    def __init__(self, params, grads, lr, clip_norm=None, clip_value=None, weight_decay=0.0):
        if set(params) != set(grads):
            raise ValueError(f"params and grads: expected the same names, got {sorted(set(params) ^ set(grads))} "
                             f"in only one of them")
        for k in params:
            p, g = params[k], grads[k]
            if not (isinstance(p, np.ndarray) and isinstance(g, np.ndarray)):
                raise TypeError(f"params[{k!r}], grads[{k!r}]: expected numpy arrays, got "
                                f"{type(p).__name__} and {type(g).__name__}")
            if p.shape != g.shape:
                raise ValueError(f"grads[{k!r}]: expected shape {p.shape}, got {g.shape}")
            if p.dtype not in (np.float32, np.float64) or g.dtype != p.dtype:
                raise TypeError(f"params[{k!r}], grads[{k!r}]: expected float32 or float64 arrays of one "
                                f"dtype, got {p.dtype} and {g.dtype}")
            if not (p.flags.c_contiguous and g.flags.c_contiguous and p.flags.writeable and g.flags.writeable):
                raise ValueError(f"params[{k!r}], grads[{k!r}]: expected writable C-contiguous arrays")
        self.params = params
        self.grads = grads
        self.schedule = lr if callable(lr) else Constant(lr)
        self.clip_norm = None if clip_norm is None else _positive("clip_norm", clip_norm)
        self.clip_value = None if clip_value is None else _positive("clip_value", clip_value)
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay: expected a number >= 0, got {weight_decay!r}")
        self.weight_decay = float(weight_decay)
        self.step_count = 0
        self.last_grad_norm = None
        # per dtype: the parameter names, and each buffer as one flat array; state[b][name] views it
        self.state = {b: {} for b in self.buffer_names}
        self._groups = []
        for dtype in dict.fromkeys(p.dtype for p in params.values()):
            names = [k for k, p in params.items() if p.dtype == dtype]
            flat = [np.zeros(sum(params[k].size for k in names), dtype) for _ in self.buffer_names]
            off = 0
            for k in names:
                n = params[k].size
                for b, buf in zip(self.buffer_names, flat):
                    self.state[b][k] = buf[off:off + n].reshape(params[k].shape)
                off += n
            self._groups.append((names, flat))

    @property
    def lr(self):
        """Learning rate of the next step."""
        return self.schedule(self.step_count)

    def step(self):
        """Clip the gradients (in place), then update every parameter in place. Returns the lr used.
        A layer's backprop of a forward_train from before the step then raises RuntimeError.

        Two compiled passes over all parameters at most: with clip_norm, the global norm (clamping
        by clip_value on the way), then the update, which scales the gradients by
        min(1, clip_norm / (‖g‖ + 1e-6)) in place, adds the weight decay and applies the rule."""
        nt = get_num_threads()
        clip_value, scale = self.clip_value or 0.0, 1.0
        grads = [list(map(self.grads.__getitem__, names)) for names, _ in self._groups]
        if self.clip_norm is not None:
            self.last_grad_norm = norm = math.sqrt(_sumsq(grads, clip_value, nt))
            clip_value = 0.0        # done
            if norm > self.clip_norm:
                scale = self.clip_norm / (norm + 1e-6)
        lr = self.schedule(self.step_count)
        self.step_count += 1
        rule, stateful = self._rule(lr), self._uses_state()
        for (names, buffers), g in zip(self._groups, grads):
            K.optim_update(list(map(self.params.__getitem__, names)), g, buffers if stateful else [],
                           weight_decay=self.weight_decay, clip_value=clip_value, grad_scale=scale,
                           num_threads=nt, **rule)
        # as torch's step (it bumps the parameters' versions): a backprop of a forward from
        # before this step would mix old and new weights, so it raises
        mark_modified(self.params.values())
        return lr

    def _rule(self, lr):
        """The keyword arguments of rnncore._kernels.optim_update for this step at learning rate lr:
        rule, lr, a, b, c, eps, nesterov."""
        raise NotImplementedError

    def _uses_state(self):
        """False when this step reads no state buffer (SGD without momentum: they stay zero)."""
        return True

    def zero_grad(self):
        for g in self.grads.values():
            g.fill(0)

    def config(self):
        return {"name": self.name, "schedule": self.schedule.config(), "clip_norm": self.clip_norm,
                "clip_value": self.clip_value, "weight_decay": self.weight_decay, **self._hyper()}

    def _hyper(self):
        return {}

    def state_dict(self):
        """{'step_count': int, 'buffers': {'<buffer>/<param name>': array copy}}."""
        return {"step_count": self.step_count,
                "buffers": {f"{b}/{k}": v.copy() for b, d in self.state.items() for k, v in d.items()}}

    def load_state_dict(self, state):
        """Strict: every buffer of every parameter, with the right shape, and nothing else."""
        buffers = state["buffers"]
        expected = {f"{b}/{k}" for b, d in self.state.items() for k in d}
        if set(buffers) != expected:
            missing, extra = sorted(expected - set(buffers)), sorted(set(buffers) - expected)
            raise ValueError(f"optimizer state: missing {missing}, unexpected {extra}")
        for b, d in self.state.items():
            for k, v in d.items():
                src = np.asarray(buffers[f"{b}/{k}"])
                if src.shape != v.shape:
                    raise ValueError(f"optimizer state {b}/{k}: expected shape {v.shape}, got {src.shape}")
                v[...] = src
        self.step_count = int(state["step_count"])


class SGD(Optimizer):
    """SGD with momentum μ (0: plain SGD) and optional Nesterov momentum."""
    name = "sgd"
    buffer_names = ("momentum",)

    def __init__(self, params, grads, lr=0.01, momentum=0.0, nesterov=False, **kw):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov: needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        super().__init__(params, grads, lr, **kw)

    def _rule(self, lr):
        # v = μ v + g;  p -= lr v   (Nesterov: p -= lr (g + μ v));  μ = 0: p -= lr g (no buffer used)
        return {"rule": "sgd", "lr": lr, "a": self.momentum, "nesterov": self.nesterov}

    def _uses_state(self):
        return self.momentum != 0

    def _hyper(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class RMSprop(Optimizer):
    """RMSprop: divide the step by a running root mean square of recent gradients."""
    name = "rmsprop"
    buffer_names = ("square_avg",)

    def __init__(self, params, grads, lr=0.01, alpha=0.99, eps=1e-8, **kw):
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha: expected a number in [0, 1), got {alpha!r}")
        self.alpha = float(alpha)
        self.eps = _positive("eps", eps)
        super().__init__(params, grads, lr, **kw)

    def _rule(self, lr):
        # s = α s + (1 - α) g²;  p -= lr g / (√s + ε)
        return {"rule": "rmsprop", "lr": lr, "a": self.alpha, "eps": self.eps}

    def _hyper(self):
        return {"alpha": self.alpha, "eps": self.eps}


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba), torch.optim.Adam's formula."""
    name = "adam"
    buffer_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, **kw):
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        self.betas = (float(b1), float(b2))
        self.eps = _positive("eps", eps)
        super().__init__(params, grads, lr, **kw)

    def _rule(self, lr):
        # m = β1 m + (1 - β1) g (torch's lerp);  v = β2 v + (1 - β2) g²
        # p -= lr m̂ / (√v̂ + ε), written as torch does: (lr / bc1) m / (√v / √bc2 + ε)
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1 ** self.step_count, 1 - b2 ** self.step_count
        return {"rule": "adam", "lr": lr / bc1, "a": b1, "b": b2, "c": math.sqrt(bc2), "eps": self.eps}

    def _hyper(self):
        return {"betas": list(self.betas), "eps": self.eps}


OPTIMIZERS = {cls.name: cls for cls in (SGD, RMSprop, Adam)}


def make_optimizer(params, grads, config):
    """Build an optimizer from its config() dict (as stored in a checkpoint)."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {name!r}")
    schedule = make_schedule(config.pop("schedule"))
    if "betas" in config:
        config["betas"] = tuple(config["betas"])
    return OPTIMIZERS[name](params, grads, lr=schedule, **config)
