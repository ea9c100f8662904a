// The rotary frequencies of a config, computed once on the host and handed to
// the backends' rope ops, so that training, evaluation and generation on every
// backend rotate by the same angles. Each step is rounded to float in the
// order transformers' modeling_rope_utils takes it (float32 tensors, Python
// scalars cast to float); the volatile temporaries keep -ffp-contract=fast
// from fusing a multiply and an add that torch rounds separately.
#include <math.h>

#include "model.h"

#define TWO_PI 6.283185307179586  // 2 * math.pi

// _compute_llama3_parameters: wavelengths below orig / high_freq_factor keep
// their frequency, those above orig / low_freq_factor are divided by factor,
// and those between interpolate smoothly.
static float llama3(float inv_freq, const es_rope_scaling *s) {
    float low_wavelen = (float)(s->orig_max_pos / s->low_freq_factor);
    float high_wavelen = (float)(s->orig_max_pos / s->high_freq_factor);
    volatile float wavelen = (1.0f / inv_freq) * (float)TWO_PI;  // torch: reciprocal() * scalar
    float factor = (float)s->factor;
    if (wavelen > low_wavelen) return inv_freq / factor;
    if (wavelen < high_wavelen) return inv_freq;
    volatile float ratio = (1.0f / wavelen) * (float)s->orig_max_pos;
    float smooth = (ratio - (float)s->low_freq_factor) /
                   (float)(s->high_freq_factor - s->low_freq_factor);
    volatile float scaled = (1.0f - smooth) * inv_freq / factor;
    volatile float kept = smooth * inv_freq;
    return scaled + kept;
}

void es_rope_inv_freq(float *inv_freq, const es_config *cfg) {
    int D = cfg->head_dim;
    const es_rope_scaling *s = &cfg->rope_scaling;
    for (int j = 0; j < D / 2; j++) {
        float f = 1.0f / powf(cfg->rope_theta, (float)(2 * j) / (float)D);
        if (s->type == ES_ROPE_LINEAR) f /= (float)s->factor;
        else if (s->type == ES_ROPE_LLAMA3) f = llama3(f, s);
        inv_freq[j] = f;
    }
}
