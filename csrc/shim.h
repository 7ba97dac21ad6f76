// The C ABI of sadajem's shim: what tch 0.24 does not expose.
//
// Conventions (shared by every function, so later additions — CPU bf16 autocast, channels_last,
// c10d process groups — follow the same pattern without restructuring):
// - a tensor crosses the boundary as `at::Tensor*` (the same representation tch uses), owned by
//   the caller when returned through an out-pointer;
// - every function returns 0 on success and non-zero on a C++ exception, whose message is kept
//   in a thread-local buffer read with `sj_last_error()`.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

const char *sj_last_error(void);

// LeakyReLU with an explicit negative slope, differentiable (ATen's own kernel and backward).
int sj_leaky_relu(void *x, double slope, void **out);

// The state of libtorch's default random generator of a device (cuda_index < 0: the CPU), as a
// uint8 tensor, and its restoration: what makes a resumed run draw the same random numbers.
int sj_rng_get_state(int cuda_index, void **out);
int sj_rng_set_state(int cuda_index, void *state);

#ifdef __cplusplus
}
#endif
