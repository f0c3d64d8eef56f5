/* entropi head trainer: softmax regression trained by SGD on the microcontroller.
 *
 * C99, freestanding: no libc, no libm, no heap. Every buffer is a static array sized by
 * head_plan.h, which `entropi.device.mcu_trainer.write_mcu_trainer` generates from the device
 * runtime's memory plan (entropi.device.budget.plan_memory) for one head and one budget.
 *
 * Call order: eh_init once (or eh_set_head / eh_set_momentum / eh_set_step to resume), then
 * eh_train_step for every batch of EH_BATCH rows, then eh_predict. Arrays are row-major float32:
 * features (rows, EH_FEATURES), weights (EH_FEATURES, EH_CLASSES), bias (EH_CLASSES).
 */
#ifndef ENTROPI_HEAD_TRAINER_H
#define ENTROPI_HEAD_TRAINER_H

#include <stdint.h>

#include "head_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Zero the head (and the momentum buffers) and set the step to 0. total_steps is the length of
 * the learning-rate schedule (epochs x steps per epoch); steps_per_epoch is used by the step
 * schedule. Returns 0, or -1 when total_steps or steps_per_epoch is 0. */
int32_t eh_init(uint32_t total_steps, uint32_t steps_per_epoch);

/* One SGD step on EH_BATCH rows: features (EH_BATCH, EH_FEATURES), labels (EH_BATCH) in
 * [0, EH_CLASSES). The rows are copied into the static batch buffer unless features already
 * points at it (eh_features_buffer). Returns 0, or -1 (nothing changed) when a label is out of
 * range. */
int32_t eh_train_step(const float *features, const int32_t *labels);

/* The class (argmax of the logits, first on ties) of each of n rows of features. */
void eh_predict(const float *features, uint32_t n, int32_t *classes);

/* The learning rate of step `step` (the schedule of head_plan.h). */
float eh_learning_rate(uint32_t step);

/* Read or write the head and the optimizer state (to save it to flash and resume). The momentum
 * calls copy nothing when EH_MOMENTUM_BUFFERS is 0. */
void eh_get_head(float *weights, float *bias);
void eh_set_head(const float *weights, const float *bias);
void eh_get_momentum(float *weights, float *bias);
void eh_set_momentum(const float *weights, const float *bias);
uint32_t eh_get_step(void);
void eh_set_step(uint32_t step);

/* The trainer's own head and momentum buffers, read-only (0 when there is no momentum): save
 * them to flash without a copy (there is no RAM for one within the budget). */
const float *eh_weights(void);
const float *eh_bias(void);
const float *eh_momentum_weights(void);
const float *eh_momentum_bias(void);

/* The static batch buffers (EH_BATCH rows): write a batch here to avoid a copy. */
float *eh_features_buffer(void);
int32_t *eh_labels_buffer(void);

/* e^x in float32 without libm: maximum relative error EH_EXP_MAX_REL_ERROR over
 * [-87.3, 88.7]; 0 below -103.9 (denormals between), +inf above 88.72, NaN for NaN. */
float eh_expf(float x);
#define EH_EXP_MAX_REL_ERROR 2e-7f

#ifdef __cplusplus
}
#endif

#endif /* ENTROPI_HEAD_TRAINER_H */
