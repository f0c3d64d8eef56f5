/* entropi head trainer: softmax regression, SGD with momentum and weight decay, the learning-rate
 * schedules of entropi.device.schedule, float32 (see head_trainer.h for the interface).
 *
 * The method and the order of operations are those of entropi.device.trainer.StepLoop, step for
 * step: logits z = x W + b; e^z in place without the max shift unless a row sum leaves
 * [1e-30, 1e30] (then the whole batch again with the shift); z scaled so that it holds
 * s (softmax(z) - onehot), s = 1/B with momentum, lr/B without; then torch's SGD:
 *   with momentum (blocks of EH_BLOCK_ROWS rows of W, gradient block g = x[:, blk]^T z):
 *     v = mu v + g + wd p;  p = p - lr v              (bias: g = column sums of z)
 *   without (the fused update: no gradient buffer):
 *     p = (1 - lr wd) p - x^T z
 * Freestanding C99: no libc, no libm, no heap; every buffer is static and sized by head_plan.h.
 * Compile with -ffp-contract=off (and -fno-builtin where no memcpy / memset is linked) to get the
 * same float32 results on every target.
 */
#include "head_trainer.h"

#define EH_DC (EH_FEATURES * EH_CLASSES)

/* The buffers of the plan, by the device runtime's names (entropi.device.budget.loop_buffers). */
static float weights[EH_DC];
static float bias[EH_CLASSES];
#if EH_MOMENTUM_BUFFERS
static float momentum_weights[EH_DC];
static float momentum_bias[EH_CLASSES];
#endif
static float features_batch[EH_BATCH * EH_FEATURES];
static float logits_batch[EH_BATCH * EH_CLASSES];
static float row_stat[EH_BATCH];
#if !EH_FUSED_UPDATE
static float grad_block[EH_BLOCK_ROWS * EH_CLASSES];
#endif
static float grad_bias[EH_CLASSES];
static int32_t labels_batch[EH_BATCH];

static uint32_t eh_step;
static uint32_t eh_total_steps = 1;
static uint32_t eh_steps_per_epoch = 1;

typedef union {
    float f;
    uint32_t u;
} eh_bits;

static float eh_pow2(int32_t n) /* 2^n for n in [-126, 127] */
{
    eh_bits b;
    b.u = (uint32_t)(n + 127) << 23;
    return b.f;
}

float eh_expf(float x)
{
    float fn, r, z, p;
    int32_t n;
    if (x != x) {
        return x;
    }
    if (x > 88.72283935546875f) {
        eh_bits inf;
        inf.u = 0x7f800000u;
        return inf.f;
    }
    if (x < -103.972084045410f) {
        return 0.0f;
    }
    /* x = n ln2 + r, |r| <= ln2 / 2 (ln2 in two parts: n * 0.693359375 is exact) */
    fn = x * 1.44269504088896341f;
    n = (int32_t)(fn >= 0.0f ? fn + 0.5f : fn - 0.5f);
    r = x - (float)n * 0.693359375f;
    r = r - (float)n * -2.12194440e-4f;
    z = r * r;
    p = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r
          + 4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f) * z + r + 1.0f;
    if (n > 127) {
        return p * eh_pow2(127) * 2.0f;
    }
    if (n < -126) { /* a denormal result: scale in two normal steps */
        return p * eh_pow2(n + 100) * eh_pow2(-100);
    }
    return p * eh_pow2(n);
}

