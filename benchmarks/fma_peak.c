/* The FP32 peak of this machine, measured: independent vector multiply-adds on n threads.
 *
 * Built at run time by benchmarks/peak.py with the system cc (-O2 -march=native, -fopenmp when the
 * compiler has it), so the vector width is the widest the CPU runs: 64 bytes with AVX-512, else 32.
 * 12 independent accumulators cover the FMA latency (4 cycles) on two FMA pipes, so the loop runs at
 * the pipes' throughput, not their latency. The method of rnncore's former rc_fma_peak_f32.
 */
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__)
#define VEC_BYTES 64
#else
#define VEC_BYTES 32
#endif
#define ACCS 12

typedef float vf __attribute__((vector_size(VEC_BYTES)));

/* floats per vector: the caller counts flops with it */
int fma_width(void) { return (int)(VEC_BYTES / sizeof(float)); }

/* 1 when built with OpenMP: the caller then knows n threads really ran in parallel */
int fma_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* `iters` rounds of ACCS vector multiply-adds on one thread; the sum of the lanes keeps it live */
static float fma_loop(long iters)
{
    vf acc[ACCS], m, a;
    volatile float seed = 1.0f;     /* not a constant: the compiler cannot fold the loop away */
    for (int q = 0; q < ACCS; q++) acc[q] = (vf){0} + seed * (float)q;
    m = (vf){0} + 0.999999f * seed;
    a = (vf){0} + 1e-7f * seed;
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int q = 0; q < ACCS; q++) acc[q] = acc[q] * m + a;
    }
    float sink = 0;
    for (int q = 0; q < ACCS; q++)
        for (int e = 0; e < (int)(VEC_BYTES / sizeof(float)); e++) sink += acc[q][e];
    return sink;
}

volatile float fma_sink;           /* where the result goes, so that no loop is dropped */

/* the loop on each of `threads` threads at once; returns the flops done by all of them */
double fma_run(long iters, int threads)
{
    float sink = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
        float s = fma_loop(iters);
#pragma omp atomic
        sink += s;
    }
#else
    threads = 1;
    sink = fma_loop(iters);
#endif
    fma_sink = sink;
    return 2.0 * ACCS * (double)fma_width() * (double)iters * (double)threads;
}
