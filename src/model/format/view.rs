//! Element types, and the check that makes a tensor's view of its storage safe to take: in
//! bounds, in arithmetic that cannot overflow, and reading no element twice (so a view is never
//! larger than the bytes the file really holds).

use super::MAX_DIMS;

/// The element types a weights file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    pub fn width(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// From a `torch.save` storage class: `torch.FloatStorage`, ...
    pub fn of_storage(class: &str) -> Option<Dtype> {
        let name = class.strip_prefix("torch.")?.strip_suffix("Storage")?;
        Some(match name {
            "Float" => Dtype::F32,
            "Double" => Dtype::F64,
            "Half" => Dtype::F16,
            "BFloat16" => Dtype::BF16,
            "Long" => Dtype::I64,
            "Int" => Dtype::I32,
            "Short" => Dtype::I16,
            "Char" => Dtype::I8,
            "Byte" => Dtype::U8,
            "Bool" => Dtype::Bool,
            _ => return None,
        })
    }

    /// From a safetensors dtype: `F32`, ...
    pub fn of_safetensors(name: &str) -> Option<Dtype> {
        Some(match name {
            "F64" => Dtype::F64,
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "I16" => Dtype::I16,
            "I8" => Dtype::I8,
            "U8" => Dtype::U8,
            "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }
}

/// The element count of a shape, if it fits an `i64`.
pub fn numel(size: &[i64]) -> Option<i64> {
    size.iter()
        .try_fold(1i64, |n, &d| if d < 0 { None } else { n.checked_mul(d) })
}

/// Checks the view (`size`, `stride`, `offset`, in elements) of a storage of `storage`
/// elements; the message says what is wrong with it.
pub fn check(size: &[i64], stride: &[i64], offset: i64, storage: u64) -> Result<(), String> {
    if size.len() > MAX_DIMS {
        return Err(format!(
            "it has {} dimensions; at most {MAX_DIMS} are allowed",
            size.len()
        ));
    }
    if size.len() != stride.len() {
        return Err(format!(
            "its size {size:?} and stride {stride:?} differ in length"
        ));
    }
    if size.iter().chain(stride).any(|&d| d < 0) || offset < 0 {
        return Err(format!(
            "its size {size:?}, stride {stride:?} or offset {offset} is negative"
        ));
    }
    let count = numel(size).ok_or_else(|| format!("its size {size:?} is too large"))?;
    if count == 0 {
        return Ok(());
    }
    // In i128, where no product or sum of i64 values below can overflow.
    let mut dims: Vec<(i128, i128)> = size
        .iter()
        .zip(stride)
        .filter(|&(&n, _)| n > 1)
        .map(|(&n, &s)| (i128::from(n), i128::from(s)))
        .collect();
    let last = i128::from(offset) + dims.iter().map(|&(n, s)| (n - 1) * s).sum::<i128>();
    if last >= i128::from(storage) {
        return Err(format!(
            "its size {size:?}, stride {stride:?} and offset {offset} reach element {last} of \
             a storage of {storage}"
        ));
    }
    // No two indices may meet: taken by increasing stride, each stride must step over all the
    // elements the smaller ones reach.
    dims.sort_by_key(|&(_, s)| s);
    let mut reach = 0i128;
    for &(n, s) in &dims {
        if s <= reach {
            return Err(format!(
                "its size {size:?} and stride {stride:?} read elements of its storage more \
                 than once"
            ));
        }
        reach += (n - 1) * s;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_views_pass() {
        check(&[64, 3, 7, 7], &[147, 49, 7, 1], 0, 9408).unwrap();
        // A transposed view, a view at an offset, a scalar, an empty tensor, size-1 dims with
        // any stride.
        check(&[3, 4], &[1, 3], 0, 12).unwrap();
        check(&[2], &[1], 10, 12).unwrap();
        check(&[], &[], 11, 12).unwrap();
        check(&[0, 1 << 40], &[1, 1], 0, 0).unwrap();
        check(&[1, 5], &[0, 1], 0, 5).unwrap();
    }

    #[test]
    fn hostile_views_are_refused() {
        let e = |size: &[i64], stride: &[i64], offset: i64, storage: u64| {
            check(size, stride, offset, storage).unwrap_err()
        };
        assert!(e(&[1 << 31], &[0], 0, 1).contains("more than once"));
        assert!(e(&[1 << 20, 1 << 20], &[0, 0], 0, 1).contains("more than once"));
        assert!(e(&[4, 4], &[2, 1], 0, 100).contains("more than once"));
        assert!(e(&[1 << 40, 1 << 40], &[1 << 40, 1], 0, 4).contains("too large"));
        assert!(e(&[2, 2], &[i64::MAX, 1], 0, 4).contains("reach"));
        assert!(e(&[2], &[1], i64::MAX, 4).contains("reach"));
        assert!(e(&[3], &[1], 2, 4).contains("reach element 4"));
        assert!(e(&[-1], &[1], 0, 4).contains("negative"));
        assert!(e(&[1], &[1, 1], 0, 4).contains("length"));
        assert!(e(&[1; 65], &[1; 65], 0, 4).contains("dimensions"));
    }
}
