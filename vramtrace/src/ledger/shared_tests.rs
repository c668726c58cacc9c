//! Memory shared between processes: imports are mapped, not owned, and attributed to their
//! owner; the owner's freed allocation lives as long as another process maps it.

use super::*;
use crate::testing::Sim;
use crate::trace::Call;

const MIB: u64 = 1 << 20;
const HANDLE: &str = "ab";

fn apply_all(ledger: &mut Ledger, recs: impl IntoIterator<Item = Record>) {
    for r in recs {
        ledger.apply(&r);
    }
}

fn export(s: &mut Sim, api: &str, addr: u64, share: &str) -> Record {
    Record::Export(Call {
        addr: Some(addr),
        share: Some(share.into()),
        ..s.call(api)
    })
}

fn import(s: &mut Sim, api: &str, addr: u64, share: &str) -> Record {
    Record::Import(Call {
        addr: Some(addr),
        share: Some(share.into()),
        ..s.call(api)
    })
}

fn close(s: &mut Sim, addr: u64) -> Record {
    Record::ImportClose(Call {
        addr: Some(addr),
        ..s.call("cuIpcCloseMemHandle")
    })
}

/// An exporter (process 1, pid 100) whose `bytes` at 0x7000_0000 an importer (process 2,
/// pid 200) opens at 0x9000_0000 by IPC handle, exported from an address inside it.
fn ipc_shared(l: &mut Ledger, bytes: u64) -> (Sim, Sim) {
    let (mut a, mut b) = (Sim::new(1, 100), Sim::new(2, 200));
    let recs = [
        a.process("exporter"),
        b.process("importer"),
        a.alloc(0x7000_0000, bytes),
        export(&mut a, "cuIpcGetMemHandle", 0x7000_0000 + 4096, HANDLE),
        import(&mut b, "cuIpcOpenMemHandle_v2", 0x9000_0000, HANDLE),
    ];
    apply_all(l, recs);
    (a, b)
}

#[test]
fn an_ipc_import_is_attributed_to_its_owner_and_never_counted_twice() {
    let mut l = Ledger::new();
    let (_, mut b) = ipc_shared(&mut l, 16 * MIB);
    assert_eq!(l.totals().usage.device_bytes, 16 * MIB);
    let imp = l.process(2).unwrap();
    assert_eq!(imp.usage.device_bytes, 0);
    assert_eq!(imp.imported_bytes(), 16 * MIB);
    let m = imp.imports().next().unwrap();
    let owner = m.owner.as_ref().expect("attributed");
    assert_eq!((owner.pid, owner.addr), (100, Some(0x7000_0000)));
    assert_eq!(m.source(), "mapped from PID 100");

    // Closing the mapping ends it, not the owner's allocation.
    let rec = close(&mut b, 0x9000_0000);
    let changes = l.apply(&rec).to_vec();
    assert!(matches!(changes[..], [Change::ImportEnded { proc: 2, .. }]));
    assert_eq!(l.totals().usage.device_bytes, 16 * MIB);
    assert_eq!(l.process(1).unwrap().live_allocations().count(), 1);
    assert!(l.process(2).unwrap().anomalies.is_empty());
}

#[test]
fn an_owner_free_while_mapped_keeps_the_memory_until_the_last_close() {
    let mut l = Ledger::new();
    let (mut a, mut b) = ipc_shared(&mut l, 8 * MIB);
    let again = import(&mut b, "cuIpcOpenMemHandle_v2", 0x9000_0000, HANDLE);
    apply_all(&mut l, [again, a.free(0x7000_0000)]);
    let owner = l.process(1).unwrap();
    assert_eq!(owner.usage.device_bytes, 8 * MIB, "kept while mapped");
    assert!(owner.live_at(0x7000_0000).unwrap().kept_by_importers);
    // The second open is still open after the first close.
    let rec = close(&mut b, 0x9000_0000);
    l.apply(&rec);
    assert_eq!(l.totals().usage.device_bytes, 8 * MIB);
    let rec = close(&mut b, 0x9000_0000);
    let changes = l.apply(&rec).to_vec();
    assert!(changes.iter().any(|c| matches!(
        c,
        Change::Ended {
            proc: 1,
            cause: EndCause::Free,
            ..
        }
    )));
    assert_eq!(l.totals().usage.device_bytes, 0);
    assert!(l.process(1).unwrap().anomalies.is_empty());
}

