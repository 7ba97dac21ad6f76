// See shim.h for the conventions.
#include "shim.h"

#include <ATen/ATen.h>
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
} // namespace

extern "C" {

const char *sj_last_error(void) { return last_error.c_str(); }

int sj_leaky_relu(void *x, double slope, void **out) {
  return guarded([&] { *out = boxed(at::leaky_relu(tensor(x), slope)); });
}

} // extern "C"
