"""Pure-numpy reference of the gated-feedback RNN (rnncore.FeedbackRNN): forward and BPTT written to read
like the paper's equations, the first oracle the compiled core (rnncore/_feedback.pxi) is tested against.

Chung, Gulcehre, Cho, Bengio (2015), "Gated Feedback Recurrent Neural Networks", arXiv:1502.02367, §3.

    out, state, cache = forward(config, params, x, hx=None, lengths=None)
    dx, dhx, grads    = backward(config, params, cache, d_out, d_state=None)

``config``: a FeedbackRNN's ``config`` (cell, num_layers, hidden_size, gated, bias); ``params`` maps
its parameter names to arrays and ``grads`` has the same keys. Time-major: x (T, B, I), out (T, B, H);
the state is h (L, B, H), for the LSTM a pair (h, c). Arithmetic in the inputs' dtype.

Notation (step t, layer j = 0 .. L-1; B rows, H units a layer)

    h^j_t          layer j's state after step t; h^{-1}_t = x_t (the data), h^j_{-1} = h0[j]
    h*_{t-1}       [h^0_{t-1}; ...; h^{L-1}_{t-1}]    every layer's state at t-1, (B, L*H)
    W^{j-1->j}     weight_ih_l{j}  (G*H, in_j)        from the layer below (or x)
    U^{i->j}       weight_hh_l{j}[:, i*H:(i+1)*H]     from layer i at t-1 to layer j at t (G*H, H)
    w_g, u_g       weight_gx_l{j} (L, in_j), weight_gh_l{j} (L, L*H): row i is w_g^{i->j}, u_g^{i->j}
    b              bias_ih_l{j}, bias_hh_l{j} (G*H,), as PyTorch's layers (the paper writes none)

The equations (the paper's, §3; with gated=False, every g^{i->j} = 1)

    (1) g^{i->j} = σ(w_g^{i->j} h^{j-1}_t + u_g^{i->j} h*_{t-1})              one scalar per row
    (2) s^j = Σ_i g^{i->j} U^{i->j} h^i_{t-1}                                  the gated feedback
    tanh:
    (3) h^j_t = tanh(W^{j-1->j} h^{j-1}_t + b_ih + s^j + b_hh)
    GRU (gate order r, z, n; the update gate as PyTorch's: z keeps the old state, the paper's z is 1-z):
    (3) r = σ(W_r h^{j-1}_t + b_ir + U_r h*_{t-1} + b_hr)   z = σ(W_z h^{j-1}_t + b_iz + U_z h*_{t-1} + b_hz)
    (4) n = tanh(W_n h^{j-1}_t + b_in + r ⊙ (s^j_n + b_hn))
    (5) h^j_t = (1 - z) ⊙ n + z ⊙ h^j_{t-1}
    LSTM (gate order i, f, g, o):
    (3) i, f, o = σ(W_{i,f,o} h^{j-1}_t + b_i{i,f,o} + U_{i,f,o} h*_{t-1} + b_h{i,f,o})
    (4) g = tanh(W_g h^{j-1}_t + b_ig + s^j_g + b_hg)                          the cell input c̃
    (5) c^j_t = f ⊙ c^j_{t-1} + i ⊙ g,   h^j_t = o ⊙ tanh(c^j_t)

Only the candidate (tanh's h, the GRU's n, the LSTM's cell input) reads the gated sum (2); the
unit-wise gates read all of h*_{t-1} through their blocks of weight_hh (the paper: the global reset
gates are not used for the unit-wise gates). The output is the top layer's state. A stacked RNN is
the special case U^{i->j} = 0 for i != j.

Variable lengths as the other layers: a step t >= lengths[b] leaves every layer's state unchanged and
outputs 0; in backward it passes the state gradient through and ignores d_out.
"""
import numpy as np

__all__ = ["forward", "backward", "param_names", "GATES"]

GATES = {"tanh": 1, "gru": 3, "lstm": 4}


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def param_names(config, layer):
    """Names of one layer's parameters, in a fixed order."""
    names = [f"weight_ih_l{layer}", f"weight_hh_l{layer}"]
    if config.get("bias", True):
        names += [f"bias_ih_l{layer}", f"bias_hh_l{layer}"]
    if config.get("gated", True):
        names += [f"weight_gx_l{layer}", f"weight_gh_l{layer}"]
    return names


def _layer(params, j):
    short = {"weight_ih": "W", "weight_hh": "U", "bias_ih": "b_ih", "bias_hh": "b_hh",
             "weight_gx": "w_g", "weight_gh": "u_g"}
    return {short[k.rsplit("_l", 1)[0]]: v for k, v in params.items() if k.endswith(f"_l{j}")}