/// An exporter (process 1, pid 100) whose 4 MiB of stream-ordered memory at 0x7000_0000 an
/// importer (process 2, pid 200) maps at 0x9000_0000 by pool pointer.
fn pool_pointer_shared(l: &mut Ledger) -> (Sim, Sim) {
    let (mut a, mut b) = (Sim::new(1, 100), Sim::new(2, 200));
    let recs = [
        a.process("exporter"),
        b.process("importer"),
        a.alloc_async(0x7000_0000, 4 * MIB, None),
        export(&mut a, "cuMemPoolExportPointer", 0x7000_0000, HANDLE),
        import(&mut b, "cuMemPoolImportPointer", 0x9000_0000, HANDLE),
    ];
    apply_all(l, recs);
    (a, b)
}

#[test]
fn an_importer_exit_ends_its_mappings_and_what_the_owner_kept_for_them() {
    let mut l = Ledger::new();
    let (mut a, mut b) = pool_pointer_shared(&mut l);
    apply_all(&mut l, [a.free_async(0x7000_0000), b.exit()]);
    // The owner's block went back into its pool when the last mapping went.
    let owner = l.process(1).unwrap();
    assert_eq!(owner.usage.device_bytes, 0);
    assert_eq!(owner.usage.pool_held_bytes, 4 * MIB);
    assert_eq!(l.process(2).unwrap().imports_made().count(), 1);
}

#[test]
fn an_imported_pool_pointer_freed_by_the_importer_ends_its_mapping_only() {
    let mut l = Ledger::new();
    let (_, mut b) = pool_pointer_shared(&mut l);
    apply_all(&mut l, [b.free_async(0x9000_0000)]);
    assert_eq!(l.process(1).unwrap().usage.device_bytes, 4 * MIB);
    let imp = l.process(2).unwrap();
    assert_eq!(imp.imports().count(), 0);
    assert!(imp.anomalies.is_empty(), "{:?}", imp.anomalies);
}

#[test]
fn an_import_from_an_untraced_process_has_no_owner_and_no_size() {
    let mut l = Ledger::new();
    let mut b = Sim::new(2, 200);
    apply_all(
        &mut l,
        [
            b.process("importer"),
            import(&mut b, "cuIpcOpenMemHandle_v2", 0x9000_0000, HANDLE),
        ],
    );
    let m = l.process(2).unwrap().imports().next().unwrap().clone();
    assert!(m.owner.is_none() && m.size_unknown);
    assert_eq!(m.source(), "from an untraced process");
    assert_eq!(l.totals().usage.device_bytes, 0);
}

#[test]
fn a_shareable_handle_import_is_mapped_not_owned_and_retains_count() {
    let mut l = Ledger::new();
    let mut b = Sim::new(2, 200);
    let import_handle = Record::Import(Call {
        handle: Some(0x55),
        handle_type: Some(1),
        os_handle: Some(7),
        ..b.call("cuMemImportFromShareableHandle")
    });
    let retain = Record::Retain(Call {
        handle: Some(0x55),
        addr: Some(0x9000_0000),
        ..b.call("cuMemRetainAllocationHandle")
    });
    apply_all(
        &mut l,
        [
            b.process("importer"),
            import_handle,
            b.vmm_map(0x9000_0000, 2 * MIB, 0x55),
            retain,
            b.vmm_release(0x55),
        ],
    );
    let p = l.process(2).unwrap();
    assert_eq!(p.usage.device_bytes, 0);
    assert_eq!(p.imported_bytes(), 2 * MIB);
    apply_all(
        &mut l,
        [b.vmm_unmap(0x9000_0000, 2 * MIB), b.vmm_release(0x55)],
    );
    let p = l.process(2).unwrap();
    assert_eq!(p.imports().count(), 0);
    assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
}

/// A VMM handle exported as a descriptor (open file 0xf11e) and imported from the same open
/// file by another process, which maps it.
fn handle_shared(l: &mut Ledger, bytes: u64) -> (Sim, Sim) {
    let (mut a, mut b) = (Sim::new(1, 100), Sim::new(2, 200));
    let export = Record::Export(Call {
        handle: Some(0xa),
        handle_type: Some(1),
        os_handle: Some(7),
        file: Some(0xf11e),
        ..a.call("cuMemExportToShareableHandle")
    });
    let import = Record::Import(Call {
        handle: Some(0x55),
        handle_type: Some(1),
        os_handle: Some(9),
        file: Some(0xf11e),
        ..b.call("cuMemImportFromShareableHandle")
    });
    let recs = [
        a.process("exporter"),
        b.process("importer"),
        a.vmm_create(0xa, bytes),
        export,
        import,
        b.vmm_map(0x9000_0000, bytes, 0x55),
    ];
    apply_all(l, recs);
    (a, b)
}

