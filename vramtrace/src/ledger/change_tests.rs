//! The change stream is complete: replaying only the changes [`Ledger::apply`] returns
//! rebuilds every process's live allocations, their classes and the pool-held bytes.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::testing::{MIB, Op, PROCS, Sim, addr, op, record, vaddr};
use crate::trace::Call;

/// What the change stream alone says each process holds.
#[derive(Default)]
struct Rebuilt {
    live: BTreeMap<(u32, u64), LiveAllocation>,
    pools: BTreeMap<(u32, PoolId), u64>,
    ooms: u64,
    anomalies: BTreeMap<u32, u64>,
}

impl Rebuilt {
    fn apply(&mut self, changes: &[Change]) {
        for ch in changes {
            match ch {
                Change::Started { proc, alloc } => {
                    let old = self
                        .live
                        .insert((*proc, alloc.seq()), LiveAllocation::clone(alloc));
                    assert!(old.is_none(), "started twice: {alloc:?}");
                }
                Change::Ended { proc, alloc, .. } => {
                    let old = self.live.remove(&(*proc, alloc.seq()));
                    assert_eq!(old.map(|a| a.bytes), Some(alloc.bytes), "ended unstarted");
                }
                Change::Updated { proc, was, alloc } => {
                    let old = self
                        .live
                        .insert((*proc, alloc.seq()), LiveAllocation::clone(alloc))
                        .expect("updated a live allocation");
                    assert_eq!(old.class, *was);
                }
                Change::PoolHeld {
                    proc, pool, held, ..
                } => {
                    self.pools.insert((*proc, *pool), *held);
                }
                Change::Oom { .. } => self.ooms += 1,
                Change::Anomaly { proc, .. } => *self.anomalies.entry(*proc).or_default() += 1,
                Change::Phase { .. }
                | Change::Imported { .. }
                | Change::ImportEnded { .. }
                | Change::HostFinding { .. }
                | Change::Exited { .. }
                | Change::Lost { .. } => {}
            }
        }
    }

    fn classes(&self, proc: u32) -> ClassBytes {
        let mut c = ClassBytes::default();
        for a in self
            .live
            .range((proc, 0)..=(proc, u64::MAX))
            .map(|(_, a)| a)
        {
            c.add(a.class, a.bytes);
        }
        c.set(Class::Pool, self.pool_held(proc));
        c
    }

