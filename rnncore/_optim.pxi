# --------------------------------------------------------------------------------------------------
# Optimizer steps and gradient clipping as fused passes over all parameters (included by
# _kernels.pyx; rnncore/training/optim.py calls them). As PyTorch's fused optimizers: one compiled
# loop reads each parameter, its gradient and its state once per step, whatever the number of arrays.
#
# The arrays: params[i], grads[i] (n_i values each, C-contiguous, one dtype); a state buffer (Adam's
# exp_avg and exp_avg_sq, RMSprop's square_avg, SGD's momentum) is one flat array of Σ n_i values,
# parameter i at offset Σ_{j<i} n_j. The work is cut into chunks of CHUNK values of one array, a grid
# fixed by the sizes alone: a chunk is done by one thread, and sums over chunks are added in chunk
# order, so the bits never depend on the thread count.
#
# Update rules (g the gradient after clamping, scaling and weight decay; torch.optim's forms):
#   SGD      v = μ v + g;  p -= lr (g + μ v) (nesterov) or p -= lr v;  μ = 0: p -= lr g
#   RMSprop  s = α s + (1 - α) g g;  p -= lr g / (√s + ε)
#   Adam     m = lerp(m, g, 1 - β1);  v = β2 v + (1 - β2) g g;  p -= (lr / bc1) m / (√v / √bc2 + ε)
# --------------------------------------------------------------------------------------------------

