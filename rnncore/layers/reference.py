"""Pure-numpy reference of every rnncore cell and of the full stack: forward and BPTT, written to read
like the equations (../shared/seeds) rather than to run fast. It is the first oracle the compiled
kernels are tested against; PyTorch on the same weights and float64 central differences check it.

    output, h_n, cache = forward(config, params, x, hx=None, lengths=None, masks=None)
    dx, dhx, grads     = backward(config, params, cache, d_output, d_h_n=None, record=None)

``record`` (optional, for rnncore.models.diagnostics): a dict that backward fills with the per-step gradients,
``record[(layer, direction)] = {"dh": (T, B, P), "dc": (T, B, H) or None}``: dh[t] is the total
gradient of the loss with respect to h_t (from the output at t and through every later step), dc[t]
the gradient reaching c_t from step t+1 (LSTM). Both are 0 at padded steps. ``step_gates`` names
the gate activations kept in a step's cache. Neither changes any result.

``config`` is a layer's ``config`` dict (see API_CONTRACT.md), ``params`` maps PyTorch names to arrays
and ``grads`` has the same keys. For LSTM, ``hx``/``h_n``/``d_h_n``/``dhx`` are ``(h, c)`` pairs
(``d_h_n`` or either member may be None). ``masks`` are the dropout masks of layers 1..L-1, each
(T, B, D*P) and already scaled, multiplied onto that layer's input. Arithmetic is done in the dtype
of the inputs: nothing is cast.

Notation (one time step of one direction of one layer; B = batch, H = hidden, P = proj_size or H)

    x_t     (B, I)   input of the layer at step t (the output of the layer below, or x)
    h_t     (B, P)   hidden state after step t, also the layer's output at t; h_{-1} = h0
    c_t     (B, H)   LSTM cell state after step t
    a_t     (B, G*H) gate pre-activations, G = 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n)

    RNN      h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),   f = tanh or relu
    LSTM     i = σ(a_i [+ w_ci * c_{t-1}])   f = σ(a_f [+ w_cf * c_{t-1}])   g = tanh(a_g)
             c_t = f * c_{t-1} + i * g
             o = σ(a_o [+ w_co * c_t])        m_t = o * tanh(c_t)
             h_t = m_t  or, with proj_size > 0,  h_t = W_hr m_t          [..] only when peephole
    GRU      r = σ(W_ir x + b_ir + W_hr h + b_hr)   z = σ(W_iz x + b_iz + W_hz h + b_hz)
             reset_after=True  (PyTorch):  n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
             reset_after=False (original): n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
             h_t = (1 - z) * n + z * h_{t-1}

Variable lengths follow pack_padded_sequence(enforce_sorted=False): a step t >= lengths[b] leaves the
state of sequence b unchanged and outputs 0. The forward direction therefore ends (h_n) at step
lengths[b]-1, and the reverse direction, which scans t = T-1 .. 0, starts from h0 at step lengths[b]-1.
In backward such a step passes the state gradient through untouched and ignores d_output.

Backward mirrors forward step by step (min-char-rnn style): walk the steps in reverse scan order
carrying ``dh_next`` (and ``dc_next``); each gradient is named d<name> and accumulated with +=.
"""
import numpy as np

__all__ = ["forward", "backward", "param_names", "gate_count", "step_gates"]

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def gate_count(mode):
    """G: number of gate blocks stacked in weight_ih / weight_hh (1 RNN, 4 LSTM, 3 GRU)."""
    return GATES[mode]


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _sizes(config):
    """(H, P, D): hidden size, size of h (proj_size or H), number of directions."""
    H = config["hidden_size"]
    P = config.get("proj_size", 0) or H
    D = 2 if config.get("bidirectional", False) else 1
    return H, P, D


def param_names(config, layer, direction):
    """Names of the parameters of one (layer, direction), PyTorch style, in a fixed order."""
    sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    names = ["weight_ih" + sfx, "weight_hh" + sfx]
    if config.get("bias", True):
        names += ["bias_ih" + sfx, "bias_hh" + sfx]
    if config["mode"] == "LSTM" and config.get("proj_size", 0):
        names += ["weight_hr" + sfx]
    if config["mode"] == "LSTM" and config.get("peephole", False):
        names += ["weight_ci" + sfx, "weight_cf" + sfx, "weight_co" + sfx]
    return names


