//! The postmortem explanation of a trace, computed during the replay: why each out-of-memory
//! failure happened (who held what, made by which stack, since when, what else was on the
//! GPU, and what would have fit), leak suspects, and the timeline.
//!
//! Nothing here keeps accounts of its own or decides a fact again: after each record the
//! [`Collector`] reads what the [`Ledger`] changed ([`Change`]) and its state. An OOM is the
//! Ledger's snapshot ([`Oom`]: the failing device, its NVML device and figures, the other
//! processes there), which the explanation extends with stacks, ages and the memory
//! allocated since the process's last low point; the load phase is the Ledger's.

use std::collections::BTreeMap;

use foldhash::HashMap;

use serde::{Deserialize, Serialize};

use super::leaks::{LeakReport, LeakTracker};
use super::timeline::{Timeline, TimelineReport};
use crate::api::cuda_error_name;
use crate::ledger::{Change, Class, Ledger, LiveAllocation, NvmlAtOom, Oom, OomNeighbour};
use crate::site::{Site, SiteKey};
use crate::trace::{Mem, Record, Stack};

/// Frames kept per stack in the report, and more when its site is deeper.
const FRAMES: usize = 12;

/// Everything the postmortem found, part of the [`Report`](super::Report).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Postmortem {
    /// One explanation per out-of-memory failure, in trace order.
    pub ooms: Vec<OomExplanation>,
    /// Stacks whose live bytes grow through the steady state and are not given back.
    pub leaks: LeakReport,
    /// Device bytes per process over time.
    pub timeline: TimelineReport,
}

/// A stack as the report shows it: frames innermost first, symbolized where the trace has it,
/// and the frame in the user's code that the finding is titled by.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackFrames {
    /// The `stack` record id; `None`: the call had no stack. For a finding that groups
    /// several stacks, the one that holds the most.
    pub id: Option<u32>,
    /// `function (file:line)`, or `file+0xoffset`, or `0xaddr (why unknown)`.
    pub frames: Vec<String>,
    /// The frame in the user's code (or the best frame of a stack that has none), with its
    /// title: `train.py:88 forward`. Absent when there is no stack record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<Site>,
    /// The other stacks grouped into the finding: the same frames in the user's code,
    /// reached through other paths in the runtime.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<u32>,
}

impl StackFrames {
    /// Whether the finding includes stack `id`.
    pub fn covers(&self, id: Option<u32>) -> bool {
        self.id == id || id.is_some_and(|i| self.merged.contains(&i))
    }
}

/// Live bytes made by one stack at the moment of a failure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackHolding {
    pub stack: StackFrames,
    /// Live bytes.
    pub bytes: u64,
    /// Live allocations.
    pub allocations: u64,
    /// When the oldest of them was made.
    pub oldest_ts_ns: u64,
    /// How long the oldest had been held at the failure.
    pub held_for_ns: u64,
}

/// One large allocation held at the failure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub bytes: u64,
    pub api: String,
    pub mem: Option<Mem>,
    pub class: String,
    pub ts_ns: u64,
    /// How long it had been held at the failure.
    pub held_for_ns: u64,
    pub stack: Option<u32>,
    /// The title of the stack's site: its frame in the user's code (`train.py:88 forward`),
    /// or its first named frame outside the driver and the CUDA runtime when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_frame: Option<String>,
}

/// Memory allocated since the process's last low point and still held at the failure: the
/// dynamic memory of the step that failed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinceLow {
    /// When the process's device bytes were last at their low.
    pub low_ts_ns: u64,
    /// Device bytes held then.
    pub low_bytes: u64,
    /// Bytes allocated since then and still held.
    pub bytes: u64,
    /// Allocations.
    pub allocations: u64,
    /// Of `bytes`, what the Ledger classified as dynamic.
    #[serde(default)]
    pub dynamic_bytes: u64,
}

/// Why an allocation failed with `CUDA_ERROR_OUT_OF_MEMORY`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomExplanation {
    pub proc: u32,
    pub pid: u32,
    pub comm: String,
    pub tid: u32,
    pub ts_ns: u64,
    /// The entry point that failed.
    pub api: String,
    /// `CUresult` name.
    pub error: String,
    /// Bytes requested, when the call has a size.
    pub request_bytes: Option<u64>,
    /// The device (CUDA ordinal), as the Ledger told it.
    pub device: Option<i32>,
    /// Its NVML index, as the Ledger mapped it.
    #[serde(default)]
    pub nvml_index: Option<u32>,
    /// The stack of the failed call.
    pub stack: StackFrames,
    /// Live device bytes the process held on that device (all devices when unknown).
    pub held_device_bytes: u64,
    /// Its pool-held bytes there.
    pub held_pool_bytes: u64,
    /// Its live host bytes.
    pub held_host_bytes: u64,
    /// Its live device bytes on its other devices (0 when the failing device is not known).
    #[serde(default)]
    pub held_other_devices_bytes: u64,
    /// Its live allocations on that device.
    pub live_allocations: u64,
    /// Its live bytes on that device by class, pool-held included (the Ledger's figures).
    pub by_class: BTreeMap<String, u64>,
    /// Its live bytes on that device by kind of memory.
    pub by_mem: BTreeMap<String, u64>,
    /// The stacks holding the most bytes, most first.
    pub top_stacks: Vec<StackHolding>,
    /// The largest allocations held, largest first, with how long each had been held.
    pub largest: Vec<Holder>,
    /// The other traced processes with memory on that device (device and pool-held bytes).
    pub others: Vec<OomNeighbour>,
    /// Device bytes of all traced processes on that device.
    pub all_traced_device_bytes: u64,
    /// The process's peak device bytes before the failure, and when.
    pub peak_before_bytes: u64,
    pub peak_before_ts_ns: Option<u64>,
    /// NVML's view of the device at the nearest sample before the failure.
    pub capacity: Option<NvmlAtOom>,
    /// Device and pool-held bytes of every traced process on the failing device at the
    /// failure (the Ledger's figure): what was taken since NVML's sample is measured by it.
    #[serde(default)]
    pub traced_on_device: u64,
    /// The process was already running when the recording started (`record -p`, or a
    /// machine-wide recording): its figures count what it allocated since.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attached: bool,
    /// NVML's per-process figure on the device beyond the traced allocations, when NVML
    /// gave one (the Ledger's [`Oom::untraced_bytes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untraced_bytes: Option<u64>,
    /// The dynamic memory of the failing step.
    pub since_low: Option<SinceLow>,
    /// What the process held then in stacks the leak analysis found growing all run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_leak_suspects: Option<LeakShare>,
    /// The answer in one paragraph: what was asked, what was free, what could have made room.
    pub verdict: String,
}

