// c10d process groups for data-parallel training: PyTorch's own TCPStore rendezvous and its Gloo
// (host memory) or NCCL (GPU memory) backend, the same engine torchrun + DistributedDataParallel
// use. Compiled only when the Gloo headers are found (build.rs; libtorch ships the Gloo library
// but not its headers); the NCCL backend only in the CUDA build (USE_C10D_NCCL: nccl.h and the
// CUDA headers found, libtorch_cuda linked). Conventions as in shim.h.
#include "shim.h"

#include <ATen/ATen.h>
#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "guarded.h"

using sj::guarded;
using sj::tensor;

namespace {
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
  // The GPU an NCCL group's collectives run on; -1 for Gloo.
  int cuda_index = -1;
};

c10::intrusive_ptr<c10d::Backend> gloo_backend(const c10::intrusive_ptr<c10d::Store> &store, int rank, int world_size,
                                       std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  // As in PyTorch: GLOO_SOCKET_IFNAME picks the network interface; otherwise the address
  // this machine's hostname resolves to (the loopback when it resolves to none).
  const char *ifname = std::getenv("GLOO_SOCKET_IFNAME");
  options->devices.push_back(ifname && *ifname ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                                               : c10d::ProcessGroupGloo::createDefaultDevice());
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
}

#ifdef USE_C10D_NCCL
c10::intrusive_ptr<c10d::Backend> nccl_backend(const c10::intrusive_ptr<c10d::Store> &store, int rank, int world_size,
                                       std::chrono::milliseconds timeout, int cuda_index) {
  // This worker's GPU becomes the current one, as torch.cuda.set_device(LOCAL_RANK) makes it:
  // no context on another worker's GPU.
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(cuda_index));
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options);
  // Bound to this worker's GPU and connected now (what torch.distributed does with device_id):
  // a failure to set up NCCL surfaces at the join, not at the first gradient.
  at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(cuda_index));
  pg->setBoundDeviceId(device);
  pg->eagerConnectSingleDevice(device);
  return pg;
}
#endif


Group &group(void *g) { return *static_cast<Group *>(g); }
} // namespace

extern "C" {

int sj_group_new(const char *master_addr, int master_port, int rank, int world_size, int timeout_s, int nccl_cuda_index,
                 void **out) {
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(1000LL * timeout_s);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(master_port);
    opts.isServer = rank == 0;
    opts.numWorkers = world_size;
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto g = new Group();
    try {
      g->store = c10::make_intrusive<c10d::TCPStore>(master_addr, opts);
      if (nccl_cuda_index < 0) {
        g->pg = gloo_backend(g->store, rank, world_size, timeout);
      } else {
#ifdef USE_C10D_NCCL
        g->pg = nccl_backend(g->store, rank, world_size, timeout, nccl_cuda_index);
        g->cuda_index = nccl_cuda_index;
#else
        throw std::runtime_error("this sadajem was built without NCCL");
#endif
      }
    } catch (...) {
      delete g;
      throw;
    }
    *out = g;
  });
}

void sj_group_free(void *g) { delete static_cast<Group *>(g); }

int sj_group_allreduce_sum(void *g, void *t) {
  return guarded([&] {
    std::vector<at::Tensor> ts{tensor(t)};
    group(g).pg->allreduce(ts)->wait();
  });
}

int sj_group_broadcast(void *g, void *t, int root) {
  return guarded([&] {
    std::vector<at::Tensor> ts{tensor(t)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    group(g).pg->broadcast(ts, opts)->wait();
  });
}

int sj_group_allgather(void *g, void *t, void **out) {
  return guarded([&] {
    auto &pg = *group(g).pg;
    std::vector<at::Tensor> input{tensor(t)};
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < pg.getSize(); ++r)
      outputs[0].push_back(at::empty_like(tensor(t)));
    pg.allgather(outputs, input)->wait();
    *out = sj::boxed(at::stack(outputs[0]));
  });
}

int sj_group_barrier(void *g) {
  return guarded([&] {
    c10d::BarrierOptions opts;
    if (group(g).cuda_index >= 0) {
      // NCCL's barrier is an all-reduce on a GPU; name ours rather than let it guess.
      opts.device_ids = {group(g).cuda_index};
      opts.device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(group(g).cuda_index));
    }
    group(g).pg->barrier(opts)->wait();
  });
}

} // extern "C"