def _blocks(g, H):
    """(B, L) gates -> (B, L*H): g_i repeated over layer i's H units."""
    return np.repeat(g, H, axis=1)


def _step_forward(cell, p, x, hstar, c_prev, j, H):
    """Layer j at one step: x = h^{j-1}_t (B, in), hstar = h*_{t-1} (B, L*H), c_prev = c^j_{t-1}."""
    L = hstar.shape[1] // H
    G = GATES[cell]
    GH = G * H
    cand = slice(2 * H, 3 * H) if cell == "lstm" else slice(GH - H, GH)    # the gated block
    ax = x @ p["W"].T + (p["b_ih"] if "b_ih" in p else 0)                  # W h^{j-1}_t + b_ih
    b_hh = p["b_hh"] if "b_hh" in p else np.zeros(GH, x.dtype)
    # (1) g^{i->j}, one per layer i
    g = _sigmoid(x @ p["w_g"].T + hstar @ p["u_g"].T) if "w_g" in p else np.ones((x.shape[0], L), x.dtype)
    # (2) s = Σ_i g^{i->j} U^{i->j} h^i_{t-1}  (+ b_hh of the candidate)
    hg = hstar * _blocks(g, H)
    s = hg @ p["U"][cand].T + b_hh[cand]
    # the unit-wise gates read h*_{t-1} in full
    ah = hstar @ p["U"].T + b_hh
    hp = hstar[:, j * H:(j + 1) * H]
    if cell == "tanh":
        # (3)
        h = np.tanh(ax + s)
        return h, None, (x, hstar, g, hg, h)
    if cell == "gru":
        # (3) r, z
        r = _sigmoid(ax[:, :H] + ah[:, :H])
        z = _sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
        # (4) n
        n = np.tanh(ax[:, 2 * H:] + r * s)
        # (5)
        h = (1 - z) * n + z * hp
        return h, None, (x, hstar, g, hg, r, z, n, s)
    # LSTM (3) i, f, o
    i = _sigmoid(ax[:, :H] + ah[:, :H])
    f = _sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
    o = _sigmoid(ax[:, 3 * H:] + ah[:, 3 * H:])
    # (4) the cell input
    gg = np.tanh(ax[:, 2 * H:3 * H] + s)
    # (5)
    c = f * c_prev + i * gg
    tc = np.tanh(c)
    h = o * tc
    return h, c, (x, hstar, g, hg, i, f, gg, o, c_prev, tc)


def _step_backward(cell, p, dp, cache, dh, dc, j, H):
    """Backward of _step_forward: gradients into dp (+=); returns (dx, dhstar, dc_prev)."""
    x, hstar, g, hg = cache[:4]
    G = GATES[cell]
    GH = G * H
    cand = slice(2 * H, 3 * H) if cell == "lstm" else slice(GH - H, GH)
    dhstar = np.zeros_like(hstar)
    dc_prev = None
    if cell == "tanh":
        h = cache[4]
        # (3)
        da = dh * (1 - h * h)
        ds = da
    elif cell == "gru":
        r, z, n, s = cache[4:]
        # (5)
        dn = dh * (1 - z)
        dz = dh * (hstar[:, j * H:(j + 1) * H] - n)
        dhstar[:, j * H:(j + 1) * H] += dh * z
        # (4)
        dan = dn * (1 - n * n)
        ds = dan * r
        dr = dan * s
        # (3)
        da = np.concatenate([dr * r * (1 - r), dz * z * (1 - z), dan], axis=1)
    else:
        i, f, gg, o, c_prev, tc = cache[4:]
        # (5)
        do = dh * tc
        dcc = dc + dh * o * (1 - tc * tc)
        di, df, dgg = dcc * gg, dcc * c_prev, dcc * i
        dc_prev = dcc * f
        # (4), (3)
        dgg_a = dgg * (1 - gg * gg)
        da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dgg_a, do * o * (1 - o)], axis=1)
        ds = dgg_a
    # da: the gradient of every gate's pre-activation; its input part is W h^{j-1}_t + b_ih
    dp["W"] += da.T @ x
    dx = da @ p["W"]
    if "b_ih" in dp:
        dp["b_ih"] += da.sum(0)
    # the unit-wise gates' recurrent part U_gates h*_{t-1} + b_hh (every block but the candidate)
    gates = np.ones(GH, bool)
    gates[cand] = False
    dah = da * gates
    dp["U"] += dah.T @ hstar
    dhstar += dah @ p["U"]
    if "b_hh" in dp:
        dp["b_hh"] += dah.sum(0)
        dp["b_hh"][cand] += ds.sum(0)
    # (2) s = hg U_cand^T + b_hh_cand, hg = h*_{t-1} scaled by g per block
    dp["U"][cand] += ds.T @ hg
    dhg = ds @ p["U"][cand]
    dhstar += dhg * _blocks(g, H)
    if "w_g" in dp:
        # (1) dL/dg_i = Σ_{k in block i} dhg_k h*_k, through σ
        L = g.shape[1]
        dg = (dhg * hstar).reshape(-1, L, H).sum(2)
        dag = dg * g * (1 - g)
        dp["w_g"] += dag.T @ x
        dp["u_g"] += dag.T @ hstar
        dx += dag @ p["w_g"]
        dhstar += dag @ p["u_g"]
    return dx, dhstar, dc_prev


