/* Elementwise math for rnncore's gate kernels.
 *
 * float32: branch-free exp/tanh/sigmoid (Cephes polynomials, max relative error ~2e-7) that GCC can
 * vectorise inside the gate loops; glibc's scalar expf/tanhf cost ~30x more per LSTM step.
 * float64: the C library's exp/tanh (correctly rounded to ~1 ulp), because float64 users want
 * agreement with PyTorch to ~1e-10.
 * NaN propagates (comparisons, never fminf/fmaxf, which would swallow a NaN).
 */
#ifndef RNNCORE_RC_MATH_H
#define RNNCORE_RC_MATH_H
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>

#ifdef _OPENMP
#include <omp.h>
#define RC_HAVE_OPENMP 1
#else
#define RC_HAVE_OPENMP 0
#endif

static inline float rc_expf(float x) {
    /* exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2 / 2 */
    const float hi = 88.0f, lo = -87.0f;  /* keeps 2^n a normal float */
    x = x > hi ? hi : x;
    x = x < lo ? lo : x;
    /* round to nearest via the 1.5*2^23 trick (no floorf call, so the loop vectorises) */
    float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - fn * 0.693359375f;
    r = r - fn * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)fn + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float rc_sigmoidf(float x) { return 1.0f / (1.0f + rc_expf(-x)); }

static inline float rc_tanhf(float x) {
    /* |x| < 0.625: odd polynomial (accurate near 0, where 1 - 2/(e^2x + 1) would cancel);
       otherwise 1 - 2 / (exp(2|x|) + 1) with the sign of x. */
    float ax = x < 0.0f ? -x : x;
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                    + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float big = 1.0f - 2.0f / (rc_expf(2.0f * ax) + 1.0f);
    big = x < 0.0f ? -big : big;
    return ax < 0.625f ? small : big;
}

static inline double rc_exp(double x) { return exp(x); }
static inline double rc_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline double rc_tanh(double x) { return tanh(x); }

/* In-place activation over a contiguous span: one pointer, so GCC vectorises the float loops
   (the fused gate loops around them hold several pointers that might alias, and stay scalar). */
static inline void rc_sigmoidf_span(float *x, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) x[i] = rc_sigmoidf(x[i]);
}
static inline void rc_tanhf_span(float *x, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) x[i] = rc_tanhf(x[i]);
}
static inline void rc_sigmoid_span(double *x, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) x[i] = rc_sigmoid(x[i]);
}
static inline void rc_tanh_span(double *x, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) x[i] = rc_tanh(x[i]);
}

static inline int rc_openmp_enabled(void) { return RC_HAVE_OPENMP; }

#endif
