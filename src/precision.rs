//! `--precision`: fp32, or bf16 through libtorch's autocast, the mechanism the reference's
//! `torch.autocast(device, dtype=torch.bfloat16)` uses. The operations autocast lists
//! (convolutions, matrix products) run in bf16 on bf16 copies of the fp32 weights; the rest keep
//! their policy's precision. Weights, gradients and Adam's moments stay fp32.
//!
//! tch only exposes the deprecated CUDA-only switch, so `csrc/autocast.cpp` wraps the per-device
//! one. The state is thread-local in libtorch, like torch.autocast's.

use tch::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

extern "C" {
    fn stargan_autocast_is_enabled(device_type: i8) -> bool;
    fn stargan_autocast_dtype(device_type: i8) -> i8;
    fn stargan_autocast_set(device_type: i8, enabled: bool, dtype: i8) -> bool;
    fn stargan_autocast_enter_region();
    fn stargan_autocast_exit_region();
}

/// c10::DeviceType of the devices we run on.
fn device_type(device: Device) -> i8 {
    match device {
        Device::Cuda(_) => 1,
        _ => 0,
    }
}

const DEVICE_TYPES: [i8; 2] = [0, 1];

/// c10::ScalarType::BFloat16.
const BFLOAT16: i8 = 15;

/// Restores one device type's autocast state when dropped.
struct Saved {
    device_type: i8,
    enabled: bool,
    dtype: i8,
}

impl Saved {
    fn take(device_type: i8) -> Self {
        // SAFETY: plain reads of libtorch's thread-local autocast state.
        unsafe {
            Self {
                device_type,
                enabled: stargan_autocast_is_enabled(device_type),
                dtype: stargan_autocast_dtype(device_type),
            }
        }
    }
}

impl Drop for Saved {
    fn drop(&mut self) {
        // SAFETY: restores values read from libtorch itself.
        unsafe {
            stargan_autocast_set(self.device_type, self.enabled, self.dtype);
        }
    }
}

/// Leaves an autocast region (the cast-weight cache is cleared with the outermost one).
struct Region;

impl Region {
    fn enter() -> Self {
        // SAFETY: torch.autocast's __enter__ bookkeeping.
        unsafe { stargan_autocast_enter_region() };
        Region
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: pairs with `enter`.
        unsafe { stargan_autocast_exit_region() };
    }
}

impl Precision {
    /// Runs `f` with autocast on for `device` when bf16 (like `with torch.autocast(...)`), or as is.
    pub fn autocast<T>(self, device: Device, f: impl FnOnce() -> T) -> T {
        if self == Precision::Fp32 {
            return f();
        }
        let dt = device_type(device);
        let saved = Saved::take(dt);
        // SAFETY: sets libtorch's thread-local autocast state; `saved` restores it.
        let ok = unsafe { stargan_autocast_set(dt, true, BFLOAT16) };
        assert!(ok, "libtorch refused to enable bf16 autocast");
        let region = Region::enter();
        let out = f();
        drop(region);
        drop(saved);
        out
    }
}

/// Runs `f` with autocast off on every device (what torch.amp advises for backward passes, and
/// what the reference's gradient penalty does for its inner autograd.grad). A no-op in fp32.
pub fn suspended<T>(f: impl FnOnce() -> T) -> T {
    let saved: Vec<Saved> = DEVICE_TYPES.iter().map(|&d| Saved::take(d)).filter(|s| s.enabled).collect();
    for s in &saved {
        // SAFETY: as in `Precision::autocast`; `saved` restores the state.
        unsafe { stargan_autocast_set(s.device_type, false, s.dtype) };
    }
    let out = f();
    drop(saved);
    out
}

/// Whether autocast is on for `device` on this thread.
pub fn is_active(device: Device) -> bool {
    // SAFETY: a plain read.
    unsafe { stargan_autocast_is_enabled(device_type(device)) }
}