#[test]
fn a_shareable_handle_from_the_same_open_file_is_attributed_to_its_exporter() {
    let mut l = Ledger::new();
    let (_, _) = handle_shared(&mut l, 2 * MIB);
    assert_eq!(l.totals().usage.device_bytes, 2 * MIB);
    let imp = l.process(2).unwrap();
    assert_eq!(imp.usage.device_bytes, 0);
    let m: Vec<_> = imp.imports().collect();
    assert_eq!(m.len(), 1);
    let owner = m[0].owner.as_ref().expect("attributed");
    assert_eq!(
        (owner.proc, owner.pid, &*owner.api),
        (1, 100, "cuMemCreate")
    );
    assert_eq!(m[0].bytes, 2 * MIB);
    assert_eq!(m[0].source(), "mapped from PID 100");
}

#[test]
fn an_exported_handle_lives_while_an_importer_holds_it() {
    let mut l = Ledger::new();
    let (mut a, mut b) = handle_shared(&mut l, 2 * MIB);
    // The owner lets go: the importer still holds the handle, mapped.
    l.apply(&a.vmm_release(0xa));
    assert_eq!(l.process(1).unwrap().usage.device_bytes, 2 * MIB);
    // Unmapped, still held: the memory stays.
    l.apply(&b.vmm_unmap(0x9000_0000, 2 * MIB));
    assert_eq!(l.process(1).unwrap().usage.device_bytes, 2 * MIB);
    // Released by the importer: the owner's memory ends now, once.
    let changes = l.apply(&b.vmm_release(0x55)).to_vec();
    let ended: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Ended {
                proc, alloc, cause, ..
            } => Some((*proc, alloc.handle, *cause)),
            _ => None,
        })
        .collect();
    assert_eq!(ended, [(1, Some(0xa), EndCause::VmmRelease)]);
    assert_eq!(l.totals().usage.device_bytes, 0);
    for p in [1, 2] {
        let p = l.process(p).unwrap();
        assert!(p.anomalies.is_empty(), "{:?}", p.anomalies);
    }
}

#[test]
fn an_importer_exit_gives_its_handles_back() {
    let mut l = Ledger::new();
    let (mut a, mut b) = handle_shared(&mut l, 2 * MIB);
    l.apply(&a.vmm_release(0xa));
    l.apply(&b.exit());
    assert_eq!(l.totals().usage.device_bytes, 0);
    assert_eq!(l.process(1).unwrap().live_allocations().count(), 0);
}

#[test]
fn another_open_file_or_the_same_process_names_no_owner() {
    let mut l = Ledger::new();
    let (mut a, mut b) = (Sim::new(1, 100), Sim::new(2, 200));
    let export = Record::Export(Call {
        handle: Some(0xa),
        handle_type: Some(1),
        file: Some(1),
        ..a.call("cuMemExportToShareableHandle")
    });
    let import = |s: &mut Sim, file| {
        Record::Import(Call {
            handle: Some(0x55),
            handle_type: Some(1),
            file: Some(file),
            ..s.call("cuMemImportFromShareableHandle")
        })
    };
    apply_all(
        &mut l,
        [
            a.vmm_create(0xa, 2 * MIB),
            export,
            import(&mut b, 2),
            b.vmm_map(0x9000_0000, 2 * MIB, 0x55),
        ],
    );
    let m: Vec<_> = l.process(2).unwrap().imports().collect();
    assert!(m[0].owner.is_none());
    // The owner's release is not held up by an import that is not of its handle.
    l.apply(&a.vmm_release(0xa));
    assert_eq!(l.process(1).unwrap().usage.device_bytes, 0);
}

#[test]
fn retaining_a_handle_of_its_own_defers_its_release() {
    let mut l = Ledger::new();
    let mut a = Sim::new(1, 100);
    let retain = Record::Retain(Call {
        handle: Some(0x11),
        addr: Some(0x7000_0000),
        ..a.call("cuMemRetainAllocationHandle")
    });
    apply_all(
        &mut l,
        [
            a.process("owner"),
            a.vmm_create(0x11, 2 * MIB),
            retain,
            a.vmm_release(0x11),
        ],
    );
    assert_eq!(l.totals().usage.device_bytes, 2 * MIB);
    apply_all(&mut l, [a.vmm_release(0x11)]);
    assert_eq!(l.totals().usage.device_bytes, 0);
    assert!(l.process(1).unwrap().anomalies.is_empty());
}

#[test]
fn an_import_of_an_allocation_freed_since_its_export_names_no_owner() {
    let mut l = Ledger::new();
    let (mut a, mut b) = ipc_shared(&mut l, 2 * MIB);
    apply_all(
        &mut l,
        [
            close(&mut b, 0x9000_0000),
            a.free(0x7000_0000),
            import(&mut b, "cuIpcOpenMemHandle_v2", 0x9000_0000, HANDLE),
        ],
    );
    let m = l.process(2).unwrap().imports().next().unwrap().clone();
    assert!(m.owner.is_none() && m.size_unknown);
    assert_eq!(l.totals().usage.device_bytes, 0);
}