cdef extern from *:
    """
    enum { RC_SGD = 0, RC_RMSPROP = 1, RC_ADAM = 2 };

    /* One step's coefficients: the rule's (see _optim.pxi), then what is done to g first. */
    typedef struct {
        int rule;
        int nesterov;       /* SGD */
        double lr;          /* SGD, RMSprop: lr; Adam: lr / bc1 */
        double a;           /* SGD: μ; RMSprop: α; Adam: β1 */
        double b;           /* Adam: β2 */
        double c;           /* Adam: √bc2 */
        double eps;         /* RMSprop, Adam */
        double weight_decay;
        double clip_value;  /* > 0: g := clamp(g, -clip_value, clip_value), written back */
        double grad_scale;  /* != 1: g := g * grad_scale, written back (clipping by the norm) */
    } rc_optim;

    /* Σ x² over n values in double, in one fixed order: 8 interleaved partial sums (value j goes to
     * sum j mod 8, in order), then ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)); the same bits
     * whatever the vector width. clip > 0 first clamps x to [-clip, clip] in place (NaN stays NaN). */
    #define RC_SUMSQ(NAME, T)                                                                      \\
    static inline double NAME(ptrdiff_t n, T *restrict x, double clip)                             \\
    {                                                                                              \\
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                    \\
        ptrdiff_t j = 0, l;                                                                        \\
        if (clip > 0) {                                                                            \\
            const T c = (T) clip;                                                                  \\
            for (j = 0; j < n; j++)                                                                \\
                x[j] = x[j] < -c ? -c : (x[j] > c ? c : x[j]);                                     \\
        }                                                                                          \\
        for (j = 0; j + 8 <= n; j += 8)                                                            \\
            for (l = 0; l < 8; l++)                                                                \\
                s[l] += (double) x[j + l] * (double) x[j + l];                                     \\
        for (l = 0; j + l < n; l++)                                                                \\
            s[l] += (double) x[j + l] * (double) x[j + l];                                         \\
        return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));                  \\
    }
    RC_SUMSQ(rc_sumsq_f, float)
    RC_SUMSQ(rc_sumsq_d, double)

    /* g's clamping and scaling (written back into g, as clip_grad_value / clip_grad_norm do), then
     * weight decay (not written back): the gradient the rule uses, in a loop over j. */
    #define RC_GRAD(T)                                                                             \\
        T gj = g[j];                                                                               \\
        if (clamp) { gj = gj < -cv ? -cv : (gj > cv ? cv : gj); }                                  \\
        if (scale) { gj = gj * gs; }                                                               \\
        if (clamp || scale) { g[j] = gj; }                                                         \\
        if (decay) { gj = gj + wd * p[j]; }

    #define RC_OPTIM_UPDATE(NAME, T)                                                               \\
    static inline void NAME(ptrdiff_t n, T *restrict p, T *restrict g, T *restrict s1,             \\
                            T *restrict s2, const rc_optim *k)                                     \\
    {                                                                                              \\
        const int clamp = k->clip_value > 0, scale = k->grad_scale != 1, decay = k->weight_decay != 0; \\
        const T cv = (T) k->clip_value, gs = (T) k->grad_scale, wd = (T) k->weight_decay;          \\
        const T lr = (T) k->lr, a = (T) k->a, b = (T) k->b, c = (T) k->c, eps = (T) k->eps;        \\
        ptrdiff_t j;                                                                               \\
        if (k->rule == RC_ADAM) {                                                                  \\
            /* lerp(m, g, w) as torch: m + w (g - m) for w < 0.5, else g - (g - m)(1 - w) */      \\
            const T w = (T) (1 - k->a), w1 = (T) k->a, v2 = (T) (1 - k->b);                        \\
            const int low = 1 - k->a < 0.5;                                                        \\
            for (j = 0; j < n; j++) {                                                              \\
                RC_GRAD(T)                                                                         \\
                s1[j] = low ? s1[j] + w * (gj - s1[j]) : gj - (gj - s1[j]) * w1;                   \\
                s2[j] = s2[j] * b + v2 * gj * gj;                                                  \\
                p[j] = p[j] - lr * (s1[j] / (sqrt(s2[j]) / c + eps));                              \\
            }                                                                                      \\
        } else if (k->rule == RC_RMSPROP) {                                                        \\
            const T a1 = (T) (1 - k->a);                                                           \\
            for (j = 0; j < n; j++) {                                                              \\
                RC_GRAD(T)                                                                         \\
                s1[j] = s1[j] * a + a1 * gj * gj;                                                  \\
                p[j] = p[j] - lr * (gj / (sqrt(s1[j]) + eps));                                     \\
            }                                                                                      \\
        } else if (s1 == NULL) {                                                                   \\
            for (j = 0; j < n; j++) {                                                              \\
                RC_GRAD(T)                                                                         \\
                p[j] = p[j] - lr * gj;                                                             \\
            }                                                                                      \\
        } else {                                                                                   \\
            const int nesterov = k->nesterov;                                                      \\
            for (j = 0; j < n; j++) {                                                              \\
                RC_GRAD(T)                                                                         \\
                s1[j] = s1[j] * a + gj;                                                            \\
                p[j] = p[j] - lr * (nesterov ? gj + a * s1[j] : s1[j]);                            \\
            }                                                                                      \\
        }                                                                                          \\
        (void) b; (void) c; (void) eps; (void) s2;                                                 \\
    }
    RC_OPTIM_UPDATE(rc_optim_update_f, float)
    RC_OPTIM_UPDATE(rc_optim_update_d, double)
    """
    enum:
        RC_SGD
        RC_RMSPROP
        RC_ADAM
    ctypedef struct rc_optim:
        int rule
        int nesterov
        double lr
        double a
        double b
        double c
        double eps
        double weight_decay
        double clip_value
        double grad_scale
    double rc_sumsq_f(Py_ssize_t n, float* x, double clip) nogil
    double rc_sumsq_d(Py_ssize_t n, double* x, double clip) nogil
    void rc_optim_update_f(Py_ssize_t n, float* p, float* g, float* s1, float* s2,
                           const rc_optim* k) nogil
    void rc_optim_update_d(Py_ssize_t n, double* p, double* g, double* s1, double* s2,
                           const rc_optim* k) nogil


from libc.stdlib cimport malloc, free


OPTIM_RULES = {"sgd": RC_SGD, "rmsprop": RC_RMSPROP, "adam": RC_ADAM}

cdef enum:
    CHUNK = 16384          # values per chunk of the fixed grid (64 KB of float32)
    CHUNK_PARALLEL = 65536  # below this many values in all, one thread (a fork/join costs more)


