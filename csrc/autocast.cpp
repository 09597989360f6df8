// Per-device autocast switches for Rust. tch exposes only the deprecated CUDA-only
// at::autocast::set_enabled, but bf16 on the CPU needs at::autocast::set_autocast_enabled(kCPU)
// and its dtype, exactly what torch.autocast("cpu", dtype=torch.bfloat16) sets. Plain C types at
// the boundary: device type and scalar type are c10's int8 enums.
#include <ATen/autocast_mode.h>

extern "C" {

bool stargan_autocast_is_enabled(int8_t device_type) {
  try {
    return at::autocast::is_autocast_enabled(static_cast<at::DeviceType>(device_type));
  } catch (...) {
    return false;
  }
}

int8_t stargan_autocast_dtype(int8_t device_type) {
  try {
    return static_cast<int8_t>(at::autocast::get_autocast_dtype(static_cast<at::DeviceType>(device_type)));
  } catch (...) {
    return -1;
  }
}

// Returns false when libtorch refused (an exception), leaving the state as it was.
bool stargan_autocast_set(int8_t device_type, bool enabled, int8_t dtype) {
  try {
    auto dev = static_cast<at::DeviceType>(device_type);
    at::autocast::set_autocast_dtype(dev, static_cast<at::ScalarType>(dtype));
    at::autocast::set_autocast_enabled(dev, enabled);
    return true;
  } catch (...) {
    return false;
  }
}

// torch.autocast's __enter__/__exit__ nesting: the cast-weight cache is cleared when the
// outermost region ends.
void stargan_autocast_enter_region() { at::autocast::increment_nesting(); }

void stargan_autocast_exit_region() {
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
}
}
