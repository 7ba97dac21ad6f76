// What only the CUDA build has (build.rs compiles this file when LIBTORCH is a CUDA install, and
// links c10_cuda): the caching allocator's memory statistics of a GPU, which `sadajem bench`
// reports beside PyTorch's torch.cuda.max_memory_allocated. Conventions as in shim.h.
#include "shim.h"

#include <c10/cuda/CUDACachingAllocator.h>

#include "guarded.h"

using sj::guarded;

extern "C" {

// Peak bytes handed out to tensors on `device` since the last reset (allocated_bytes, all
// pools: what torch.cuda.max_memory_allocated reads).
int sj_cuda_peak_allocated(int device, int64_t *out) {
  return guarded([&] {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    *out = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  });
}

int sj_cuda_reset_peak(int device) {
  return guarded([&] { c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device)); });
}

} // extern "C"