cdef struct _Chunk:
    char* p         # parameter values [j0, j1) of array i, and the same values of its gradient
    char* g
    Py_ssize_t off  # offset of value j0 in the flat state buffers
    Py_ssize_t n


cdef _Chunk* _chunks(list params, list grads, int typenum, Py_ssize_t* total,
                     Py_ssize_t* nchunks) except NULL:
    """The fixed grid over the arrays (params None: the gradients alone), after checking every array:
    C-contiguous, writable, of dtype typenum, each gradient the size of its parameter. Sets *total to
    the values in all and *nchunks to the chunks; the caller frees the grid."""
    cdef Py_ssize_t i, j0, n, off = 0, count = 0, k = 0
    cdef Py_ssize_t isz = 4 if typenum == cnp.NPY_FLOAT32 else 8
    cdef cnp.ndarray a, ga
    arrays = grads if params is None else params
    if params is not None and len(params) != len(grads):
        raise ValueError(f"expected one gradient per parameter, got {len(params)} parameters and "
                         f"{len(grads)} gradients")
    for i in range(len(arrays)):
        for x in ((arrays[i],) if params is None else (params[i], grads[i])):
            if not cnp.PyArray_Check(x):
                raise TypeError(f"expected numpy arrays, got {type(x).__name__}")
            if cnp.PyArray_TYPE(<cnp.ndarray> x) != typenum:
                raise TypeError(f"expected {'float32' if isz == 4 else 'float64'} arrays (all of one "
                                f"dtype), got {x.dtype}")
            if not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> x) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray> x):
                raise ValueError("expected writable C-contiguous arrays")
        n = cnp.PyArray_SIZE(<cnp.ndarray> arrays[i])
        if params is not None and cnp.PyArray_SIZE(<cnp.ndarray> grads[i]) != n:
            raise ValueError(f"gradient {i}: expected {n} values (its parameter's), "
                             f"got {cnp.PyArray_SIZE(<cnp.ndarray> grads[i])}")
        count += (n + CHUNK - 1) // CHUNK
        off += n
    cdef _Chunk* out = <_Chunk*> malloc(max(count, 1) * sizeof(_Chunk))
    if out == NULL:
        raise MemoryError()
    total[0], nchunks[0], off = off, count, 0
    for i in range(len(arrays)):
        ga = <cnp.ndarray> grads[i]
        a = ga if params is None else <cnp.ndarray> params[i]
        n = cnp.PyArray_SIZE(a)
        for j0 in range(0, n, CHUNK):
            out[k].p = <char*> cnp.PyArray_DATA(a) + j0 * isz
            out[k].g = <char*> cnp.PyArray_DATA(ga) + j0 * isz
            out[k].off = off + j0
            out[k].n = min(CHUNK, n - j0)
            k += 1
        off += n
    return out


cdef int _float_typenum(list arrays, str what) except -1:
    """NPY_FLOAT32 or NPY_FLOAT64: the dtype of arrays[0] (TypeError for anything else)."""
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray> arrays[0]) if cnp.PyArray_Check(arrays[0]) else -1
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        raise TypeError(f"{what}: expected float32 or float64 arrays, got "
                        f"{getattr(arrays[0], 'dtype', type(arrays[0]).__name__)}")
    return t


cdef int _team(Py_ssize_t total, int num_threads) noexcept nogil:
    return 1 if total < CHUNK_PARALLEL else _clamp_threads(num_threads)


