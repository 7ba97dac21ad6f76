// What every shim source shares: the error convention of shim.h (an int status, the C++
// exception's message kept per thread for sj_last_error) and the tensor pointer casts.
#pragma once
#include <ATen/ATen.h>
#include <exception>
#include <string>

namespace sj {
inline thread_local std::string last_error;

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

inline at::Tensor &tensor(void *p) { return *static_cast<at::Tensor *>(p); }
inline void *boxed(at::Tensor t) { return new at::Tensor(std::move(t)); }
} // namespace sj