#if EH_SCHEDULE == EH_SCHEDULE_COSINE
/* cos(pi t) for t >= 0, float32, without libm (Cephes' sinf / cosf polynomials on [0, pi/4]). */
static float eh_cospi(float t)
{
    float sign = 1.0f, u, z;
    t = t - 2.0f * (float)(int32_t)(t * 0.5f); /* t mod 2 */
    if (t > 1.0f) {
        t = 2.0f - t;
    }
    if (t > 0.5f) { /* cos(pi t) = -cos(pi (1 - t)) */
        t = 1.0f - t;
        sign = -1.0f;
    }
    if (t <= 0.25f) {
        u = t * 3.14159265358979f;
        z = u * u;
        return sign * ((((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z
                         + 4.166664568298827e-2f) * z * z) - 0.5f * z + 1.0f);
    }
    u = (0.5f - t) * 3.14159265358979f; /* cos(pi t) = sin(pi (1/2 - t)) */
    z = u * u;
    return sign * (((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * u
                   + u);
}
#endif

float eh_learning_rate(uint32_t step)
{
#if EH_SCHEDULE == EH_SCHEDULE_COSINE
    return EH_LR * 0.5f * (1.0f + eh_cospi((float)step / (float)eh_total_steps));
#elif EH_SCHEDULE == EH_SCHEDULE_STEP
    uint32_t k = (step / eh_steps_per_epoch) / EH_STEP_EPOCHS;
    float lr = EH_LR;
    while (k-- > 0u) {
        lr = lr * EH_GAMMA;
    }
    return lr;
#else
    (void)step;
    return EH_LR;
#endif
}

int32_t eh_init(uint32_t total_steps, uint32_t steps_per_epoch)
{
    uint32_t i;
    if (total_steps == 0u || steps_per_epoch == 0u) {
        return -1;
    }
    for (i = 0; i < EH_DC; ++i) {
        weights[i] = 0.0f;
#if EH_MOMENTUM_BUFFERS
        momentum_weights[i] = 0.0f;
#endif
    }
    for (i = 0; i < EH_CLASSES; ++i) {
        bias[i] = 0.0f;
#if EH_MOMENTUM_BUFFERS
        momentum_bias[i] = 0.0f;
#endif
    }
    eh_total_steps = total_steps;
    eh_steps_per_epoch = steps_per_epoch;
    eh_step = 0u;
    return 0;
}

/* z[m rows] = x W + b */
static void eh_logits(const float *x, uint32_t m)
{
    uint32_t k, i, j;
    for (k = 0; k < m; ++k) {
        const float *xk = x + k * EH_FEATURES;
        float *zk = logits_batch + k * EH_CLASSES;
        /* four classes at a time (one load of x[i] for four products); each logit is still
         * summed over i in order */
        for (j = 0; j + 4u <= EH_CLASSES; j += 4u) {
            const float *w = weights + j;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            for (i = 0; i < EH_FEATURES; ++i, w += EH_CLASSES) {
                const float xi = xk[i];
                a0 = a0 + xi * w[0];
                a1 = a1 + xi * w[1];
                a2 = a2 + xi * w[2];
                a3 = a3 + xi * w[3];
            }
            zk[j] = a0 + bias[j];
            zk[j + 1u] = a1 + bias[j + 1u];
            zk[j + 2u] = a2 + bias[j + 2u];
            zk[j + 3u] = a3 + bias[j + 3u];
        }
        for (; j < EH_CLASSES; ++j) {
            const float *w = weights + j;
            float acc = 0.0f;
            for (i = 0; i < EH_FEATURES; ++i) {
                acc = acc + xk[i] * w[i * EH_CLASSES];
            }
            zk[j] = acc + bias[j];
        }
    }
}

/* e^(z - shift) in place and the row sums; shift: subtract each row's max first.
 * Returns 1 when every row sum lies in [1e-30, 1e30]. */
static int eh_exp_rows(int shift)
{
    uint32_t k, j;
    int ok = 1;
    for (k = 0; k < EH_BATCH; ++k) {
        float *zk = logits_batch + k * EH_CLASSES;
        float mx = zk[0], s = 0.0f;
        if (shift) {
            for (j = 1; j < EH_CLASSES; ++j) {
                mx = zk[j] > mx ? zk[j] : mx;
            }
            for (j = 0; j < EH_CLASSES; ++j) {
                zk[j] = zk[j] - mx;
            }
        }
        for (j = 0; j < EH_CLASSES; ++j) {
            zk[j] = eh_expf(zk[j]);
            s = s + zk[j];
        }
        row_stat[k] = s;
        if (!(s >= 1e-30f && s <= 1e30f)) {
            ok = 0;
        }
    }
    return ok;
}

#if !EH_FUSED_UPDATE
/* out[0..n) = (x^T z)[i][j..j+n) for n <= 4: each summed over the batch's rows in order, four
 * columns at a time so that x[k][i] is loaded once for four products */
static void eh_xt_z(uint32_t i, uint32_t j, uint32_t n, float *out)
{
    const float *x = features_batch + i;
    const float *z = logits_batch + j;
    uint32_t k;
    if (n == 4u) {
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        for (k = 0; k < EH_BATCH; ++k, x += EH_FEATURES, z += EH_CLASSES) {
            const float xk = *x;
            a0 = a0 + xk * z[0];
            a1 = a1 + xk * z[1];
            a2 = a2 + xk * z[2];
            a3 = a3 + xk * z[3];
        }
        out[0] = a0;
        out[1] = a1;
        out[2] = a2;
        out[3] = a3;
        return;
    }
    while (n-- > 0u) {
        float acc = 0.0f;
        const float *xc = x, *zc = z + n;
        for (k = 0; k < EH_BATCH; ++k, xc += EH_FEATURES, zc += EH_CLASSES) {
            acc = acc + *xc * *zc;
        }
        out[n] = acc;
    }
}

/* row i of x^T z into g (EH_CLASSES floats) */
static void eh_xt_z_row(uint32_t i, float *g)
{
    uint32_t j;
    for (j = 0; j < EH_CLASSES; j += 4u) {
        eh_xt_z(i, j, EH_CLASSES - j < 4u ? EH_CLASSES - j : 4u, g + j);
    }
}
#endif

#if EH_MOMENTUM_BUFFERS
/* torch's SGD on n parameters p with momentum buffer v and gradient g:
 * v = mu v + g + wd p; p = p - lr v (the order of StepLoop._momentum_update) */
static void eh_momentum_update(float *p, float *v, const float *g, uint32_t n, float lr)
{
    uint32_t i;
    for (i = 0; i < n; ++i) {
        float vi = v[i] * EH_MOMENTUM + g[i];
#if EH_WEIGHT_DECAY_ON
        vi = vi + p[i] * EH_WEIGHT_DECAY;
#endif
        v[i] = vi;
        p[i] = p[i] - vi * lr;
    }
}
#endif

int32_t eh_train_step(const float *features, const int32_t *labels)
{
    const float lr = eh_learning_rate(eh_step);
    const float s = EH_MOMENTUM_BUFFERS ? 1.0f / (float)EH_BATCH : lr * (1.0f / (float)EH_BATCH);
    uint32_t k, i, j;
    for (k = 0; k < EH_BATCH; ++k) {
        if (labels[k] < 0 || labels[k] >= EH_CLASSES) {
            return -1;
        }
    }
    for (k = 0; k < EH_BATCH; ++k) {
        labels_batch[k] = labels[k];
    }
    if (features != features_batch) {
        for (i = 0; i < EH_BATCH * EH_FEATURES; ++i) {
            features_batch[i] = features[i];
        }
    }
    /* logits, softmax in place, scaled: z = s (softmax(z) - onehot) */
    eh_logits(features_batch, EH_BATCH);
    if (!eh_exp_rows(0)) {
        eh_logits(features_batch, EH_BATCH);
        eh_exp_rows(1);
    }
    for (k = 0; k < EH_BATCH; ++k) {
        float *zk = logits_batch + k * EH_CLASSES;
        float f = s / row_stat[k];
        for (j = 0; j < EH_CLASSES; ++j) {
            zk[j] = zk[j] * f;
        }
        zk[labels_batch[k]] = zk[labels_batch[k]] - s;
    }
    /* bias */
    for (j = 0; j < EH_CLASSES; ++j) {
        float g = 0.0f;
        for (k = 0; k < EH_BATCH; ++k) {
            g = g + logits_batch[k * EH_CLASSES + j];
        }
        grad_bias[j] = g;
    }
#if EH_MOMENTUM_BUFFERS
    eh_momentum_update(bias, momentum_bias, grad_bias, EH_CLASSES, lr);
    /* weights, in blocks of EH_BLOCK_ROWS rows: g = x[:, r0:r1]^T z, then the momentum update */
    {
        uint32_t r0;
        for (r0 = 0; r0 < EH_FEATURES; r0 += EH_BLOCK_ROWS) {
            uint32_t r1 = r0 + EH_BLOCK_ROWS < EH_FEATURES ? r0 + EH_BLOCK_ROWS : EH_FEATURES;
            for (i = r0; i < r1; ++i) {
                eh_xt_z_row(i, grad_block + (i - r0) * EH_CLASSES);
            }
            eh_momentum_update(weights + r0 * EH_CLASSES, momentum_weights + r0 * EH_CLASSES,
                               grad_block, (r1 - r0) * EH_CLASSES, lr);
        }
    }
#else
    {
        const float beta = 1.0f - lr * EH_WEIGHT_DECAY;
        for (j = 0; j < EH_CLASSES; ++j) {
#if EH_WEIGHT_DECAY_ON
            bias[j] = bias[j] * beta;
#endif
            bias[j] = bias[j] - grad_bias[j];
        }
        /* the fused update W = beta W - x^T z: one element at a time, no gradient buffer */
        for (i = 0; i < EH_FEATURES; ++i) {
            float *w = weights + i * EH_CLASSES;
            for (j = 0; j < EH_CLASSES; ++j) {
                float acc = 0.0f;
                for (k = 0; k < EH_BATCH; ++k) {
                    acc = acc + features_batch[k * EH_FEATURES + i] * logits_batch[k * EH_CLASSES + j];
                }
#if EH_WEIGHT_DECAY_ON
                w[j] = w[j] * beta - acc;
#else
                w[j] = w[j] - acc;
#endif
            }
        }
    }
#endif
    eh_step = eh_step + 1u;
    return 0;
}

void eh_predict(const float *features, uint32_t n, int32_t *classes)
{
    uint32_t r0, k, j;
    for (r0 = 0; r0 < n; r0 += EH_BATCH) {
        uint32_t m = n - r0 < EH_BATCH ? n - r0 : EH_BATCH;
        eh_logits(features + r0 * EH_FEATURES, m);
        for (k = 0; k < m; ++k) {
            const float *zk = logits_batch + k * EH_CLASSES;
            int32_t best = 0;
            for (j = 1; j < EH_CLASSES; ++j) {
                if (zk[j] > zk[best]) {
                    best = (int32_t)j;
                }
            }
            classes[r0 + k] = best;
        }
    }
}

static void eh_copy(float *dst, const float *src, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; ++i) {
        dst[i] = src[i];
    }
}

void eh_get_head(float *w, float *b)
{
    eh_copy(w, weights, EH_DC);
    eh_copy(b, bias, EH_CLASSES);
}

void eh_set_head(const float *w, const float *b)
{
    eh_copy(weights, w, EH_DC);
    eh_copy(bias, b, EH_CLASSES);
}

void eh_get_momentum(float *w, float *b)
{
#if EH_MOMENTUM_BUFFERS
    eh_copy(w, momentum_weights, EH_DC);
    eh_copy(b, momentum_bias, EH_CLASSES);
#else
    (void)w;
    (void)b;
#endif
}

void eh_set_momentum(const float *w, const float *b)
{
#if EH_MOMENTUM_BUFFERS
    eh_copy(momentum_weights, w, EH_DC);
    eh_copy(momentum_bias, b, EH_CLASSES);
#else
    (void)w;
    (void)b;
#endif
}

uint32_t eh_get_step(void)
{
    return eh_step;
}

void eh_set_step(uint32_t step)
{
    eh_step = step;
}

float *eh_features_buffer(void)
{
    return features_batch;
}

int32_t *eh_labels_buffer(void)
{
    return labels_batch;
}

const float *eh_weights(void)
{
    return weights;
}

const float *eh_bias(void)
{
    return bias;
}

const float *eh_momentum_weights(void)
{
#if EH_MOMENTUM_BUFFERS
    return momentum_weights;
#else
    return 0;
#endif
}

const float *eh_momentum_bias(void)
{
#if EH_MOMENTUM_BUFFERS
    return momentum_bias;
#else
    return 0;
#endif
}
