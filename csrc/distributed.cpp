// c10d process groups for data-parallel training: PyTorch's own TCPStore rendezvous and Gloo
// backend, the same engine torchrun + DistributedDataParallel use. Compiled only when the Gloo
// headers are found (build.rs; libtorch ships the Gloo library but not its headers).
// Conventions as in shim.h.
#include "shim.h"

#include <ATen/ATen.h>
#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "guarded.h"

using sj::guarded;
using sj::tensor;

namespace {
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

Group &group(void *g) { return *static_cast<Group *>(g); }
} // namespace

extern "C" {

int sj_group_new(const char *master_addr, int master_port, int rank, int world_size, int timeout_s, void **out) {
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
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      // As in PyTorch: GLOO_SOCKET_IFNAME picks the network interface; otherwise the address
      // this machine's hostname resolves to (the loopback when it resolves to none).
      const char *ifname = std::getenv("GLOO_SOCKET_IFNAME");
      options->devices.push_back(ifname && *ifname ? c10d::ProcessGroupGloo::createDeviceForInterface(ifname)
                                                   : c10d::ProcessGroupGloo::createDefaultDevice());
      g->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(g->store, rank, world_size, options);
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
  return guarded([&] { group(g).pg->barrier()->wait(); });
}

} // extern "C"
