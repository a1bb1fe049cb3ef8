//! Any bytes as a weights file, in both formats: the reader must return a plan or a refusal,
//! never panic, hang or allocate from a claimed size; and a plan must keep its promises: every
//! storage inside the file, every view inside its storage, reading no element twice, and the
//! storages readable to their end.
#![no_main]

#[path = "../../src/model/format/mod.rs"]
#[allow(dead_code)]
mod format;

use format::{Format, Source};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for kind in [Format::TorchZip, Format::SafeTensors] {
        let Ok(plan) = format::plan(data, kind) else {
            continue;
        };
        for span in &plan.storages {
            let end = span.offset.checked_add(span.len).expect("a storage's end fits u64");
            assert!(end <= data.size(), "{span:?} past the end");
            // A damaged storage (CRC) is a refusal, not a panic.
            let mut dst = vec![0u8; span.len as usize];
            let _ = format::read_storage(data, span, &mut dst);
        }
        for t in &plan.tensors {
            let span = &plan.storages[t.storage];
            let numel: i128 = t.size.iter().map(|&d| i128::from(d)).product();
            if numel == 0 {
                continue;
            }
            let last: i128 = i128::from(t.offset)
                + t.size
                    .iter()
                    .zip(&t.stride)
                    .map(|(&n, &s)| i128::from(n - 1) * i128::from(s))
                    .sum::<i128>();
            assert!(last < i128::from(span.numel()), "{t:?} past its storage");
            assert!(numel <= i128::from(span.numel()), "{t:?} repeats elements");
        }
    }
});
