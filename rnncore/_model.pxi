# --------------------------------------------------------------------------------------------------
# A model's compiled parts around the recurrent stack (included by _kernels.pyx): the softmax
# cross-entropy fused with its gradient (rnncore/training/losses.py calls it) and the embedding's
# gradient (rnncore/models/sequence.py). Each row is computed by one thread in one fixed order, and
# sums over rows are added in a fixed grid of blocks: the bits depend neither on the thread count nor,
# row by row, on the other rows.
# --------------------------------------------------------------------------------------------------

cdef extern from *:
    """
    /* One row of V logits z (its target y): d := scale (softmax(z) - onehot(y)), in one pass over z
     * and one over d (a row stays in L1); returns its loss -log softmax(z)[y] = log Σ exp(z - m) -
     * (z[y] - m), m = max z, in double. Σ exp in 16 interleaved partial sums (value j to sum j mod 16),
     * added in a fixed tree: the same bits whatever the vector width. A NaN logit makes the loss NaN. */
    #define RC_XENT_ROW(NAME, T, EXP)                                                              \\
    static inline double NAME(ptrdiff_t V, const T *restrict z, ptrdiff_t y, T scale,              \\
                              T *restrict d)                                                       \\
    {                                                                                              \\
        T mx[16], s[16] = {0}, m;                                                                  \\
        ptrdiff_t j, l;                                                                            \\
        for (l = 0; l < 16; l++) mx[l] = z[0];                                                     \\
        for (j = 0; j + 16 <= V; j += 16)      /* the max in 16 lanes too (a NaN is skipped here,  \\
                                                  and makes exp, the sum and the loss NaN) */      \\
            for (l = 0; l < 16; l++)                                                               \\
                mx[l] = z[j + l] > mx[l] ? z[j + l] : mx[l];                                       \\
        for (l = 0; j + l < V; l++)                                                                \\
            mx[l] = z[j + l] > mx[l] ? z[j + l] : mx[l];                                           \\
        for (l = 0; l < 8; l++) mx[l] = mx[l + 8] > mx[l] ? mx[l + 8] : mx[l];                     \\
        for (l = 0; l < 4; l++) mx[l] = mx[l + 4] > mx[l] ? mx[l + 4] : mx[l];                     \\
        m = mx[1] > mx[0] ? mx[1] : mx[0];                                                         \\
        m = mx[2] > m ? mx[2] : m;                                                                 \\
        m = mx[3] > m ? mx[3] : m;                                                                 \\
        for (j = 0; j < V; j++)                                                                    \\
            d[j] = EXP(z[j] - m);                                                                  \\
        for (j = 0; j + 16 <= V; j += 16)                                                          \\
            for (l = 0; l < 16; l++)                                                               \\
                s[l] += d[j + l];                                                                  \\
        for (l = 0; j + l < V; l++)                                                                \\
            s[l] += d[j + l];                                                                      \\
        for (l = 0; l < 8; l++) s[l] += s[l + 8];                                                  \\
        for (l = 0; l < 4; l++) s[l] += s[l + 4];                                                  \\
        T sum = (s[0] + s[1]) + (s[2] + s[3]);                                                     \\
        T r = scale / sum;                                                                         \\
        for (j = 0; j < V; j++)                                                                    \\
            d[j] *= r;                                                                             \\
        d[y] -= scale;                                                                             \\
        return log((double) sum) - ((double) z[y] - (double) m);                                   \\
    }
    RC_XENT_ROW(rc_xent_row_f, float, rc_expf)
    RC_XENT_ROW(rc_xent_row_d, double, rc_exp)

    /* dW[ids[n], c0:c1] += dE[n, c0:c1] for n = 0 .. N-1 in order (np.add.at's order). */
    #define RC_SCATTER_ADD(NAME, T)                                                                \\
    static inline void NAME(ptrdiff_t N, ptrdiff_t D, const int64_t *restrict ids,                 \\
                            const T *restrict dE, T *restrict dW, ptrdiff_t c0, ptrdiff_t c1)      \\
    {                                                                                              \\
        for (ptrdiff_t n = 0; n < N; n++) {                                                        \\
            T *restrict w = dW + ids[n] * D;                                                       \\
            const T *restrict e = dE + n * D;                                                      \\
            for (ptrdiff_t c = c0; c < c1; c++)                                                    \\
                w[c] += e[c];                                                                      \\
        }                                                                                          \\
    }
    RC_SCATTER_ADD(rc_scatter_add_f, float)
    RC_SCATTER_ADD(rc_scatter_add_d, double)
    """
    double rc_xent_row_f(Py_ssize_t V, const float* z, Py_ssize_t y, float scale, float* d) nogil
    double rc_xent_row_d(Py_ssize_t V, const double* z, Py_ssize_t y, double scale, double* d) nogil
    void rc_scatter_add_f(Py_ssize_t N, Py_ssize_t D, const cnp.int64_t* ids, const float* dE,
                          float* dW, Py_ssize_t c0, Py_ssize_t c1) nogil
    void rc_scatter_add_d(Py_ssize_t N, Py_ssize_t D, const cnp.int64_t* ids, const double* dE,
                          double* dW, Py_ssize_t c0, Py_ssize_t c1) nogil


