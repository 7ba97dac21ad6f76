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

// Autocast for one device type (0: CPU, 1: CUDA) to bfloat16, entered and left around one
// forward pass. `enter` returns the previous state through `prev` (enabled flag and dtype), which
// `exit` restores; leaving the outermost region clears autocast's cache of cast weights, so a
// weight changed in place between forwards (SAM's ascent, the optimiser) is never seen stale.
int sj_autocast_enter(int device_type, int *prev_enabled, int *prev_dtype);
int sj_autocast_exit(int device_type, int prev_enabled, int prev_dtype);

// `x` in the channels_last memory format (NHWC strides, same shape and values).
int sj_channels_last(void *x, void **out);
// Gives a parameter channels_last storage in place (`set_data`: autograd and optimiser state
// keep referring to the same tensor).
int sj_make_channels_last_(void *param);

// Deterministic kernels where libtorch has them (ATen's deterministic mode, warn-only, and
// cuDNN's deterministic algorithms without autotuning), or libtorch's defaults again.
int sj_set_deterministic(int on);

// libtorch's operator profiler (Kineto, CPU activities) started, and stopped with its events
// written to `path` as a Chrome trace (what torch.profiler's export_chrome_trace writes), for
// `sadajem bench --profile`.
int sj_profiler_start(void);
int sj_profiler_stop(const char *path);

#ifdef __cplusplus
}
#endif