def _cell_params(config, params, layer, direction):
    """Params of one (layer, direction) under short names: W_ih, W_hh, b_ih, b_hh, W_hr, w_ci, ..."""
    short = {"weight_ih": "W_ih", "weight_hh": "W_hh", "bias_ih": "b_ih", "bias_hh": "b_hh",
             "weight_hr": "W_hr", "weight_ci": "w_ci", "weight_cf": "w_cf", "weight_co": "w_co"}
    p = {}
    for name in param_names(config, layer, direction):
        p[short[name.split("_l")[0]]] = params[name]
    return p, {short[name.split("_l")[0]]: name for name in param_names(config, layer, direction)}


def _linear(x, W, b):
    # x @ W.T + b, with b optional (bias=False)
    y = x @ W.T
    return y if b is None else y + b


# ---------------------------------------------------------------------------------------------------
# Cells: one step forward and its backward, side by side. Step numbers match between the two.
# A step's forward returns (h_t, c_t or None, cache); its backward takes the gradients flowing into
# h_t and c_t, accumulates parameter gradients into dp, and returns (dx_t, dh_{t-1}, dc_{t-1}).
# ---------------------------------------------------------------------------------------------------

def _through_linear(p, dp, da, x, h_prev):
    """Backward of a = W_ih x + b_ih + W_hh h_prev + b_hh: accumulates dW_ih, dW_hh, db_ih, db_hh into
    dp and returns (dx, dh_prev)."""
    dp["W_ih"] += da.T @ x
    dp["W_hh"] += da.T @ h_prev
    if "b_ih" in dp:
        dp["b_ih"] += da.sum(0)
        dp["b_hh"] += da.sum(0)
    return da @ p["W_ih"], da @ p["W_hh"]


def rnn_step_forward(p, x, h_prev, relu):
    # 1. pre-activation a = W_ih x + b_ih + W_hh h + b_hh          (B, H)
    a = _linear(x, p["W_ih"], p.get("b_ih")) + _linear(h_prev, p["W_hh"], p.get("b_hh"))
    # 2. h = f(a)
    h = np.maximum(a, 0) if relu else np.tanh(a)
    return h, None, (x, h_prev, h)


def rnn_step_backward(p, dp, cache, dh, dc, relu):
    x, h_prev, h = cache
    # 2. through f: relu' = [a > 0] (= [h > 0]), tanh' = 1 - h^2
    da = dh * (h > 0) if relu else dh * (1 - h * h)
    # 1. into the weights, the biases, x and h_prev
    return _through_linear(p, dp, da, x, h_prev) + (None,)


def lstm_step_forward(p, x, h_prev, c_prev):
    H = c_prev.shape[1]
    peephole = "w_ci" in p
    # 1. gate pre-activations a = W_ih x + b_ih + W_hh h + b_hh, split in PyTorch order i, f, g, o
    a = _linear(x, p["W_ih"], p.get("b_ih")) + _linear(h_prev, p["W_hh"], p.get("b_hh"))
    a_i, a_f, a_g, a_o = (a[:, k * H:(k + 1) * H] for k in range(4))
    # 2. input and forget gates (peephole: they also look at c_{t-1}), candidate g
    if peephole:
        a_i = a_i + p["w_ci"] * c_prev
        a_f = a_f + p["w_cf"] * c_prev
    i = _sigmoid(a_i)
    f = _sigmoid(a_f)
    g = np.tanh(a_g)
    # 3. new cell state
    c = f * c_prev + i * g
    # 4. output gate (peephole: it looks at the new c_t)
    if peephole:
        a_o = a_o + p["w_co"] * c
    o = _sigmoid(a_o)
    # 5. m = o * tanh(c); h = m, or h = W_hr m with a projection
    tanh_c = np.tanh(c)
    m = o * tanh_c
    h = m @ p["W_hr"].T if "W_hr" in p else m
    return h, c, (x, h_prev, c_prev, i, f, g, o, c, tanh_c, m)


def lstm_step_backward(p, dp, cache, dh, dc_next):
    x, h_prev, c_prev, i, f, g, o, c, tanh_c, m = cache
    peephole = "w_ci" in p
    # 5. through the projection h = W_hr m, then m = o * tanh(c)
    if "W_hr" in p:
        dp["W_hr"] += dh.T @ m
        dm = dh @ p["W_hr"]
    else:
        dm = dh
    do = dm * tanh_c
    da_o = do * o * (1 - o)
    dc = dc_next + dm * o * (1 - tanh_c * tanh_c)
    # 4. the output gate's peephole reads c_t
    if peephole:
        dp["w_co"] += (da_o * c).sum(0)
        dc = dc + da_o * p["w_co"]
    # 3. c = f * c_prev + i * g
    di = dc * g
    dg = dc * i
    df = dc * c_prev
    dc_prev = dc * f
    # 2. through σ and tanh; the peepholes of i and f read c_{t-1}
    da_i = di * i * (1 - i)
    da_f = df * f * (1 - f)
    da_g = dg * (1 - g * g)
    if peephole:
        dp["w_ci"] += (da_i * c_prev).sum(0)
        dp["w_cf"] += (da_f * c_prev).sum(0)
        dc_prev = dc_prev + da_i * p["w_ci"] + da_f * p["w_cf"]
    # 1. into the weights, the biases, x and h_prev
    da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)
    return _through_linear(p, dp, da, x, h_prev) + (dc_prev,)