cdef enum:
    XENT_ROWS = 64          # rows per block of the loss sum (a fixed grid: any thread count)
    SCATTER_COLS = 64       # columns per block of the embedding gradient (a whole number of cache lines)


def cross_entropy(floating[:, ::1] d, const floating[:, ::1] z, const cnp.int64_t[::1] y,
                  const cnp.uint8_t[::1] valid=None, double scale=1.0, int num_threads=1):
    """Softmax cross-entropy of N rows of V logits z (N, V) with targets y (N,), fused with its gradient:
    d (N, V) := scale (softmax(z) - onehot(y)) on the valid rows (valid None: all), 0 on the others.
    Returns Σ over the valid rows of -log softmax(z)[y] (in double, unscaled). Rows in blocks of
    XENT_ROWS over the team; the blocks' sums added in order."""
    cdef Py_ssize_t N = z.shape[0], V = z.shape[1], nblk, blk, r, r1
    if d.shape[0] != N or d.shape[1] != V or y.shape[0] != N or valid is not None and valid.shape[0] != N:
        raise ValueError(f"cross_entropy: expected d ({N}, {V}), y ({N},) and valid ({N},), got d "
                         f"{tuple(d.shape)[:2]}, y ({y.shape[0]},), valid "
                         f"{None if valid is None else (valid.shape[0],)}")
    if N == 0:
        return 0.0
    if V == 0:
        raise ValueError("cross_entropy: expected at least one class")
    for r in range(N):
        if (valid is None or valid[r]) and not 0 <= y[r] < V:
            raise ValueError(f"cross_entropy: target {y[r]} of row {r} is not a class id in [0, {V})")
    nblk = (N + XENT_ROWS - 1) // XENT_ROWS
    part = np.zeros(nblk, np.float64)
    cdef double[::1] P = part
    cdef double total = 0
    cdef const cnp.uint8_t* ok = &valid[0] if valid is not None else NULL
    num_threads = 1 if N * V < 65536 else _clamp_threads(num_threads)
    with nogil:
        for blk in prange(nblk, num_threads=num_threads, schedule="static"):
            r1 = min(N, (blk + 1) * XENT_ROWS)
            for r in range(blk * XENT_ROWS, r1):
                if ok != NULL and not ok[r]:
                    memset(&d[r, 0], 0, V * sizeof(floating))
                elif floating is float:
                    P[blk] += rc_xent_row_f(V, &z[r, 0], y[r], <float> scale, &d[r, 0])
                else:
                    P[blk] += rc_xent_row_d(V, &z[r, 0], y[r], scale, &d[r, 0])
        for blk in range(nblk):
            total += P[blk]
    return total


def embedding_backward(floating[:, ::1] dW, const cnp.int64_t[::1] ids, const floating[:, ::1] dE,
                       int num_threads=1):
    """dW[ids[n]] += dE[n] for every n, in order of n (a token seen twice gets both, as np.add.at,
    with the same bits); dW (num_embeddings, D), ids (N,), dE (N, D). Columns in blocks of
    SCATTER_COLS over the team: each value's sum runs in the same order on any number of threads."""
    cdef Py_ssize_t N = ids.shape[0], D = dW.shape[1], V = dW.shape[0], n, nblk, blk, c1
    if dE.shape[0] != N or dE.shape[1] != D:
        raise ValueError(f"embedding_backward: expected dE ({N}, {D}), got {tuple(dE.shape)[:2]}")
    for n in range(N):
        if not 0 <= ids[n] < V:
            raise ValueError(f"embedding_backward: id {ids[n]} at {n} is not in [0, {V})")
    if N == 0 or D == 0:
        return
    nblk = (D + SCATTER_COLS - 1) // SCATTER_COLS
    num_threads = 1 if N * D < 262144 or nblk < 2 else _clamp_threads(num_threads)
    with nogil:
        for blk in prange(nblk, num_threads=num_threads, schedule="static"):
            c1 = min(D, (blk + 1) * SCATTER_COLS)
            if floating is float:
                rc_scatter_add_f(N, D, &ids[0], &dE[0, 0], &dW[0, 0], blk * SCATTER_COLS, c1)
            else:
                rc_scatter_add_d(N, D, &ids[0], &dE[0, 0], &dW[0, 0], blk * SCATTER_COLS, c1)
