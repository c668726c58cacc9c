//! The view kept up to date record by record equals the view rebuilt from the Ledger, for
//! any sequence of records, ticks and choices of the user.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use proptest::prelude::*;

use super::{
    App, Mode, Msg,
    app::{AllocRow, Focus},
    class::ViewClass,
    mirror::Apis,
    synth::{self, T0},
    update,
};
use crate::trace::{Call, Mem, Record};

const PAGE: u64 = 0x20_0000;
/// VMM mappings live apart from ordinary allocations.
const VA: u64 = 0x7000_0000_0000;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        proc: u32,
        slot: u64,
        bytes: u64,
        mem: Mem,
        device: Option<i32>,
    },
    Free {
        proc: u32,
        slot: u64,
    },
    Copy {
        proc: u32,
        slot: u64,
        offset: u64,
        bytes: u64,
    },
    Array {
        proc: u32,
        handle: u64,
        free: bool,
    },
    VmmCreate {
        proc: u32,
        handle: u64,
        bytes: u64,
    },
    VmmRelease {
        proc: u32,
        handle: u64,
    },
    VmmMap {
        proc: u32,
        slot: u64,
        handle: u64,
    },
    VmmUnmap {
        proc: u32,
        slot: u64,
    },
    VmmCopy {
        proc: u32,
        slot: u64,
        bytes: u64,
    },
    CtxCreate {
        proc: u32,
        ctx: u64,
    },
    CtxDestroy {
        proc: u32,
        ctx: u64,
    },
    Exit {
        proc: u32,
    },
    Tick,
    NextProc,
    SortAllocs,
    HideExited,
    Filter(usize),
}

const FILTERS: [&str; 6] = [
    "",
    "class:dynamic",
    "class:kv",
    "min:512K",
    "api:async",
    "class:weights min:4K",
];

fn op() -> impl Strategy<Value = Op> {
    let proc = 1..4u32;
    let mem = prop_oneof![
        4 => Just(Mem::Device),
        2 => Just(Mem::DeviceAsync),
        1 => Just(Mem::HostPinned),
        1 => Just(Mem::Managed),
    ];
    let device = prop_oneof![Just(None), Just(Some(0)), Just(Some(1))];
    prop_oneof![
        20 => (proc.clone(), 0..24u64, 0..(1u64 << 21), mem, device)
            .prop_map(|(proc, slot, bytes, mem, device)| Op::Alloc { proc, slot, bytes, mem, device }),
        20 => (proc.clone(), 0..24u64).prop_map(|(proc, slot)| Op::Free { proc, slot }),
        6 => (proc.clone(), 0..24u64, 0..(1u64 << 21), 0..(1u64 << 21))
            .prop_map(|(proc, slot, offset, bytes)| Op::Copy { proc, slot, offset, bytes }),
        2 => (proc.clone(), 0..4u64, any::<bool>())
            .prop_map(|(proc, handle, free)| Op::Array { proc, handle, free }),
        2 => (proc.clone(), 0..4u64, 0..(1u64 << 22))
            .prop_map(|(proc, handle, bytes)| Op::VmmCreate { proc, handle, bytes }),
        1 => (proc.clone(), 0..4u64).prop_map(|(proc, handle)| Op::VmmRelease { proc, handle }),
        2 => (proc.clone(), 0..6u64, 0..4u64)
            .prop_map(|(proc, slot, handle)| Op::VmmMap { proc, slot, handle }),
        1 => (proc.clone(), 0..6u64).prop_map(|(proc, slot)| Op::VmmUnmap { proc, slot }),
        1 => (proc.clone(), 0..6u64, 0..(1u64 << 22))
            .prop_map(|(proc, slot, bytes)| Op::VmmCopy { proc, slot, bytes }),
        1 => (proc.clone(), 1..3u64).prop_map(|(proc, ctx)| Op::CtxCreate { proc, ctx }),
        1 => (proc.clone(), 1..3u64).prop_map(|(proc, ctx)| Op::CtxDestroy { proc, ctx }),
        1 => proc.prop_map(|proc| Op::Exit { proc }),
        4 => Just(Op::Tick),
        2 => Just(Op::NextProc),
        1 => Just(Op::SortAllocs),
        1 => Just(Op::HideExited),
        2 => (0..FILTERS.len()).prop_map(Op::Filter),
    ]
}