def gru_step_forward(p, x, h_prev, reset_after):
    H = h_prev.shape[1]
    W_hh, b_hh = p["W_hh"], p.get("b_hh")
    # 1. input part of all three gates, W_i{r,z,n} x + b_i{r,z,n}      (B, 3H)
    ax = _linear(x, p["W_ih"], p.get("b_ih"))
    ax_r, ax_z, ax_n = ax[:, :H], ax[:, H:2 * H], ax[:, 2 * H:]
    # 2. recurrent part of r and z, W_h{r,z} h + b_h{r,z}
    ah_rz = _linear(h_prev, W_hh[:2 * H], None if b_hh is None else b_hh[:2 * H])
    # 3. reset and update gates
    r = _sigmoid(ax_r + ah_rz[:, :H])
    z = _sigmoid(ax_z + ah_rz[:, H:])
    # 4. candidate n: the reset gate applied after (PyTorch) or before (original) W_hn
    b_hn = None if b_hh is None else b_hh[2 * H:]
    if reset_after:
        ah_n = _linear(h_prev, W_hh[2 * H:], b_hn)          # W_hn h + b_hn
        n = np.tanh(ax_n + r * ah_n)
    else:
        ah_n = _linear(r * h_prev, W_hh[2 * H:], b_hn)      # W_hn (r * h) + b_hn
        n = np.tanh(ax_n + ah_n)
    # 5. h = (1 - z) * n + z * h_prev
    h = (1 - z) * n + z * h_prev
    return h, None, (x, h_prev, r, z, n, ah_n)


def gru_step_backward(p, dp, cache, dh, dc, reset_after):
    x, h_prev, r, z, n, ah_n = cache
    H = h_prev.shape[1]
    W_hh = p["W_hh"]
    # 5. h = (1 - z) * n + z * h_prev
    dn = dh * (1 - z)
    dz = dh * (h_prev - n)
    dh_prev = dh * z
    # 4. through tanh into the candidate's pre-activation, then through the reset gate
    da_n = dn * (1 - n * n)
    if reset_after:
        dah_n = da_n * r                          # into W_hn h + b_hn
        dr = da_n * ah_n
        dp["W_hh"][2 * H:] += dah_n.T @ h_prev
        dh_prev += dah_n @ W_hh[2 * H:]
    else:
        dah_n = da_n                              # into W_hn (r * h) + b_hn
        drh = da_n @ W_hh[2 * H:]
        dp["W_hh"][2 * H:] += da_n.T @ (r * h_prev)
        dr = drh * h_prev
        dh_prev += drh * r
    # 3. through σ
    da_r = dr * r * (1 - r)
    da_z = dz * z * (1 - z)
    # 2. recurrent part of r and z
    dah_rz = np.concatenate([da_r, da_z], axis=1)
    dp["W_hh"][:2 * H] += dah_rz.T @ h_prev
    dh_prev += dah_rz @ W_hh[:2 * H]
    # 1. input part of all gates
    dax = np.concatenate([da_r, da_z, da_n], axis=1)
    dp["W_ih"] += dax.T @ x
    if "b_ih" in dp:
        dp["b_ih"] += dax.sum(0)
        dp["b_hh"][:2 * H] += dah_rz.sum(0)
        dp["b_hh"][2 * H:] += dah_n.sum(0)
    return dax @ p["W_ih"], dh_prev, None


def step_gates(mode, cache):
    """The activations kept in one step's cache (what the step's forward returned), by name.

    RNN_TANH / RNN_RELU: h;  LSTM: i, f, g, o, c, tanh_c, m (m = o * tanh(c), h before a projection);
    GRU: r, z, n, h. Each (B, H) (GRU/RNN h: (B, P))."""
    if mode in ("RNN_TANH", "RNN_RELU"):
        return {"h": cache[2]}
    if mode == "LSTM":
        _, _, _, i, f, g, o, c, tanh_c, m = cache
        return {"i": i, "f": f, "g": g, "o": o, "c": c, "tanh_c": tanh_c, "m": m}
    if mode == "GRU":
        _, h_prev, r, z, n, _ = cache
        return {"r": r, "z": z, "n": n, "h": (1 - z) * n + z * h_prev}
    raise ValueError(f"mode: expected one of {sorted(GATES)}, got {mode!r}")