    fn pool_held(&self, proc: u32) -> u64 {
        self.pools
            .iter()
            .filter(|((p, _), _)| *p == proc)
            .map(|(_, b)| b)
            .sum()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn the_change_stream_rebuilds_the_ledger(ops in prop::collection::vec(op(), 1..250)) {
        let mut ledger = Ledger::new();
        let mut sims: Vec<Sim> = (0..PROCS).map(|p| Sim::new(p, 1000 + p)).collect();
        let mut rebuilt = Rebuilt::default();
        for (proc, op) in &ops {
            let s = &mut sims[*proc as usize];
            if matches!(op, Op::Exit) {
                // A new life under a new record id, as the recorder numbers processes.
                let rec = record(s, op);
                rebuilt.apply(ledger.apply(&rec));
                s.proc += PROCS;
                s.pid += PROCS;
                continue;
            }
            let rec = record(s, op);
            rebuilt.apply(ledger.apply(&rec));
        }
        for p in ledger.processes() {
            let mut want: Vec<&LiveAllocation> = p.live_allocations().collect();
            want.sort_by_key(|a| a.seq());
            let got: Vec<&LiveAllocation> = rebuilt
                .live
                .range((p.proc, 0)..=(p.proc, u64::MAX))
                .map(|(_, a)| a)
                .collect();
            prop_assert_eq!(got, want, "live set of {}", p.proc);
            prop_assert_eq!(rebuilt.classes(p.proc), p.classes(), "classes of {}", p.proc);
            prop_assert_eq!(rebuilt.pool_held(p.proc), p.usage.pool_held_bytes);
            let anomalies: u64 = p.anomalies.values().map(|a| a.count).sum();
            prop_assert_eq!(rebuilt.anomalies.get(&p.proc).copied().unwrap_or(0), anomalies);
            // What started is what ended, by each cause, and what is live: no byte outside.
            let live_bytes: u64 = p.live_allocations().map(|a| a.bytes).sum();
            let ended_bytes: u64 = p.ended.iter().map(|e| e.bytes).sum();
            let ended_count: u64 = p.ended.iter().map(|e| e.count).sum();
            prop_assert_eq!(p.started.bytes, ended_bytes + live_bytes, "bytes of {}", p.proc);
            prop_assert_eq!(
                p.started.count,
                ended_count + p.live_allocations().count() as u64,
                "allocations of {}", p.proc
            );
            prop_assert_eq!(live_bytes, p.usage.device_bytes + p.usage.host_bytes);
        }
        let held: u64 = ledger.processes().map(|p| p.usage.pool_held_bytes).sum();
        prop_assert_eq!(rebuilt.pools.values().sum::<u64>(), held);
    }
}

#[test]
fn every_way_an_allocation_ends_names_its_cause() {
    let mut l = Ledger::new();
    let mut s = Sim::new(1, 100);
    let ended = |l: &mut Ledger, rec: &Record| -> Vec<EndCause> {
        l.apply(rec)
            .iter()
            .filter_map(|c| match c {
                Change::Ended { cause, .. } => Some(*cause),
                _ => None,
            })
            .collect()
    };
    l.apply(&s.ctx_create(0xc1, 0));
    l.apply(&s.alloc(addr(0), MIB));
    assert_eq!(ended(&mut l, &s.free(addr(0))), [EndCause::Free]);
    l.apply(&s.alloc_async(addr(1), MIB, None));
    assert_eq!(ended(&mut l, &s.free_async(addr(1))), [EndCause::PoolFree]);
    l.apply(&s.alloc(addr(2), MIB));
    assert_eq!(
        ended(&mut l, &s.alloc(addr(2), 2 * MIB)),
        [EndCause::Replaced]
    );
    l.apply(&record(
        &mut s,
        &Op::Array {
            handle: 1,
            bytes: MIB,
        },
    ));
    assert_eq!(
        ended(&mut l, &record(&mut s, &Op::ArrayDestroy { handle: 1 })),
        [EndCause::ArrayDestroy]
    );
    l.apply(&s.vmm_create(0x4001, MIB));
    l.apply(&s.vmm_map(vaddr(0), MIB, 0x4001));
    assert!(ended(&mut l, &s.vmm_release(0x4001)).is_empty());
    assert_eq!(
        ended(&mut l, &s.vmm_unmap(vaddr(0), MIB)),
        [EndCause::VmmRelease]
    );
    l.apply(&s.alloc(addr(3), MIB));
    assert_eq!(
        ended(&mut l, &record(&mut s, &Op::CtxDestroy { ctx: 2 })),
        Vec::<EndCause>::new(),
        "another context's destruction ends nothing"
    );
    assert_eq!(
        ended(
            &mut l,
            &Record::CtxDestroy(Call {
                handle: Some(0xc1),
                ..s.call("cuCtxDestroy_v2")
            })
        ),
        [EndCause::ContextDestroyed, EndCause::ContextDestroyed],
        "the live allocation at addr(2) and at addr(3)"
    );
    l.apply(&s.alloc(addr(4), MIB));
    let exit = s.exit();
    let changes = l.apply(&exit).to_vec();
    assert!(matches!(
        &changes[..],
        [
            Change::Ended {
                cause: EndCause::ProcessExit,
                ..
            },
            Change::PoolHeld { held: 0, .. },
            Change::Exited { proc: 1, .. }
        ]
    ));
}

#[test]
fn each_end_cause_has_its_own_place_in_the_counts() {
    for (i, cause) in EndCause::ALL.iter().enumerate() {
        assert_eq!(cause.index(), i, "{cause:?}");
    }
}
