//! Byte counters with peaks: one `Usage` per process, per (process, device), per device and
//! for the whole machine, all moved together by the ledger's booking functions.

use std::collections::BTreeMap;

/// Which counter a booking moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Held {
    /// Memory on a GPU that the process holds: device, stream-ordered, arrays, VMM physical.
    Device,
    /// Memory freed into a stream-ordered pool: still held from the GPU, not live.
    Pool,
    /// Memory in host RAM that the GPU uses: managed, pinned, registered, host-located VMM.
    Host,
}

/// Live bytes and their peaks. Peaks never fall; live counters never underflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live device bytes (`Device`, `DeviceAsync`, `Array`, `VmmDevice` physical).
    pub device_bytes: u64,
    /// Bytes freed into stream-ordered pools and still held from the GPU.
    pub pool_held_bytes: u64,
    /// Live host bytes (`Managed`, `HostPinned`, `HostRegistered`, `VmmHost`).
    pub host_bytes: u64,
    /// Highest `device_bytes` seen (pool-held bytes excluded).
    pub peak_device_bytes: u64,
    /// When `peak_device_bytes` was first reached.
    pub peak_device_ts_ns: Option<u64>,
    /// Highest `device_bytes + pool_held_bytes` seen: what the GPU had to give.
    pub peak_device_and_pool_bytes: u64,
    /// When `peak_device_and_pool_bytes` was first reached.
    pub peak_device_and_pool_ts_ns: Option<u64>,
    /// Highest `host_bytes` seen.
    pub peak_host_bytes: u64,
    /// When `peak_host_bytes` was first reached.
    pub peak_host_ts_ns: Option<u64>,
}

impl Usage {
    /// Device plus pool-held bytes: everything taken from the GPU.
    pub fn device_and_pool_bytes(&self) -> u64 {
        self.device_bytes.saturating_add(self.pool_held_bytes)
    }

    fn counter(&mut self, class: Held) -> &mut u64 {
        match class {
            Held::Device => &mut self.device_bytes,
            Held::Pool => &mut self.pool_held_bytes,
            Held::Host => &mut self.host_bytes,
        }
    }

    pub(crate) fn add(&mut self, class: Held, bytes: u64, ts_ns: u64) {
        let c = self.counter(class);
        *c = c.saturating_add(bytes);
        self.note_peaks(ts_ns);
    }

    /// Takes `bytes` off; false (and the counter clamped at zero) when it held fewer.
    pub(crate) fn sub(&mut self, class: Held, bytes: u64) -> bool {
        let c = self.counter(class);
        match c.checked_sub(bytes) {
            Some(v) => {
                *c = v;
                true
            }
            None => {
                *c = 0;
                false
            }
        }
    }

    fn note_peaks(&mut self, ts_ns: u64) {
        if self.device_bytes > self.peak_device_bytes {
            self.peak_device_bytes = self.device_bytes;
            self.peak_device_ts_ns = Some(ts_ns);
        }
        let both = self.device_and_pool_bytes();
        if both > self.peak_device_and_pool_bytes {
            self.peak_device_and_pool_bytes = both;
            self.peak_device_and_pool_ts_ns = Some(ts_ns);
        }
        if self.host_bytes > self.peak_host_bytes {
            self.peak_host_bytes = self.host_bytes;
            self.peak_host_ts_ns = Some(ts_ns);
        }
    }

    /// A tracker at `now`'s levels, taken as its peaks at `ts_ns` and nothing earlier: the
    /// peaks of a window that opens then.
    pub(crate) fn starting_at(now: &Usage, ts_ns: u64) -> Usage {
        Usage {
            device_bytes: now.device_bytes,
            pool_held_bytes: now.pool_held_bytes,
            host_bytes: now.host_bytes,
            peak_device_bytes: now.device_bytes,
            peak_device_ts_ns: Some(ts_ns),
            peak_device_and_pool_bytes: now.device_and_pool_bytes(),
            peak_device_and_pool_ts_ns: Some(ts_ns),
            peak_host_bytes: now.host_bytes,
            peak_host_ts_ns: Some(ts_ns),
        }
    }

    /// Moves this tracker's levels to `now`'s at `ts_ns`, raising its peaks where they are
    /// passed.
    pub(crate) fn follow(&mut self, now: &Usage, ts_ns: u64) {
        self.device_bytes = now.device_bytes;
        self.pool_held_bytes = now.pool_held_bytes;
        self.host_bytes = now.host_bytes;
        self.note_peaks(ts_ns);
    }

    /// Zeroes the live counters, keeping the peaks.
    pub(crate) fn clear_live(&mut self) {
        self.device_bytes = 0;
        self.pool_held_bytes = 0;
        self.host_bytes = 0;
    }
}

/// Machine-wide figures: every traced process together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// All processes, all devices.
    pub usage: Usage,
    /// Per device ordinal (`None`: the device could not be told). Host bytes are not booked
    /// per device.
    pub devices: BTreeMap<Option<i32>, Usage>,
}

impl Totals {
    pub(crate) fn add(&mut self, device: Option<i32>, class: Held, bytes: u64, ts_ns: u64) {
        self.usage.add(class, bytes, ts_ns);
        if class != Held::Host {
            self.devices
                .entry(device)
                .or_default()
                .add(class, bytes, ts_ns);
        }
    }

    pub(crate) fn sub(&mut self, device: Option<i32>, class: Held, bytes: u64) -> bool {
        let mut ok = self.usage.sub(class, bytes);
        if class != Held::Host {
            ok &= self.devices.entry(device).or_default().sub(class, bytes);
        }
        ok
    }
}