fn record(op: &Op, ts: u64) -> Option<Record> {
    let call = |proc: u32, api: &str| Call {
        device: None,
        ..synth::call(proc, ts, api)
    };
    Some(match *op {
        Op::Alloc {
            proc,
            slot,
            bytes,
            mem,
            device,
        } => {
            let api = match mem {
                Mem::DeviceAsync => "cuMemAllocAsync",
                Mem::HostPinned => "cuMemHostAlloc",
                Mem::Managed => "cuMemAllocManaged",
                _ => "cuMemAlloc_v2",
            };
            Record::Alloc(Call {
                addr: Some(PAGE * (slot + 1)),
                bytes: Some(bytes),
                mem: Some(mem),
                device,
                ..call(proc, api)
            })
        }
        Op::Free { proc, slot } => Record::Free(Call {
            addr: Some(PAGE * (slot + 1)),
            ..call(proc, "cuMemFree_v2")
        }),
        Op::Copy {
            proc,
            slot,
            offset,
            bytes,
        } => Record::Copy(Call {
            addr: Some(PAGE * (slot + 1) + offset),
            bytes: Some(bytes),
            ..call(proc, "cuMemcpyHtoD_v2")
        }),
        Op::Array { proc, handle, free } => {
            let c = Call {
                handle: Some(0xa000 + handle),
                mem: Some(Mem::Array),
                ..call(proc, "cuArrayCreate_v2")
            };
            if free {
                Record::Free(Call {
                    api: "cuArrayDestroy".into(),
                    ..c
                })
            } else {
                Record::Alloc(Call {
                    bytes: Some(1 << 16),
                    ..c
                })
            }
        }
        Op::VmmCreate {
            proc,
            handle,
            bytes,
        } => Record::VmmCreate(Call {
            handle: Some(0xb000 + handle),
            bytes: Some(bytes),
            mem: Some(Mem::VmmDevice),
            device: Some(0),
            ..call(proc, "cuMemCreate")
        }),
        Op::VmmRelease { proc, handle } => Record::VmmRelease(Call {
            handle: Some(0xb000 + handle),
            ..call(proc, "cuMemRelease")
        }),
        Op::VmmMap { proc, slot, handle } => Record::VmmMap(Call {
            addr: Some(VA + (slot << 22)),
            handle: Some(0xb000 + handle),
            ..call(proc, "cuMemMap")
        }),
        Op::VmmUnmap { proc, slot } => Record::VmmUnmap(Call {
            addr: Some(VA + (slot << 22)),
            bytes: Some(1 << 22),
            ..call(proc, "cuMemUnmap")
        }),
        Op::VmmCopy { proc, slot, bytes } => Record::Copy(Call {
            addr: Some(VA + (slot << 22)),
            bytes: Some(bytes),
            ..call(proc, "cuMemcpyHtoD_v2")
        }),
        Op::CtxCreate { proc, ctx } => Record::CtxCreate(Call {
            handle: Some(ctx),
            device: Some(1),
            ..call(proc, "cuCtxCreate_v2")
        }),
        Op::CtxDestroy { proc, ctx } => Record::CtxDestroy(Call {
            handle: Some(ctx),
            ..call(proc, "cuCtxDestroy_v2")
        }),
        Op::Exit { proc } => synth::exit(proc, ts),
        _ => return None,
    })
}

fn press(app: &mut App, code: KeyCode) {
    update(app, Msg::Key(KeyEvent::new(code, KeyModifiers::NONE)));
}

/// An allocation row with its entry point by name (indices differ between tables).
fn named(apis: &Apis, r: &AllocRow) -> (String, AllocRow) {
    (
        apis.name(r.api).to_string(),
        AllocRow {
            api: 0,
            ..r.clone()
        },
    )
}

fn saturating_sum(it: impl Iterator<Item = (ViewClass, u64)>) -> [u64; ViewClass::ALL.len()] {
    let mut s = [0u64; ViewClass::ALL.len()];
    for (c, b) in it {
        s[c.index()] = s[c.index()].saturating_add(b);
    }
    s
}