/// Device bytes held at a failure by leak-suspect stacks of the failing process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeakShare {
    pub bytes: u64,
    pub allocations: u64,
    /// How many suspect stacks hold them.
    pub stacks: u64,
    /// Of `bytes`, what was allocated since the process's last low point.
    pub since_low_bytes: u64,
    /// Of `since_low_bytes`, what the Ledger classified as dynamic.
    #[serde(default)]
    pub since_low_dynamic_bytes: u64,
}

/// What one stack held at a failure: bytes, allocations, and bytes allocated since the
/// process's last low point.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    stack: Option<u32>,
    bytes: u64,
    allocations: u64,
    since_low_bytes: u64,
    since_low_dynamic_bytes: u64,
}

/// Watches the replay: the hooks run around [`Ledger::apply`].
#[derive(Debug)]
pub struct Collector {
    top: usize,
    ooms: Vec<OomExplanation>,
    /// Per failure: device bytes and allocations held by each stack then (all of them, not
    /// only the top ones), to weigh the leak suspects once they are known.
    oom_stacks: Vec<Vec<Held>>,
    pub(super) leaks: LeakTracker,
    pub(super) timeline: Timeline,
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new(10)
    }
}

impl Collector {
    /// A collector that keeps the `top` largest stacks and holders per failure.
    pub fn new(top: usize) -> Self {
        Collector {
            top: top.max(1),
            ooms: Vec::new(),
            oom_stacks: Vec::new(),
            leaks: LeakTracker::default(),
            timeline: Timeline::default(),
        }
    }

    /// After the ledger applied `rec`: what it changed.
    pub fn observe(&mut self, ledger: &Ledger, rec: &Record) {
        let changes = ledger.changes();
        for ch in changes {
            self.leaks.observe(ch);
            if let Change::Oom { proc, oom } = ch {
                let (e, stacks) = self.explain(ledger, *proc, oom);
                self.ooms.push(e);
                self.oom_stacks.push(stacks);
            }
        }
        let Some(proc) = changes
            .first()
            .and_then(Change::proc)
            .or_else(|| rec.proc())
        else {
            return;
        };
        let Some(p) = ledger.process(proc) else {
            return;
        };
        let ts = p.last_ts_ns.unwrap_or(0);
        self.timeline.note(p, ts);
    }

