// torch.distributed's c10d for Rust: a process group over a TCPStore rendezvous, with the handful
// of collectives data-parallel training needs. tch has no bindings for it (tch-rs#936), and the
// engine is already inside libtorch_cpu.so (Gloo) and libtorch_cuda.so (NCCL); this shim only
// reaches it. Every call catches every C++ exception and hands its text back: an exception that
// crossed into Rust would abort the process, and a dead peer must be an error line, not a crash.
// See ../shared/notes/distributed-c10d.md for what was checked (headers, symbols, torchrun).
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef STARGAN_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>
#include <cstring>
#include <string>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

void put(char* err, size_t len, const std::string& what) {
  if (err == nullptr || len == 0) return;
  std::strncpy(err, what.c_str(), len - 1);
  err[len - 1] = '\0';
}

// c10 exceptions carry a C++ backtrace after the first line; the user needs the message.
std::string first_line(const char* what) {
  std::string s(what);
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

template <typename F>
bool guarded(char* err, size_t len, F&& f) {
  try {
    f();
    return true;
  } catch (const c10::Error& e) {
    put(err, len, first_line(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    put(err, len, first_line(e.what()));
  } catch (...) {
    put(err, len, "unknown C++ exception");
  }
  return false;
}

std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& master) {
  // As torch.distributed does: GLOO_SOCKET_IFNAME names the interface; otherwise the host's own
  // address. A run on one machine (master on the loopback) stays on the loopback, so it works
  // where the hostname does not resolve.
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  if (master == "127.0.0.1" || master == "localhost" || master == "::1") {
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

// The one collective call pattern: start, wait (bounded by the group's timeout), and rethrow.
void run(const c10::intrusive_ptr<c10d::Work>& work, std::chrono::milliseconds timeout) {
  if (!work->wait(timeout)) {
    throw std::runtime_error("a collective did not complete within the timeout");
  }
}

}  // namespace

extern "C" {

// backend: "gloo" or "nccl". host_store: this process hosts the TCPStore (rank 0 outside torchrun).
// listen_fd: a socket already bound and listening for the store (-1: bind the port here); the
// local launcher binds it and hands it down, so no other program can take the port in between.
// prefix: a key prefix inside the store ("" for none; torchrun's agent store needs one).
void* stargan_pg_new(const char* backend, const char* master, int port, bool host_store,
                     int listen_fd, const char* prefix, int rank, int world, int64_t timeout_ms,
                     char* err, size_t errlen) {
  Group* out = nullptr;
  bool ok = guarded(err, errlen, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(port);
    opts.isServer = host_store;
    opts.numWorkers = std::nullopt;  // the group's own rendezvous counts the ranks
    opts.waitWorkers = false;
    opts.timeout = timeout;
    opts.multiTenant = true;
    if (host_store && listen_fd >= 0) {
      opts.masterListenFd = listen_fd;
    }
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(master, opts);
    if (prefix != nullptr && *prefix) {
      store = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
    }
    std::string which(backend);
    c10::intrusive_ptr<c10d::Backend> pg;
    if (which == "gloo") {
      auto o = c10d::ProcessGroupGloo::Options::create(timeout);
      o->devices.push_back(gloo_device(master));
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, o);
    } else if (which == "nccl") {
#ifdef STARGAN_NCCL
      // A failed or timed-out collective is then an exception in wait(), which we report, rather
      // than NCCL's watchdog tearing the process down (its default). The user's setting wins.
      setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2", 0);
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, o);
#else
      throw std::runtime_error("this build has no NCCL (it was built against a CPU libtorch)");
#endif
    } else {
      throw std::runtime_error("unknown backend `" + which + "`");
    }
    out = new Group{store, pg, timeout};
  });
  return ok ? out : nullptr;
}

// In-place mean over the group of one dense tensor (the caller flattens a list per dtype).
bool stargan_pg_allreduce_mean(void* group, at::Tensor* t, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions o;
    // Gloo has no AVG: sum, then divide (what DDP does to its buckets).
    o.reduceOp = c10d::ReduceOp::SUM;
    run(g->backend->allreduce(ts, o), g->timeout);
    t->div_(g->backend->getSize());
  });
}

// In-place broadcast of one tensor from `root`.
bool stargan_pg_broadcast(void* group, at::Tensor* t, int root, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    run(g->backend->broadcast(ts, o), g->timeout);
  });
}

bool stargan_pg_barrier(void* group, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* g = static_cast<Group*>(group);
    run(g->backend->barrier(), g->timeout);
  });
}

// Ends the group. After an error (a dead peer) `abort` drops the connections without waiting on
// anyone. (Gloo's `shutdown` does nothing; the Rust side ends a run with a collective every rank
// takes, so no rank leaves while another still needs it.)
void stargan_pg_free(void* group, bool clean) {
  auto* g = static_cast<Group*>(group);
  if (g == nullptr) return;
  try {
    if (clean) {
      g->backend->shutdown();
    } else {
      g->backend->abort();
    }
  } catch (...) {
  }
  try {
    delete g;
  } catch (...) {
  }
}
}