def _step_fns(config):
    """(forward, backward) step functions of the config's cell, with a uniform signature."""
    mode = config["mode"]
    if mode in ("RNN_TANH", "RNN_RELU"):
        relu = mode == "RNN_RELU"
        return (lambda p, x, h, c: rnn_step_forward(p, x, h, relu),
                lambda p, dp, cache, dh, dc: rnn_step_backward(p, dp, cache, dh, dc, relu))
    if mode == "LSTM":
        return lstm_step_forward, lstm_step_backward
    if mode == "GRU":
        reset_after = config.get("reset_after", True)
        return (lambda p, x, h, c: gru_step_forward(p, x, h, reset_after),
                lambda p, dp, cache, dh, dc: gru_step_backward(p, dp, cache, dh, dc, reset_after))
    raise ValueError(f"mode: expected one of {sorted(GATES)}, got {mode!r}")


# ---------------------------------------------------------------------------------------------------
# Layer: one direction of one layer, a scan over time (forward or reversed) with per-sequence lengths.
# ---------------------------------------------------------------------------------------------------

def layer_forward(config, p, X, h0, c0, valid, reverse):
    """X (T, B, I), h0 (B, P), c0 (B, H) or None, valid (T, B, 1) 0/1 -> Y (T, B, P), h_n, c_n, cache."""
    step_forward, _ = _step_fns(config)
    T = X.shape[0]
    steps = range(T - 1, -1, -1) if reverse else range(T)
    h, c = h0, c0
    Y = np.zeros(X.shape[:2] + (h0.shape[1],), dtype=np.result_type(X, h0))
    caches = {}
    for t in steps:
        h_new, c_new, caches[t] = step_forward(p, X[t], h, c)
        # past a sequence's length the state is carried unchanged and the output is 0
        m = valid[t]
        h = m * h_new + (1 - m) * h
        if c is not None:
            c = m * c_new + (1 - m) * c
        Y[t] = m * h_new
    return Y, h, c, (steps, caches)


def layer_backward(config, p, dp, cache, dY, dh_n, dc_n, valid, record=None):
    """dY (T, B, P), dh_n (B, P), dc_n (B, H) or None -> dX (T, B, I), dh0, dc0; dp accumulated.

    record: None, or a dict that gets "dh" (T, B, P) and "dc" (T, B, H) or None: the gradients
    flowing into each step (see the module docstring)."""
    _, step_backward = _step_fns(config)
    steps, caches = cache
    dh_next, dc_next = dh_n, dc_n
    dX = None
    if record is not None:
        record["dh"] = np.zeros(dY.shape[:2] + dh_n.shape[1:], dtype=np.result_type(dY, dh_n))
        record["dc"] = None if dc_n is None else np.zeros(dY.shape[:2] + dc_n.shape[1:], dtype=dc_n.dtype)
    for t in reversed(steps):
        m = valid[t]
        # a valid step gets the output's gradient and the state's; an invalid one passes dh_next on
        dh = m * (dY[t] + dh_next)
        dc = None if dc_next is None else m * dc_next
        if record is not None:
            record["dh"][t] = dh
            if dc is not None:
                record["dc"][t] = dc
        dx, dh_prev, dc_prev = step_backward(p, dp, caches[t], dh, dc)
        if dX is None:
            dX = np.zeros((len(caches),) + dx.shape, dtype=dx.dtype)
        dX[t] = dx
        dh_next = dh_prev + (1 - m) * dh_next
        if dc_next is not None:
            dc_next = dc_prev + (1 - m) * dc_next
    return dX, dh_next, dc_next


# ---------------------------------------------------------------------------------------------------
# Stack: depth, both directions, dropout masks between layers, batch_first, lengths.
# ---------------------------------------------------------------------------------------------------

def _valid_mask(lengths, T, B, dtype):
    """(T, B, 1) array of 0/1: 1 where t < lengths[b] (all 1 when lengths is None)."""
    if lengths is None:
        return np.ones((T, B, 1), dtype=dtype)
    lengths = np.asarray(lengths).reshape(-1)
    if lengths.shape != (B,):
        raise ValueError(f"lengths: expected shape ({B},), got {lengths.shape}")
    if lengths.min() < 1 or lengths.max() > T:
        raise ValueError(f"lengths: expected values in [1, {T}], got {lengths.tolist()}")
    return (np.arange(T)[:, None] < lengths[None, :]).astype(dtype)[:, :, None]