def grad_sumsq(list grads, double clip_value=0, int num_threads=1):
    """Σ g² over every value of every gradient (one float dtype, C-contiguous), in double, in a fixed
    order (the same bits on any number of threads). clip_value > 0: each gradient is first clamped
    to [-clip_value, clip_value] in place, in the same pass."""
    if not grads:
        return 0.0
    cdef int typenum = _float_typenum(grads, "grad_sumsq")
    cdef Py_ssize_t nch = 0, ci, total = 0
    cdef _Chunk* ch = _chunks(None, grads, typenum, &total, &nch)
    cdef double* part = <double*> malloc(max(nch, 1) * sizeof(double))
    cdef double s = 0
    cdef int nt = _team(total, num_threads)
    if part == NULL:
        free(ch)
        raise MemoryError()
    with nogil:
        for ci in prange(nch, num_threads=nt, schedule="static"):
            if typenum == cnp.NPY_FLOAT32:
                part[ci] = rc_sumsq_f(ch[ci].n, <float*> ch[ci].g, clip_value)
            else:
                part[ci] = rc_sumsq_d(ch[ci].n, <double*> ch[ci].g, clip_value)
        for ci in range(nch):
            s += part[ci]
    free(part)
    free(ch)
    return s


def optim_update(list params, list grads, list buffers, str rule, double lr, double a=0, double b=0,
                 double c=1, double eps=0, double weight_decay=0, bint nesterov=False,
                 double clip_value=0, double grad_scale=1, int num_threads=1):
    """One update of every parameter in place, in one pass (the rules above): params[i] -= ...,
    from grads[i], with the rule's state in `buffers` (flat arrays of Σ sizes values: none for plain
    SGD, one for SGD with momentum and RMSprop, two for Adam). On the way, g is clamped to
    [-clip_value, clip_value] (clip_value > 0) and multiplied by grad_scale (!= 1), both written
    back into grads (as clipping does), and weight_decay * p is added (not written back).
    a, b, c: μ (SGD), α (RMSprop), β1, β2, √bc2 (Adam); lr is lr / bc1 for Adam."""
    cdef rc_optim k
    cdef int i, want
    if rule not in OPTIM_RULES:
        raise ValueError(f"optim_update: rule must be one of {sorted(OPTIM_RULES)}, got {rule!r}")
    k.rule = OPTIM_RULES[rule]
    want = 2 if k.rule == RC_ADAM else (1 if k.rule == RC_RMSPROP or a != 0 else 0)
    if len(buffers) != want:
        raise ValueError(f"optim_update: {rule} with these settings keeps {want} state buffers, got {len(buffers)}")
    if not params:
        return
    k.nesterov, k.lr, k.a, k.b, k.c, k.eps = nesterov, lr, a, b, c, eps
    k.weight_decay, k.clip_value, k.grad_scale = weight_decay, clip_value, grad_scale
    cdef int typenum = _float_typenum(params, "optim_update")
    cdef Py_ssize_t nch = 0, ci, total = 0
    cdef _Chunk* ch = _chunks(params, grads, typenum, &total, &nch)
    cdef char* s[2]
    s[0] = s[1] = NULL
    for i in range(want):
        buf = buffers[i]
        if not cnp.PyArray_Check(buf) or cnp.PyArray_TYPE(<cnp.ndarray> buf) != typenum \
                or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> buf) or cnp.PyArray_SIZE(<cnp.ndarray> buf) != total:
            free(ch)
            raise ValueError(f"optim_update: state buffer {i}: expected a C-contiguous {params[0].dtype} "
                             f"array of {total} values (the parameters'), got "
                             f"{getattr(buf, 'dtype', type(buf).__name__)} {getattr(buf, 'shape', '')}")
        s[i] = <char*> cnp.PyArray_DATA(<cnp.ndarray> buf)
    cdef int nt = _team(total, num_threads)
    with nogil:
        for ci in prange(nch, num_threads=nt, schedule="static"):
            if typenum == cnp.NPY_FLOAT32:
                rc_optim_update_f(ch[ci].n, <float*> ch[ci].p, <float*> ch[ci].g,
                                  <float*> s[0] + ch[ci].off if s[0] != NULL else NULL,
                                  <float*> s[1] + ch[ci].off if s[1] != NULL else NULL, &k)
            else:
                rc_optim_update_d(ch[ci].n, <double*> ch[ci].p, <double*> ch[ci].g,
                                  <double*> s[0] + ch[ci].off if s[0] != NULL else NULL,
                                  <double*> s[1] + ch[ci].off if s[1] != NULL else NULL, &k)
    free(ch)