/// What the view shows, checked against what a full rebuild from the Ledger gives.
fn check_against_rebuild(app: &App) {
    let ledger = &app.ledger;
    // The allocation list: every live allocation of the selected process that passes the
    // filter, in order.
    let mut apis = Apis::default();
    let mut want: Vec<AllocRow> = Vec::new();
    let mut unfiltered = 0;
    if let Some(proc) = app.selected_proc {
        for a in ledger.live_allocations(proc) {
            unfiltered += 1;
            let r = apis.row(a);
            if app.filter.matches(&a.api, r.class, r.bytes) {
                want.push(r);
            }
        }
    }
    want.sort_by(|a, b| app.alloc_order.cmp(a, b));
    let want: Vec<_> = want.iter().map(|r| named(&apis, r)).collect();
    let got: Vec<_> = app
        .view
        .allocs
        .iter()
        .map(|r| named(&app.mirror.apis, r))
        .collect();
    assert_eq!(got, want, "the allocation list");
    assert_eq!(app.view.allocs.len(), want.len());
    assert_eq!(app.view.allocs_unfiltered, unfiltered);
    // Each process's sums.
    let mut shown = 0;
    for p in ledger.processes() {
        if app.hide_exited && p.exited() {
            assert!(app.view.procs.iter().all(|r| r.proc != p.proc));
            continue;
        }
        shown += 1;
        let row = app
            .view
            .procs
            .iter()
            .find(|r| r.proc == p.proc)
            .expect("a row per process");
        if let Some(e) = &p.exit {
            // An exited process shows what it held when it exited.
            let by_class = crate::tui::class::view_classes(&e.classes);
            assert_eq!(row.by_class, by_class, "classes of exited proc {}", p.proc);
            assert_eq!(row.live, e.live_allocations);
            assert_eq!(row.traced, e.device_bytes);
            continue;
        }
        let mut apis = Apis::default();
        let by_class = saturating_sum(p.live_allocations().map(|a| {
            let r = apis.row(a);
            (r.class, r.bytes)
        }));
        assert_eq!(row.by_class, by_class, "classes of proc {}", p.proc);
        assert_eq!(row.live, p.live_allocations().count());
    }
    assert_eq!(app.view.procs.len(), shown);
    // Each GPU's sums over device memory of every process.
    let mut apis = Apis::default();
    let rows: Vec<AllocRow> = ledger
        .processes()
        .flat_map(|p| p.live_allocations())
        .filter(|a| !a.mem.is_host())
        .map(|a| apis.row(a))
        .collect();
    for g in &app.view.gpus {
        let on = rows.iter().filter(|r| r.device == g.device);
        assert_eq!(
            g.by_class,
            saturating_sum(on.map(|r| (r.class, r.bytes))),
            "GPU {:?}",
            g.device
        );
    }
    for r in &rows {
        assert!(app.view.gpus.iter().any(|g| g.device == r.device));
    }
    // The selection is a row of the list.
    if let Some(sel) = app.selected_alloc() {
        assert_eq!(app.view.allocs.position(sel), Some(app.alloc_cursor));
    }
}

fn run(ops: &[Op]) {
    let mut app = App::new(Mode::Live {
        scope: "test".into(),
        output: None,
    });
    for p in 1..4 {
        update(
            &mut app,
            Msg::Records(vec![synth::process(p, 1000 + p, "p")]),
        );
    }
    let mut batch = Vec::new();
    let mut now = T0;
    for op in ops {
        now += 1000;
        if let Some(rec) = record(op, now) {
            batch.push(rec);
            continue;
        }
        update(&mut app, Msg::Records(std::mem::take(&mut batch)));
        match op {
            Op::Tick => {
                update(&mut app, Msg::Tick { now_ns: now });
            }
            Op::NextProc => {
                app.focus = Focus::Processes;
                if app.proc_cursor + 1 >= app.view.procs.len() {
                    press(&mut app, KeyCode::Home);
                } else {
                    press(&mut app, KeyCode::Down);
                }
            }
            Op::SortAllocs => {
                app.focus = Focus::Allocations;
                press(&mut app, KeyCode::Char('s'));
                press(&mut app, KeyCode::Down);
            }
            Op::HideExited => press(&mut app, KeyCode::Char('x')),
            Op::Filter(i) => {
                press(&mut app, KeyCode::Char('/'));
                for _ in 0..40 {
                    press(&mut app, KeyCode::Backspace);
                }
                for c in FILTERS[*i].chars() {
                    press(&mut app, KeyCode::Char(c));
                }
                press(&mut app, KeyCode::Enter);
            }
            _ => unreachable!("records are batched above"),
        }
        // The view follows at refresh: on a tick (the choices above refresh at once only
        // when they change what is shown).
        update(&mut app, Msg::Tick { now_ns: now });
        check_against_rebuild(&app);
    }
    update(&mut app, Msg::Records(batch));
    update(&mut app, Msg::Tick { now_ns: now + 1 });
    check_against_rebuild(&app);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_view_kept_up_to_date_equals_a_rebuild(ops in prop::collection::vec(op(), 1..400)) {
        run(&ops);
    }
}

/// Churn past the load phase: allocations outlive frees and become long-lived, copies make
/// weights, and the list follows each change without a rebuild.
#[test]
fn long_lived_and_filled_allocations_change_class_in_place() {
    let mut ops = Vec::new();
    for round in 0..40u64 {
        ops.push(Op::Alloc {
            proc: 1,
            slot: round % 24,
            bytes: 1 << 20,
            mem: Mem::Device,
            device: Some(0),
        });
        ops.push(Op::Copy {
            proc: 1,
            slot: round % 24,
            offset: 0,
            bytes: (round % 3) << 19,
        });
        ops.push(Op::Free {
            proc: 1,
            slot: (round * 7) % 24,
        });
        ops.push(Op::Tick);
        if round % 10 == 0 {
            ops.push(Op::Filter((round / 10) as usize % FILTERS.len()));
        }
    }
    run(&ops);
}
