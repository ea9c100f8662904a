// A branch-free expf that compilers vectorise inside loops (libm's expf is a
// call per element). Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, then
// Cephes' degree-6 polynomial for e^r and 2^n built in the exponent bits.
// Max relative error about 2e-7 over the normal range; below ln(FLT_MIN) it
// returns 0 (no denormals), above ln(FLT_MAX) +inf, NaN stays NaN.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#define ES_EXP_HI 88.3762626647949f   // largest x with n <= 127
#define ES_EXP_LO -87.3365447505531f  // ln(FLT_MIN)

static inline float es_expf(float x) {
    const float log2e = 1.44269504088896341f, magic = 12582912.0f;  // 1.5 * 2^23: round to int
    float xc = x > ES_EXP_HI ? ES_EXP_HI : x;  // comparisons let NaN through
    xc = xc < ES_EXP_LO ? ES_EXP_LO : xc;
    float t = xc * log2e + magic, n = t - magic;
    uint32_t tb, mb;
    memcpy(&tb, &t, sizeof tb);
    memcpy(&mb, &magic, sizeof mb);
    float r = xc - n * 0.693359375f;  // ln2 in two parts, so n * ln2 rounds once
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t sb = (tb - mb + 127u) << 23;  // the low bits of t hold n; 2^n as a float
    float s;
    memcpy(&s, &sb, sizeof s);
    float y = p * s;
    y = x < ES_EXP_LO ? 0.0f : y;
    return x > ES_EXP_HI ? INFINITY : y;
}

// tanh through one exponential: tanh(u) = 1 - 2 / (1 + e^(2u)); saturates to
// +-1 at the ends, absolute error a few 1e-8.
static inline float es_tanhf(float u) { return 1.0f - 2.0f / (1.0f + es_expf(2.0f * u)); }

// Dot product with 16 independent accumulators, so that it vectorises; the
// summation order is fixed, so results do not depend on the compiler.
static inline float es_dotf(const float *a, const float *b, int n) {
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; l++) acc[l] += a[j + l] * b[j + l];
    float s = 0.0f;
    for (; j < n; j++) s += a[j] * b[j];
    for (int l = 0; l < 16; l++) s += acc[l];
    return s;
}

// Largest of x[0..n), with 16 independent lanes so that it vectorises.
static inline float es_maxf(const float *x, int n) {
    float m[16];
    for (int l = 0; l < 16; l++) m[l] = -INFINITY;
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; l++) m[l] = x[j + l] > m[l] ? x[j + l] : m[l];
    float r = -INFINITY;
    for (; j < n; j++) r = x[j] > r ? x[j] : r;
    for (int l = 0; l < 16; l++) r = m[l] > r ? m[l] : r;
    return r;
}