    /// The explanation of the Ledger's OOM `oom` in process `proc`, and what each stack held
    /// then.
    fn explain(&self, ledger: &Ledger, proc: u32, oom: &Oom) -> (OomExplanation, Vec<Held>) {
        let now = oom.ts_ns;
        let mut e = OomExplanation {
            proc,
            tid: oom.tid,
            ts_ns: now,
            api: oom.api.clone(),
            error: cuda_error_name(oom.ret).to_owned(),
            request_bytes: oom.requested_bytes,
            device: oom.device,
            nvml_index: oom.nvml_index,
            stack: frames_of(ledger, oom.stack),
            others: oom.others.clone(),
            capacity: oom.nvml.clone(),
            traced_on_device: oom.traced_on_device(),
            attached: oom.attached,
            untraced_bytes: oom.untraced_bytes(),
            ..Default::default()
        };
        e.others
            .sort_by_key(|o| (std::cmp::Reverse(o.device_bytes), o.proc));
        let Some(p) = ledger.process(proc) else {
            e.verdict = verdict(&e);
            return (e, Vec::new());
        };
        e.pid = p.pid;
        e.comm = p.comm().to_owned();
        // The Ledger's device; when it could not tell, every device of the process.
        let on_device = |a: &LiveAllocation| e.device.is_none() || a.device == e.device;
        let usage = match e.device {
            Some(d) => p.devices.get(&Some(d)).copied().unwrap_or_default(),
            None => p.usage,
        };
        e.held_device_bytes = usage.device_bytes;
        e.held_pool_bytes = usage.pool_held_bytes;
        e.held_host_bytes = p.usage.host_bytes;
        if e.device.is_some() {
            e.held_other_devices_bytes = p.usage.device_bytes.saturating_sub(usage.device_bytes);
        }
        e.peak_before_bytes = usage.peak_device_bytes;
        e.peak_before_ts_ns = usage.peak_device_ts_ns;

        let mut since = self.timeline.low(proc).map(|(b, ts)| SinceLow {
            low_ts_ns: ts,
            low_bytes: b,
            ..Default::default()
        });
        let mut by_stack: HashMap<Option<u32>, StackHolding> = HashMap::default();
        let mut since_by_stack: HashMap<Option<u32>, (u64, u64)> = HashMap::default();
        let mut largest: Vec<&LiveAllocation> = Vec::new();
        // What the Ledger says the process held on that device, by class.
        for (c, b) in p.classes_on(e.device).to_map() {
            if b > 0 {
                e.by_class.insert(c.name().to_owned(), b);
            }
        }
        for a in p.live_allocations() {
            if a.mem.is_host() || !on_device(a) {
                continue;
            }
            e.live_allocations += 1;
            *e.by_mem.entry(a.mem.name().to_owned()).or_default() += a.bytes;
            let h = by_stack.entry(a.stack).or_insert_with(|| StackHolding {
                oldest_ts_ns: a.ts_ns,
                ..Default::default()
            });
            h.bytes += a.bytes;
            h.allocations += 1;
            h.oldest_ts_ns = h.oldest_ts_ns.min(a.ts_ns);
            if let Some(s) = since.as_mut().filter(|s| a.ts_ns > s.low_ts_ns) {
                let dynamic = if a.class == Class::Dynamic {
                    a.bytes
                } else {
                    0
                };
                s.bytes += a.bytes;
                s.allocations += 1;
                s.dynamic_bytes += dynamic;
                let st = since_by_stack.entry(a.stack).or_default();
                st.0 += a.bytes;
                st.1 += dynamic;
            }
            largest.push(a);
        }
        e.since_low = since.filter(|s| s.allocations > 0);

        let mut stacks: Vec<(Option<u32>, StackHolding)> = by_stack.into_iter().collect();
        stacks.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then(a.0.cmp(&b.0)));
        let held: Vec<Held> = stacks
            .iter()
            .map(|(id, h)| {
                let (since, dynamic) = since_by_stack.get(id).copied().unwrap_or_default();
                Held {
                    stack: *id,
                    bytes: h.bytes,
                    allocations: h.allocations,
                    since_low_bytes: since,
                    since_low_dynamic_bytes: dynamic,
                }
            })
            .collect();
        e.top_stacks = by_site(ledger, stacks)
            .into_iter()
            .take(self.top)
            .map(|mut h| {
                h.held_for_ns = now.saturating_sub(h.oldest_ts_ns);
                h
            })
            .collect();
        largest.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.ts_ns.cmp(&b.ts_ns)));
        e.largest = largest
            .into_iter()
            .take(self.top)
            .map(|a| Holder {
                bytes: a.bytes,
                api: a.api.to_string(),
                mem: Some(a.mem),
                class: a.class.name().to_owned(),
                ts_ns: a.ts_ns,
                held_for_ns: now.saturating_sub(a.ts_ns),
                stack: a.stack,
                top_frame: top_frame(ledger, a.stack),
            })
            .collect();

        e.all_traced_device_bytes =
            e.held_device_bytes + e.others.iter().map(|o| o.device_bytes).sum::<u64>();
        e.verdict = verdict(&e);
        (e, held)
    }

    /// The findings, once every record was applied. A failure whose process held memory in
    /// leak-suspect stacks says how much, and its verdict names the leak.
    pub fn finish(self, ledger: &Ledger) -> Postmortem {
        let leaks = self.leaks.report(ledger, |id| frames_of(ledger, id));
        let mut ooms = self.ooms;
        for (e, held) in ooms.iter_mut().zip(&self.oom_stacks) {
            let suspect = |id: &Option<u32>| {
                leaks
                    .suspects
                    .iter()
                    .any(|l| l.proc == e.proc && l.stack.covers(*id))
            };
            let mut share = LeakShare::default();
            for h in held.iter().filter(|h| suspect(&h.stack)) {
                share.bytes += h.bytes;
                share.allocations += h.allocations;
                share.stacks += 1;
                share.since_low_bytes += h.since_low_bytes;
                share.since_low_dynamic_bytes += h.since_low_dynamic_bytes;
            }
            if share.bytes > 0 {
                e.in_leak_suspects = Some(share);
                e.verdict = verdict(e);
            }
        }
        Postmortem {
            ooms,
            leaks,
            timeline: self.timeline.report(),
        }
    }
}

pub use crate::site::frame_line;

/// The title of stack `id`'s [`Site`]: its frame in the user's code, or its best frame
/// when it has none.
pub fn top_frame(ledger: &Ledger, id: Option<u32>) -> Option<String> {
    ledger.stack(id?)?.site().map(|s| s.title)
}

/// The frames of stack `id`, as lines, and its site. The frames reach at least two past
/// the site, however deep in the stack it is.
pub fn frames_of(ledger: &Ledger, id: Option<u32>) -> StackFrames {
    let stack = id.and_then(|i| ledger.stack(i));
    let site = stack.and_then(Stack::site);
    let keep = FRAMES.max(site.as_ref().map_or(0, |s| s.frame + 3));
    StackFrames {
        id,
        frames: stack
            .map(|s: &Stack| s.frames.iter().take(keep).map(frame_line).collect())
            .unwrap_or_default(),
        site,
        merged: Vec::new(),
    }
}

/// What findings of stack `id` are grouped by.
pub fn site_key(ledger: &Ledger, id: Option<u32>) -> SiteKey {
    SiteKey::of(id, id.and_then(|i| ledger.stack(i)))
}

