// See shim.h for the conventions.
#include "shim.h"

#include <ATen/ATen.h>
#include <ATen/core/Generator.h>
#include <mutex>
#include <string>

namespace {
thread_local std::string last_error;

template <typename F> int guarded(F f) {
  try {
    f();
    return 0;
  } catch (const std::exception &e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return 1;
}

at::Tensor &tensor(void *p) { return *static_cast<at::Tensor *>(p); }
void *boxed(at::Tensor t) { return new at::Tensor(std::move(t)); }

at::Generator default_generator(int cuda_index) {
  if (cuda_index < 0)
    return at::detail::getDefaultCPUGenerator();
  return at::globalContext().defaultGenerator(at::Device(at::kCUDA, cuda_index));
}
} // namespace

extern "C" {

const char *sj_last_error(void) { return last_error.c_str(); }

int sj_leaky_relu(void *x, double slope, void **out) {
  return guarded([&] { *out = boxed(at::leaky_relu(tensor(x), slope)); });
}

int sj_rng_get_state(int cuda_index, void **out) {
  return guarded([&] {
    auto gen = default_generator(cuda_index);
    std::lock_guard<std::mutex> lock(gen.mutex());
    *out = boxed(gen.get_state());
  });
}

int sj_rng_set_state(int cuda_index, void *state) {
  return guarded([&] {
    auto gen = default_generator(cuda_index);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(tensor(state));
  });
}

} // extern "C"
