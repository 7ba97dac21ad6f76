// See shim.h for the conventions.
#include "shim.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Generator.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <mutex>
#include <stdexcept>
#include <string>

#include "guarded.h"

using sj::boxed;
using sj::guarded;
using sj::tensor;

namespace {
at::Generator default_generator(int cuda_index) {
  if (cuda_index < 0)
    return at::detail::getDefaultCPUGenerator();
  return at::globalContext().defaultGenerator(at::Device(at::kCUDA, cuda_index));
}
} // namespace

extern "C" {

const char *sj_last_error(void) { return sj::last_error.c_str(); }

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

static at::DeviceType autocast_device(int device_type) {
  if (device_type == 0)
    return at::kCPU;
  if (device_type == 1)
    return at::kCUDA;
  throw std::invalid_argument("autocast: device type must be 0 (CPU) or 1 (CUDA)");
}

int sj_autocast_enter(int device_type, int *prev_enabled, int *prev_dtype) {
  return guarded([&] {
    auto dev = autocast_device(device_type);
    *prev_enabled = at::autocast::is_autocast_enabled(dev);
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dev));
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::set_autocast_dtype(dev, at::kBFloat16);
    at::autocast::increment_nesting();
  });
}

int sj_autocast_exit(int device_type, int prev_enabled, int prev_dtype) {
  return guarded([&] {
    auto dev = autocast_device(device_type);
    if (at::autocast::decrement_nesting() == 0)
      at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(dev, prev_enabled != 0);
    at::autocast::set_autocast_dtype(dev, static_cast<at::ScalarType>(prev_dtype));
  });
}

int sj_channels_last(void *x, void **out) {
  return guarded([&] { *out = boxed(tensor(x).contiguous(at::MemoryFormat::ChannelsLast)); });
}

int sj_make_channels_last_(void *param) {
  return guarded([&] {
    auto &p = tensor(param);
    p.set_data(p.detach().contiguous(at::MemoryFormat::ChannelsLast));
  });
}

int sj_set_deterministic(int on) {
  return guarded([&] {
    auto &ctx = at::globalContext();
    // torch.use_deterministic_algorithms(on, warn_only=True) and cudnn.deterministic = on: an op
    // with no deterministic kernel warns (on stderr) instead of failing the run.
    ctx.setDeterministicAlgorithms(on != 0, /*warn_only=*/true);
    ctx.setDeterministicCuDNN(on != 0);
    if (on != 0)
      ctx.setBenchmarkCuDNN(false);
  });
}

int sj_profiler_start(void) {
  return guarded([&] {
    namespace prof = torch::profiler::impl;
    prof::ProfilerConfig config(prof::ProfilerState::KINETO);
    std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
  });
}

int sj_profiler_stop(const char *path) {
  return guarded([&] { torch::autograd::profiler::disableProfiler()->save(path); });
}

} // extern "C"
