/* Elementwise math for rnncore's gate kernels.
 *
 * float32: branch-free exp/tanh/sigmoid (Cephes polynomials, max relative error ~2e-7) that GCC can
 * vectorise inside the gate loops; glibc's scalar expf/tanhf cost ~30x more per LSTM step.
 * float64: the same, with Cephes' double-precision forms (relative error ~2e-16, so float64 results
 * still agree with PyTorch to ~1e-15), vectorised as well.
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

static inline double rc_exp(double x) {
    /* exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2 / 2; exp(r) by Cephes' Pade form
       1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)) (relative error ~2e-16). Branch-free, so the span loops
       vectorise; glibc's scalar exp made float64 LSTM steps ~3x float32 instead of ~2x. */
    const double hi = 709.0, lo = -708.0;  /* keeps 2^n a normal double */
    x = x > hi ? hi : x;
    x = x < lo ? lo : x;
    /* n in the low mantissa bits of t: adding 1.5 * 2^52 rounds to an integer */
    const double shifter = 6755399441055744.0;
    double t = x * 1.4426950408889634074 + shifter;
    double fn = t - shifter;
    int64_t tb;
    memcpy(&tb, &t, sizeof tb);
    double r = x - fn * 6.93145751953125e-1;
    r = r - fn * 1.42860682030941723212e-6;
    double rr = r * r;
    double px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
                     + 9.99999999999999999910e-1);
    double qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
                 + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
    double e = 1.0 + 2.0 * (px / (qx - px));
    int64_t bits = (tb - (int64_t)0x4338000000000000LL + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return e * scale;
}

static inline double rc_sigmoid(double x) { return 1.0 / (1.0 + rc_exp(-x)); }

static inline double rc_tanh(double x) {
    /* Cephes' tanh: |x| < 0.625: x + x z P(z) / Q(z), z = x^2; otherwise 1 - 2 / (exp(2|x|) + 1)
       with the sign of x. */
    double ax = x < 0.0 ? -x : x;
    double z = x * x;
    double small = x + x * z * (((-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
                                 - 1.61468768441708447952e3)
                                / (((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
                                   + 4.84406305325125486048e3));
    double big = 1.0 - 2.0 / (rc_exp(2.0 * ax) + 1.0);
    big = x < 0.0 ? -big : big;
    return ax < 0.625 ? small : big;
}

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