/// What each stack held, grouped by site ([`SiteKey`]): one holding per group, cited by
/// the stack in it that held the most, largest first. `stacks` is sorted by bytes, largest
/// first.
fn by_site(ledger: &Ledger, stacks: Vec<(Option<u32>, StackHolding)>) -> Vec<StackHolding> {
    let mut groups: Vec<(SiteKey, StackHolding)> = Vec::new();
    let mut index: HashMap<SiteKey, usize> = HashMap::default();
    for (id, h) in stacks {
        let key = site_key(ledger, id);
        match index.get(&key).and_then(|&i| groups.get_mut(i)) {
            Some((_, g)) => {
                g.bytes += h.bytes;
                g.allocations += h.allocations;
                g.oldest_ts_ns = g.oldest_ts_ns.min(h.oldest_ts_ns);
                g.stack.merged.extend(id);
            }
            None => {
                index.insert(key.clone(), groups.len());
                // The first of a group holds the most of it: it cites the group.
                let stack = frames_of(ledger, id);
                groups.push((key, StackHolding { stack, ..h }));
            }
        }
    }
    let mut out: Vec<StackHolding> = groups.into_iter().map(|(_, h)| h).collect();
    for h in &mut out {
        h.stack.merged.sort_unstable();
    }
    out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.stack.id.cmp(&b.stack.id)));
    out
}

/// What a request of `request` bytes would still lack with `freed` bytes given back beside
/// the `free` ones: 0 when it fits, `None` when either is not known.
fn shortfall(request: Option<u64>, free: Option<u64>, freed: u64) -> Option<u64> {
    Some(request?.saturating_sub(free?.saturating_add(freed)))
}