def _lengths(lengths, T, B):
    return np.full(B, T) if lengths is None else np.asarray(lengths)


def forward(config, params, x, hx=None, lengths=None):
    cell, L, H = config["cell"], config["num_layers"], config["hidden_size"]
    T, B, _ = x.shape
    lstm = cell == "lstm"
    dt = x.dtype
    if hx is None:
        h0, c0 = np.zeros((L, B, H), dt), (np.zeros((L, B, H), dt) if lstm else None)
    else:
        h0, c0 = (hx if lstm else (hx, None))
    lens = _lengths(lengths, T, B)
    ps = [_layer(params, j) for j in range(L)]
    hstar = np.concatenate(list(h0), axis=1)               # h*_{-1}
    cs = [c0[j] for j in range(L)] if lstm else None
    out = np.zeros((T, B, H), dt)
    caches = []
    for t in range(T):
        active = (t < lens)[:, None]
        inp = x[t]
        new_h, new_c, step = [], [], []
        for j in range(L):
            h, c, cache = _step_forward(cell, ps[j], inp, hstar, cs[j] if lstm else None, j, H)
            # past a sequence's end the state is carried
            h = np.where(active, h, hstar[:, j * H:(j + 1) * H])
            if lstm:
                c = np.where(active, c, cs[j])
            new_h.append(h)
            new_c.append(c)
            step.append(cache)
            inp = h
        caches.append((step, active))
        hstar = np.concatenate(new_h, axis=1)
        if lstm:
            cs = new_c
        out[t] = np.where(active, new_h[-1], 0)
    h_n = hstar.reshape(B, L, H).transpose(1, 0, 2).copy()
    state = (h_n, np.stack(cs)) if lstm else h_n
    return out, state, (caches, ps, T, B)


def backward(config, params, cache, d_out, d_state=None):
    cell, L, H = config["cell"], config["num_layers"], config["hidden_size"]
    caches, ps, T, B = cache
    lstm = cell == "lstm"
    dt = d_out.dtype
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dps = [_layer(grads, j) for j in range(L)]
    if lstm:
        dh_n, dc_n = d_state if d_state is not None else (None, None)
    else:
        dh_n, dc_n = d_state, None
    dhstar = (np.zeros((B, L * H), dt) if dh_n is None
              else np.concatenate(list(dh_n), axis=1).astype(dt))
    dcs = [np.zeros((B, H), dt) if dc_n is None else dc_n[j].copy() for j in range(L)] if lstm else None
    I = caches[0][0][0][0].shape[1]
    dx = np.zeros((T, B, I), dt)
    for t in reversed(range(T)):
        step, active = caches[t]
        dcur = dhstar.copy()                                # dL/dh*_t
        dcur[:, (L - 1) * H:] += np.where(active, d_out[t], 0)
        dprev = np.where(active, 0, dcur)                    # carried rows pass through
        for j in reversed(range(L)):
            dh = np.where(active, dcur[:, j * H:(j + 1) * H], 0)
            dc = np.where(active, dcs[j], 0) if lstm else None
            dxin, dhs, dcp = _step_backward(cell, ps[j], dps[j], step[j], dh, dc, j, H)
            dprev += dhs
            if lstm:
                dcs[j] = np.where(active, dcp, dcs[j])
            if j > 0:
                dcur[:, (j - 1) * H:j * H] += dxin
            else:
                dx[t] = dxin
        dhstar = dprev
    dh0 = dhstar.reshape(B, L, H).transpose(1, 0, 2).copy()
    dhx = (dh0, np.stack(dcs)) if lstm else dh0
    return dx, dhx, grads