def forward(config, params, x, hx=None, lengths=None, masks=None):
    """Run the whole stack. Returns (output, h_n, cache); see the module docstring for shapes."""
    H, P, D = _sizes(config)
    L = config.get("num_layers", 1)
    is_lstm = config["mode"] == "LSTM"
    batch_first = config.get("batch_first", False)
    x = np.asarray(x)
    X = x.swapaxes(0, 1) if batch_first else x           # time-major (T, B, I) from here on
    T, B = X.shape[:2]
    dtype = X.dtype
    if hx is None:
        h0 = np.zeros((L * D, B, P), dtype=dtype)
        c0 = np.zeros((L * D, B, H), dtype=dtype) if is_lstm else None
    elif is_lstm:
        h0, c0 = hx
    else:
        h0, c0 = hx, None
    valid = _valid_mask(lengths, T, B, dtype)

    h_n, c_n, layer_caches = [], [], []
    inp = X
    for k in range(L):
        if k > 0 and masks:
            inp = inp * masks[k - 1]                     # dropout on the input of layers 1..L-1
        outs, dir_caches = [], []
        for d in range(D):
            p, _ = _cell_params(config, params, k, d)
            j = k * D + d
            Y, h, c, cache = layer_forward(config, p, inp, h0[j], None if c0 is None else c0[j],
                                           valid, reverse=(d == 1))
            outs.append(Y)
            h_n.append(h)
            c_n.append(c)
            dir_caches.append(cache)
        layer_caches.append((inp, dir_caches))
        inp = np.concatenate(outs, axis=2)               # [forward, reverse] along features
    output = inp.swapaxes(0, 1) if batch_first else inp
    h_n = np.stack(h_n)
    state = (h_n, np.stack(c_n)) if is_lstm else h_n
    cache = {"valid": valid, "layers": layer_caches, "masks": masks, "T": T, "B": B,
             "dtype": np.result_type(output, h0)}
    return output, state, cache


def backward(config, params, cache, d_output, d_h_n=None, record=None):
    """BPTT through the whole stack. Returns (dx, dhx, grads); grads has the keys of params.

    record: None, or a dict filled with the per-step gradients of each (layer, direction)."""
    H, P, D = _sizes(config)
    L = config.get("num_layers", 1)
    is_lstm = config["mode"] == "LSTM"
    batch_first = config.get("batch_first", False)
    T, B, dtype, valid = cache["T"], cache["B"], cache["dtype"], cache["valid"]
    d_output = np.asarray(d_output)
    dY = d_output.swapaxes(0, 1) if batch_first else d_output

    if is_lstm:
        dh_n, dc_n = d_h_n if d_h_n is not None else (None, None)
    else:
        dh_n, dc_n = d_h_n, None
    if dh_n is None:
        dh_n = np.zeros((L * D, B, P), dtype=dtype)
    if is_lstm and dc_n is None:
        dc_n = np.zeros((L * D, B, H), dtype=dtype)

    grads = {name: np.zeros_like(value) for name, value in params.items()}
    dh0 = np.zeros((L * D, B, P), dtype=dtype)
    dc0 = np.zeros((L * D, B, H), dtype=dtype) if is_lstm else None
    masks = cache["masks"]
    for k in reversed(range(L)):
        inp, dir_caches = cache["layers"][k]
        dinp = np.zeros(inp.shape, dtype=np.result_type(inp, dY))
        for d in range(D):
            p, names = _cell_params(config, params, k, d)
            dp = {short: grads[name] for short, name in names.items()}   # views: += lands in grads
            j = k * D + d
            rec = None
            if record is not None:
                rec = record[(k, d)] = {}
            dX, dh, dc = layer_backward(config, p, dp, dir_caches[d], dY[:, :, d * P:(d + 1) * P],
                                        dh_n[j], dc_n[j] if is_lstm else None, valid, rec)
            dinp += dX
            dh0[j] = dh
            if is_lstm:
                dc0[j] = dc
        if k > 0 and masks:
            dinp = dinp * masks[k - 1]
        dY = dinp                                        # gradient of the layer below's output
    dx = dY.swapaxes(0, 1) if batch_first else dY
    return dx, ((dh0, dc0) if is_lstm else dh0), grads