fn verdict(e: &OomExplanation) -> String {
    use super::human_bytes as hb;
    let mut v = match e.request_bytes {
        Some(b) => format!("The request needed {}", hb(b)),
        None => "The request's size is not known".to_owned(),
    };
    // Device and pool-held bytes of every traced process on the GPU (NVML's sample counts
    // both as used), as the Ledger's OOM gives them.
    let traced_now = e.traced_on_device;
    let free = e
        .capacity
        .as_ref()
        .and_then(|c| c.free_at_failure(traced_now));
    match (&e.capacity, free) {
        (Some(c), Some(f)) => {
            let taken = c.taken_since(traced_now);
            if taken > 0 {
                v.push_str(&format!(
                    "; NVML's last sample ({} before) saw {} free{}, and traced processes took {} \
                     on the GPU since: about {} free at the failure",
                    super::render_post::dur(e.ts_ns.saturating_sub(c.ts_ns)),
                    hb(c.free_bytes.unwrap_or(0)),
                    c.total_bytes
                        .map_or_else(String::new, |t| format!(" of {}", hb(t))),
                    hb(taken),
                    hb(f)
                ));
            } else {
                v.push_str(&format!("; NVML saw {} free", hb(f)));
                if let Some(t) = c.total_bytes {
                    v.push_str(&format!(" of {}", hb(t)));
                }
            }
        }
        _ => v.push_str("; free memory on the device is unknown (no NVML sample in the trace)"),
    }
    v.push_str(&format!(
        "; this process held {} on the device",
        hb(e.held_device_bytes)
    ));
    if e.attached {
        v.push_str(" as traced since the recording began (it was already running)");
    }
    if e.held_pool_bytes > 0 {
        v.push_str(&format!(
            " plus {} cached in stream-ordered pools (cuMemPoolTrimTo would give it back)",
            hb(e.held_pool_bytes)
        ));
    }
    if let (Some(used), Some(beyond)) = (
        e.capacity.as_ref().and_then(|c| c.process_used_bytes),
        e.untraced_bytes,
    ) {
        v.push_str(&format!(
            "; NVML counted {} for it, {} beyond the traced allocations ({})",
            hb(used),
            hb(beyond),
            if e.attached {
                "what it allocated before tracing began, and its context"
            } else {
                "its CUDA context and memory not obtained through the hooked calls"
            }
        ));
    }
    if e.held_other_devices_bytes > 0 {
        v.push_str(&format!(
            " (and {} on its other GPUs, which does not count here)",
            hb(e.held_other_devices_bytes)
        ));
    }
    let others: u64 = e.others.iter().map(|o| o.device_bytes).sum();
    if others > 0 {
        v.push_str(&format!(", other traced processes {}", hb(others)));
    }
    v.push('.');
    if let Some(s) = &e.since_low {
        v.push_str(&format!(
            " {} of it ({} allocations) was allocated since its last low point ({} held)",
            hb(s.bytes),
            s.allocations,
            hb(s.low_bytes)
        ));
        let leaked = e.in_leak_suspects.map_or(0, |l| l.since_low_bytes);
        // (When all the leak is that recent, the sentence on the leak below says it.)
        if leaked > 0 && e.in_leak_suspects.is_some_and(|l| l.bytes != leaked) {
            v.push_str(&format!(", {} of that in leak suspects", hb(leaked)));
        }
        // What the step itself holds: what the Ledger classified as dynamic, leak suspects
        // apart, so that the sentence never names more dynamic memory than the classes hold.
        let leaked_dynamic = e.in_leak_suspects.map_or(0, |l| l.since_low_dynamic_bytes);
        let step = s.dynamic_bytes.saturating_sub(leaked_dynamic);
        let long_lived = s.bytes.saturating_sub(leaked).saturating_sub(step);
        if long_lived > 0 {
            v.push_str(&format!(
                ", {} of that not dynamic by its class",
                hb(long_lived)
            ));
        }
        if step > 0 {
            v.push_str(&format!(
                "; {} is dynamic memory of the step that failed",
                hb(step)
            ));
            match shortfall(e.request_bytes, free, step) {
                Some(0) => v.push_str(": freeing it before this request would have made room."),
                Some(short) => v.push_str(&format!(
                    ": even freeing all of it leaves {} short; the long-lived memory itself is too large.",
                    hb(short)
                )),
                None => v.push('.'),
            }
        } else {
            v.push('.');
        }
    }
    if let Some(l) = &e.in_leak_suspects {
        v.push_str(&format!(
            " {} of what it held ({} allocations from {} stack{}) was in leak suspects: stacks \
             whose live bytes grew all through the run and were never given back (see the leak \
             suspects)",
            hb(l.bytes),
            l.allocations,
            l.stacks,
            if l.stacks == 1 { "" } else { "s" }
        ));
        match shortfall(e.request_bytes, free, l.bytes) {
            Some(0) => v.push_str("; without the leak the request would have fit."),
            Some(short) => v.push_str(&format!(
                "; even without the leak the request is {} short.",
                hb(short)
            )),
            None => v.push('.'),
        }
    }
    if let Some(f) = free
        && let Some(r) = e.request_bytes
        && f >= r
    {
        v.push_str(
            " NVML reported enough free memory overall: fragmentation, a per-process limit or memory freed just before the sample may explain the failure.",
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::super::{Report, summarize};
    use super::StackFrames;
    use crate::trace::{Call, Frame, GpuSample, Mem, NvmlSample, Record, Stack};

    const MIB: u64 = 1 << 20;

    fn call(api: &str, ts: u64, stack: u32) -> Call {
        Call {
            api: api.into(),
            proc: 1,
            pid: 7,
            tid: 7,
            ts_ns: ts,
            device: Some(0),
            stack: Some(stack),
            ..Default::default()
        }
    }

    fn alloc(addr: u64, bytes: u64, ts: u64, stack: u32) -> Record {
        Record::Alloc(Call {
            addr: Some(addr),
            bytes: Some(bytes),
            mem: Some(Mem::Device),
            ..call("cuMemAlloc_v2", ts, stack)
        })
    }

    fn free(addr: u64, ts: u64) -> Record {
        Record::Free(Call {
            addr: Some(addr),
            ..call("cuMemFree_v2", ts, 9)
        })
    }

    /// Weights (stack 1), a caching allocator's segment (stack 2, made once, kept), per step
    /// activations (stack 3, freed) and a leak (stack 4, 1 MiB a step, never freed); then an
    /// out-of-memory failure in step 10 with an NVML sample before it.
    fn training() -> Report {
        let mut recs = Vec::new();
        for id in 1..=4 {
            recs.push(Record::Stack(Stack {
                id,
                frames: vec![Frame {
                    addr: 0x1000 * u64::from(id),
                    sym: Some(format!("site{id}")),
                    src: Some(format!("train.py:{id}")),
                    ..Default::default()
                }],
                truncated: None,
            }));
        }
        recs.push(alloc(0x10_0000_0000, 512 * MIB, 1_000, 1));
        recs.push(alloc(0x20_0000_0000, 64 * MIB, 2_000, 2));
        let mut ts = 10_000;
        for step in 0..10u64 {
            recs.push(alloc(0x30_0000_0000, 256 * MIB, ts, 3));
            recs.push(alloc(0x40_0000_0000 + step * MIB, MIB, ts + 10, 4));
            if step == 9 {
                recs.push(Record::Nvml(NvmlSample {
                    ts_ns: ts + 20,
                    gpus: vec![GpuSample {
                        index: 0,
                        total_bytes: Some(1024 * MIB),
                        free_bytes: Some(100 * MIB),
                        ..Default::default()
                    }],
                }));
                recs.push(Record::Failed(Call {
                    ret: 2,
                    bytes: Some(300 * MIB),
                    mem: Some(Mem::Device),
                    ..call("cuMemAlloc_v2", ts + 30, 3)
                }));
            }
            recs.push(free(0x30_0000_0000, ts + 1_000));
            ts += 1_000_000;
        }
        summarize(recs.into_iter(), None)
    }

    #[test]
    fn an_oom_is_explained_by_stack_with_what_would_have_fit() {
        let r = training();
        let pm = &r.postmortem;
        assert_eq!(pm.ooms.len(), 1);
        let e = &pm.ooms[0];
        assert_eq!(e.request_bytes, Some(300 * MIB));
        assert_eq!(e.held_device_bytes, (512 + 64 + 256 + 10) * MIB);
        assert_eq!(e.top_stacks[0].stack.id, Some(1));
        assert_eq!(e.top_stacks[1].stack.id, Some(3));
        assert_eq!(e.top_stacks[0].stack.frames, ["site1 (train.py:1)"]);
        assert_eq!(
            e.capacity.as_ref().and_then(|c| c.free_bytes),
            Some(100 * MIB)
        );
        // Since the low point after the first step: the leaks of steps 1-9 and the activations.
        let s = e.since_low.as_ref().expect("a low point");
        assert_eq!(s.bytes, 265 * MIB);
        assert!(e.verdict.contains("would have made room"), "{}", e.verdict);
        // The leak's 10 MiB held then, 9 of them since the low point, are named as such.
        let l = e.in_leak_suspects.expect("the leak is weighed");
        assert_eq!(
            (l.bytes, l.allocations, l.stacks, l.since_low_bytes),
            (10 * MIB, 10, 1, 9 * MIB)
        );
        assert!(
            e.verdict.contains("9.0 MiB of that in leak suspects"),
            "{}",
            e.verdict
        );
        assert!(
            e.verdict.contains("256.0 MiB is dynamic memory"),
            "{}",
            e.verdict
        );
        assert!(
            e.verdict.contains("10.0 MiB of what it held"),
            "{}",
            e.verdict
        );
        // Every live byte is in one class, as the Ledger classified it: made while loading
        // and not filled from host, stack 1, the cache segment and the first leaked buffer are
        // long-lived buffers; the step's activations and the nine younger leaked buffers have
        // not outlived enough frees and are dynamic.
        let class = |c: &str| e.by_class.get(c).copied();
        assert_eq!(
            class("kv_cache"),
            Some((512 + 64 + 1) * MIB),
            "{:?}",
            e.by_class
        );
        assert_eq!(class("dynamic"), Some((256 + 9) * MIB), "{:?}", e.by_class);
        assert_eq!(e.by_class.len(), 2, "{:?}", e.by_class);
    }

    /// A PyTorch stack: the caching allocator (at `path` within it), the interpreter, and
    /// the Python line `train.py:LINE` in `forward`.
    fn py_stack(id: u32, line: u32, path: u64) -> Record {
        Record::Stack(Stack {
            id,
            frames: vec![
                Frame {
                    addr: 0x7f00_0000_0000 + path,
                    file: Some("/venv/torch/lib/libc10_cuda.so".into()),
                    offset: Some(path),
                    sym: Some("c10::cuda::CUDACachingAllocator::malloc(unsigned long)".into()),
                    ..Default::default()
                },
                Frame {
                    addr: 0x5500_001d_0000,
                    file: Some("/usr/bin/python3.12".into()),
                    offset: Some(0x1d_0000),
                    sym: Some("_PyEval_EvalFrameDefault".into()),
                    ..Default::default()
                },
                Frame {
                    file: Some("/home/me/train.py".into()),
                    sym: Some("forward".into()),
                    src: Some(format!("/home/me/train.py:{line}")),
                    python: true,
                    ..Default::default()
                },
            ],
            truncated: None,
        })
    }

    /// As [`training`], from Python lines: weights (line 20), the cache (30), activations
    /// (91); the leak is line 88, reached through two paths of the allocator (stacks 4 and
    /// 5, in turn).
    fn python_training() -> Report {
        let mut recs = vec![
            py_stack(1, 20, 0x100),
            py_stack(2, 30, 0x100),
            py_stack(3, 91, 0x100),
            py_stack(4, 88, 0x100),
            py_stack(5, 88, 0x200),
        ];
        recs.push(alloc(0x10_0000_0000, 512 * MIB, 1_000, 1));
        recs.push(alloc(0x20_0000_0000, 64 * MIB, 2_000, 2));
        let mut ts = 10_000;
        for step in 0..10u64 {
            recs.push(alloc(0x30_0000_0000, 256 * MIB, ts, 3));
            let path = 4 + (step % 2) as u32;
            recs.push(alloc(0x40_0000_0000 + step * MIB, MIB, ts + 10, path));
            if step == 9 {
                recs.push(Record::Failed(Call {
                    ret: 2,
                    bytes: Some(300 * MIB),
                    mem: Some(Mem::Device),
                    ..call("cuMemAlloc_v2", ts + 30, 3)
                }));
            }
            recs.push(free(0x30_0000_0000, ts + 1_000));
            ts += 1_000_000;
        }
        summarize(recs.into_iter(), None)
    }

    #[test]
    fn findings_from_one_user_line_are_one_titled_by_it() {
        let r = python_training();
        let e = &r.postmortem.ooms[0];
        let site = |h: &StackFrames| h.site.clone().expect("a site");
        assert_eq!(site(&e.stack).title, "train.py:91 forward");
        let titles: Vec<String> = e.top_stacks.iter().map(|h| site(&h.stack).title).collect();
        assert_eq!(
            titles,
            [
                "train.py:20 forward",
                "train.py:91 forward",
                "train.py:30 forward",
                "train.py:88 forward"
            ]
        );
        // The leak's two paths through the allocator are one holding, cited by the first.
        let leak = &e.top_stacks[3];
        assert_eq!((leak.bytes, leak.allocations), (10 * MIB, 10));
        assert_eq!((leak.stack.id, &leak.stack.merged[..]), (Some(4), &[5][..]));
        let s = site(&leak.stack);
        assert!(s.user && s.python);
        assert_eq!((s.frame, s.line), (2, Some(88)));
        assert_eq!(leak.stack.frames[2], "forward (/home/me/train.py:88)");

        // One suspect, not one per path; the OOM weighs both.
        let l = &r.postmortem.leaks.suspects;
        assert_eq!(l.len(), 1, "{l:#?}");
        assert_eq!((l[0].live_bytes, l[0].allocs), (10 * MIB, 10));
        assert!(l[0].stack.covers(Some(4)) && l[0].stack.covers(Some(5)));
        assert!(!l[0].stack.covers(Some(3)) && !l[0].stack.covers(None));
        let share = e.in_leak_suspects.expect("the leak is weighed");
        assert_eq!((share.bytes, share.stacks), (10 * MIB, 2));

        // The JSON carries the site; the text is titled by it.
        let json = serde_json::to_value(&r.postmortem).expect("json");
        assert_eq!(
            json["leaks"]["suspects"][0]["stack"]["site"]["title"],
            "train.py:88 forward"
        );
        assert_eq!(json["ooms"][0]["top_stacks"][3]["stack"]["merged"][0], 5);
        let text = super::super::render_text(&r);
        assert!(
            text.contains("failed call's stack from train.py:91 forward:"),
            "{text}"
        );
        assert!(
            text.contains("oldest held for 9.0 ms from train.py:88 forward (2 stacks)"),
            "{text}"
        );
        assert!(text.contains("   train.py:88 forward in "), "{text}");
    }

    #[test]
    fn the_leak_is_a_suspect_and_the_cache_is_not() {
        let r = training();
        let l = &r.postmortem.leaks;
        let ids: Vec<_> = l.suspects.iter().map(|s| s.stack.id).collect();
        assert_eq!(ids, [Some(4)], "{l:#?}");
        assert!(
            l.retention
                .iter()
                .all(|x| x.stack.as_ref().and_then(|s| s.id) != Some(4))
        );
    }

    fn process(proc: u32, pid: u32, visible: Option<&str>) -> Record {
        Record::Process(crate::trace::Process {
            id: proc,
            pid,
            comm: "worker".into(),
            cuda_visible_devices: visible.map(str::to_owned),
            ..Default::default()
        })
    }

    fn ctx(api: &str, ctx: u64, device: Option<i32>, ts: u64) -> Call {
        Call {
            handle: Some(ctx),
            device,
            ..call(api, ts, 9)
        }
    }

    /// Steady churn from stack 3 beside `n` cycles of (create a context, allocate 1 MiB in
    /// it from stack 5, destroy the context): the Ledger frees those with their context, so
    /// stack 5 is no leak suspect.
    #[test]
    fn memory_freed_with_its_context_is_no_leak() {
        let mut recs = vec![process(1, 7, None)];
        recs.push(Record::CtxCreate(ctx("cuCtxCreate_v2", 0xc0, Some(0), 500)));
        let mut ts = 1_000;
        for cycle in 0..12u64 {
            for i in 0..4 {
                recs.push(alloc(0x30_0000_0000 + i * MIB, MIB, ts, 3));
                recs.push(free(0x30_0000_0000 + i * MIB, ts + 1));
                ts += 10;
            }
            let c = 0xd000 + cycle;
            recs.push(Record::CtxCreate(ctx("cuCtxCreate_v2", c, Some(0), ts)));
            let mut a = alloc(0x50_0000_0000 + cycle * MIB, MIB, ts + 1, 5);
            if let Record::Alloc(call) = &mut a {
                call.device = None;
            }
            recs.push(a);
            recs.push(Record::CtxDestroy(ctx("cuCtxDestroy_v2", c, None, ts + 2)));
            ts += 1_000;
        }
        let r = summarize(recs.into_iter(), None);
        let ids: Vec<_> = r
            .postmortem
            .leaks
            .suspects
            .iter()
            .map(|s| s.stack.id)
            .collect();
        assert!(!ids.contains(&Some(5)), "{:#?}", r.postmortem.leaks);
        assert_eq!(r.processes[0].live_allocations_at_exit, 0);
    }

    /// A process holds 1 GiB on GPU 0, makes a context on GPU 1 current and asks for 3 GiB
    /// there: the explanation is about GPU 1, where it held nothing.
    #[test]
    fn an_oom_on_a_second_gpu_is_explained_there() {
        let mut recs = vec![process(1, 7, None)];
        recs.push(alloc(0x10_0000_0000, 1 << 30, 1_000, 1));
        recs.push(Record::CtxCreate(ctx(
            "cuCtxCreate_v2",
            0xc1,
            Some(1),
            2_000,
        )));
        recs.push(Record::Failed(Call {
            ret: 2,
            bytes: Some(3 << 30),
            mem: Some(Mem::Device),
            device: None,
            ..call("cuMemAlloc_v2", 3_000, 2)
        }));
        let r = summarize(recs.into_iter(), None);
        assert_eq!(r.postmortem.ooms.len(), 1);
        let e = &r.postmortem.ooms[0];
        assert_eq!(e.device, Some(1));
        assert_eq!(e.held_device_bytes, 0);
        assert!(
            e.verdict.contains("held 0 B on the device"),
            "{}",
            e.verdict
        );
        // The Ledger recorded the same device: the OOM is told once, the same way.
        assert_eq!(r.processes[0].ooms.len(), 1);
    }

    /// With CUDA_VISIBLE_DEVICES=1 the process's device 0 is NVML's GPU 1: the verdict quotes
    /// GPU 1's free memory, not GPU 0's.
    #[test]
    fn cuda_visible_devices_picks_the_nvml_gpu_of_an_oom() {
        let header = crate::trace::Header {
            nvml: Some(crate::trace::NvmlInfo {
                available: true,
                gpus: (0..2)
                    .map(|index| crate::trace::GpuInfo {
                        index,
                        uuid: Some(format!("GPU-{index}aaa")),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let gpu = |index: u32, free: u64| GpuSample {
            index,
            total_bytes: Some(80 << 30),
            free_bytes: Some(free),
            ..Default::default()
        };
        let recs = vec![
            Record::Header(Box::new(header)),
            process(1, 7, Some("1")),
            alloc(0x10_0000_0000, 1 << 30, 1_000, 1),
            Record::Nvml(NvmlSample {
                ts_ns: 1_500,
                gpus: vec![gpu(0, 70 << 30), gpu(1, 512 * MIB)],
            }),
            Record::Failed(Call {
                ret: 2,
                bytes: Some(1 << 30),
                mem: Some(Mem::Device),
                ..call("cuMemAlloc_v2", 2_000, 2)
            }),
        ];
        let r = summarize(recs.into_iter(), None);
        let e = &r.postmortem.ooms[0];
        assert_eq!((e.device, e.nvml_index), (Some(0), Some(1)));
        assert_eq!(
            e.capacity.as_ref().and_then(|c| c.free_bytes),
            Some(512 * MIB)
        );
        assert!(
            e.verdict.contains("NVML saw 512.0 MiB free"),
            "{}",
            e.verdict
        );
    }

    /// A process attached with -p held 1 GiB before tracing began: its OOM says what was
    /// traced since, and what NVML counted for it beyond that.
    #[test]
    fn an_attached_process_oom_says_what_nvml_counted_beyond_the_trace() {
        let header = crate::trace::Header {
            scope: crate::trace::Scope {
                pids: vec![7],
                ..Default::default()
            },
            nvml: Some(crate::trace::NvmlInfo {
                available: true,
                gpus: vec![crate::trace::GpuInfo {
                    index: 0,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let recs = vec![
            Record::Header(Box::new(header)),
            process(1, 7, None),
            alloc(0x10_0000_0000, 2 << 30, 1_000, 1),
            Record::Nvml(NvmlSample {
                ts_ns: 1_500,
                gpus: vec![GpuSample {
                    index: 0,
                    total_bytes: Some(80 << 30),
                    free_bytes: Some(512 * MIB),
                    processes: vec![crate::trace::GpuProcess {
                        pid: 7,
                        used_bytes: Some(3 << 30),
                    }],
                    ..Default::default()
                }],
            }),
            Record::Failed(Call {
                ret: 2,
                bytes: Some(1 << 30),
                mem: Some(Mem::Device),
                ..call("cuMemAlloc_v2", 2_000, 2)
            }),
        ];
        let r = summarize(recs.into_iter(), None);
        let e = &r.postmortem.ooms[0];
        assert!(e.attached);
        assert_eq!(e.untraced_bytes, Some(1 << 30));
        assert!(
            e.verdict.contains(
                "this process held 2.0 GiB on the device as traced since the recording began \
                 (it was already running); NVML counted 3.0 GiB for it, 1.0 GiB beyond \
                 the traced allocations (what it allocated before tracing began, and its context)"
            ),
            "{}",
            e.verdict
        );
    }

    /// A process attached while it ran made its context before tracing began: with one GPU
    /// visible to it (CUDA_VISIBLE_DEVICES names one), its OOM is on that GPU, not "GPU ?".
    #[test]
    fn a_context_made_before_tracing_is_on_the_one_visible_gpu() {
        let unknown_ctx = |c: Call| Call { device: None, ..c };
        for (visible, want) in [(Some("3"), Some(0)), (Some("0,1"), None), (None, None)] {
            let recs = vec![
                process(1, 7, visible),
                Record::Alloc(unknown_ctx(Call {
                    addr: Some(0x10_0000_0000),
                    bytes: Some(1 << 30),
                    mem: Some(Mem::Device),
                    ..call("cuMemAlloc_v2", 1_000, 1)
                })),
                Record::Failed(unknown_ctx(Call {
                    ret: 2,
                    bytes: Some(1 << 30),
                    mem: Some(Mem::Device),
                    ..call("cuMemAlloc_v2", 2_000, 2)
                })),
            ];
            let r = summarize(recs.into_iter(), None);
            let e = &r.postmortem.ooms[0];
            assert_eq!(e.device, want, "CUDA_VISIBLE_DEVICES={visible:?}");
            if want.is_some() {
                assert_eq!(e.held_device_bytes, 1 << 30);
            }
        }
    }

    /// Thread 0 leaks 1 MiB per step from stack 4 and runs all its steps before the other
    /// threads churn: the leak grows in the first third only, yet it never frees, so it is a
    /// suspect; the churning stack is not.
    #[test]
    fn a_leak_is_found_however_the_threads_interleave() {
        let mut recs = vec![process(1, 7, None)];
        recs.push(alloc(0x10_0000_0000, 512 * MIB, 100, 1));
        let mut ts = 1_000;
        // The first free ends the load phase.
        recs.push(alloc(0x20_0000_0000, MIB, ts, 3));
        recs.push(free(0x20_0000_0000, ts + 1));
        for step in 0..20u64 {
            ts += 100;
            recs.push(alloc(0x30_0000_0000, 8 * MIB, ts, 3));
            recs.push(alloc(0x40_0000_0000 + step * MIB, MIB, ts + 1, 4));
            recs.push(free(0x30_0000_0000, ts + 2));
        }
        for _ in 0..200u64 {
            ts += 100;
            recs.push(alloc(0x30_0000_0000, 8 * MIB, ts, 3));
            recs.push(free(0x30_0000_0000, ts + 2));
        }
        let r = summarize(recs.into_iter(), None);
        let l = &r.postmortem.leaks;
        let found: Vec<_> = l
            .suspects
            .iter()
            .map(|s| (s.stack.id, s.rule.as_str(), s.live_bytes))
            .collect();
        assert_eq!(found, [(Some(4), "never_freed", 20 * MIB)], "{l:#?}");
    }

    /// The verdict never calls more memory the failing step's dynamic memory than the
    /// Ledger classified as dynamic.
    #[test]
    fn the_verdict_agrees_with_the_class_breakdown() {
        let r = training();
        let e = &r.postmortem.ooms[0];
        let dynamic = e.by_class.get("dynamic").copied().unwrap_or(0);
        let s = e.since_low.as_ref().expect("a low point");
        assert!(s.dynamic_bytes <= dynamic, "{s:?} {:?}", e.by_class);
        if dynamic == 0 {
            assert!(
                !e.verdict.contains("dynamic memory of the step"),
                "{}",
                e.verdict
            );
        }
    }

    #[test]
    fn the_text_report_shows_the_postmortem() {
        let t = super::super::render_text(&training());
        assert!(t.contains("OUT OF MEMORY"), "{t}");
        assert!(t.contains("LEAK SUSPECTS"), "{t}");
        assert!(t.contains("DEVICE MEMORY OVER TIME"), "{t}");
    }
}
