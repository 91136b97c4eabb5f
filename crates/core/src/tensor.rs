//! A named, shaped tensor whose data is held without copying.
//!
//! Fixed-size datatypes keep their elements as one little-endian, row-major [`Bytes`] buffer, so
//! a tensor can point straight into a request body (or a runtime's output buffer) with no copy.
//! `BYTES` tensors keep one [`Bytes`] per element.

use bytes::Bytes;

use crate::{DataType, Error, Result};

#[cfg(target_endian = "big")]
compile_error!("oxinfer stores tensor data little-endian and only supports little-endian targets");

/// A Rust type that is the in-memory representation of one fixed-size OIP datatype.
///
/// Implemented for the integer and float primitives and for [`half::f16`] / [`half::bf16`].
/// `BOOL` has no `Element` type: it is stored as one `u8` (0 or 1) per element, see
/// [`Tensor::from_bools`] and [`Tensor::to_bools`].
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    /// The datatype this type represents.
    const DATATYPE: DataType;
}

macro_rules! element {
    ($($t:ty => $dt:ident),* $(,)?) => {
        $(impl Element for $t { const DATATYPE: DataType = DataType::$dt; })*
    };
}
element! {
    u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64,
    i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64,
    half::f16 => Fp16, half::bf16 => Bf16, f32 => Fp32, f64 => Fp64,
}

/// The elements of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Fixed-size elements, little-endian and row-major, with no padding.
    Raw(Bytes),
    /// One byte string per element of a `BYTES` tensor.
    Strings(Vec<Bytes>),
}

/// A tensor's concrete shape: up to four dimensions held inline, so that building, cloning and
/// splitting a tensor of common rank allocates nothing for its shape. Built from a `Vec<usize>`
/// (`.into()`), a slice or an iterator.
pub type Shape = smallvec::SmallVec<[usize; 4]>;

/// A tensor's name: held inline up to 24 bytes (nearly every name), so that building a tensor
/// from a request and cloning one (the inference log keeps a copy of each request's tensors)
/// allocates nothing for its name. Built from a `&str`, `String`, `&String`, `Cow<str>` or
/// `Box<str>` with `.into()`, and read as a `&str`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TensorName(compact_str::CompactString);

impl TensorName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for TensorName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TensorName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TensorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for TensorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for TensorName {
    fn from(s: &str) -> Self {
        TensorName(s.into())
    }
}

impl From<String> for TensorName {
    fn from(s: String) -> Self {
        TensorName(s.into())
    }
}

impl From<&String> for TensorName {
    fn from(s: &String) -> Self {
        TensorName(s.into())
    }
}

impl From<std::borrow::Cow<'_, str>> for TensorName {
    fn from(s: std::borrow::Cow<'_, str>) -> Self {
        TensorName(s.into())
    }
}

impl From<Box<str>> for TensorName {
    fn from(s: Box<str>) -> Self {
        TensorName(s.into())
    }
}

impl From<&TensorName> for TensorName {
    fn from(s: &TensorName) -> Self {
        s.clone()
    }
}

impl From<TensorName> for String {
    fn from(name: TensorName) -> Self {
        name.0.into()
    }
}

impl PartialEq<str> for TensorName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for TensorName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A tensor: name, datatype, concrete shape and data. The constructor checks that the data
/// matches the datatype and shape, so every `Tensor` is consistent.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    name: TensorName,
    datatype: DataType,
    shape: Shape,
    data: TensorData,
}

/// The number of elements of a shape, or `None` when the product overflows `usize`.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Keeps a typed vector alive as the owner of a [`Bytes`] view of its memory.
struct VecOwner<T: Element>(Vec<T>);

impl<T: Element> AsRef<[u8]> for VecOwner<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

/// Turns a typed vector into little-endian bytes without copying it.
pub fn bytes_from_vec<T: Element>(values: Vec<T>) -> Bytes {
    Bytes::from_owner(VecOwner(values))
}

impl Tensor {
    /// Builds a tensor, checking that `data` holds exactly the elements `shape` calls for
    /// in the layout `datatype` needs.
    pub fn new(
        name: impl Into<TensorName>,
        datatype: DataType,
        shape: impl Into<Shape>,
        data: TensorData,
    ) -> Result<Self> {
        let name = name.into();
        let shape = shape.into();
        let count = element_count(&shape).ok_or_else(|| {
            Error::invalid(format!("tensor '{name}': shape {shape:?} is too large"))
        })?;
        match (&data, datatype.size()) {
            (TensorData::Raw(bytes), Some(size)) => {
                let expected = count.checked_mul(size).ok_or_else(|| {
                    Error::invalid(format!("tensor '{name}': shape {shape:?} is too large"))
                })?;
                if bytes.len() != expected {
                    return Err(Error::invalid(format!(
                        "tensor '{name}': shape {shape:?} of {datatype} needs {expected} bytes, got {}",
                        bytes.len()
                    )));
                }
            }
            (TensorData::Strings(items), None) => {
                if items.len() != count {
                    return Err(Error::invalid(format!(
                        "tensor '{name}': shape {shape:?} needs {count} elements, got {}",
                        items.len()
                    )));
                }
            }
            (TensorData::Raw(_), None) => {
                return Err(Error::invalid(format!(
                    "tensor '{name}': BYTES data must be a list of byte strings"
                )));
            }
            (TensorData::Strings(_), Some(_)) => {
                return Err(Error::invalid(format!(
                    "tensor '{name}': {datatype} data cannot be a list of byte strings"
                )));
            }
        }
        if let (DataType::Bool, TensorData::Raw(bytes)) = (datatype, &data)
            && bytes.iter().any(|&b| b > 1)
        {
            return Err(Error::invalid(format!(
                "tensor '{name}': BOOL elements must be 0 or 1"
            )));
        }
        Ok(Tensor {
            name,
            datatype,
            shape,
            data,
        })
    }

    /// A tensor that takes ownership of a typed vector, without copying it.
    pub fn from_vec<T: Element>(
        name: impl Into<TensorName>,
        shape: impl Into<Shape>,
        values: Vec<T>,
    ) -> Result<Self> {
        Tensor::new(
            name,
            T::DATATYPE,
            shape,
            TensorData::Raw(bytes_from_vec(values)),
        )
    }

    /// A `BOOL` tensor.
    pub fn from_bools(
        name: impl Into<TensorName>,
        shape: impl Into<Shape>,
        values: &[bool],
    ) -> Result<Self> {
        let bytes: Vec<u8> = values.iter().map(|&b| u8::from(b)).collect();
        Tensor::new(name, DataType::Bool, shape, TensorData::Raw(bytes.into()))
    }

    /// A `BYTES` tensor.
    pub fn from_strings<B: Into<Bytes>>(
        name: impl Into<TensorName>,
        shape: impl Into<Shape>,
        values: impl IntoIterator<Item = B>,
    ) -> Result<Self> {
        let items = values.into_iter().map(Into::into).collect();
        Tensor::new(name, DataType::Bytes, shape, TensorData::Strings(items))
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the tensor.
    pub fn with_name(mut self, name: impl Into<TensorName>) -> Self {
        self.name = name.into();
        self
    }

    /// The element datatype.
    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    /// The concrete shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of elements (the product of the shape).
    pub fn element_count(&self) -> usize {
        match &self.data {
            TensorData::Raw(b) => b.len() / self.datatype.size().unwrap_or(1),
            TensorData::Strings(s) => s.len(),
        }
    }

    /// The data.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Takes the data out of the tensor.
    pub fn into_data(self) -> TensorData {
        self.data
    }

    /// Takes the tensor apart without copying: its name, datatype, shape and data (for an
    /// encoder that moves them into a message of its own).
    pub fn into_parts(self) -> (String, DataType, Shape, TensorData) {
        (self.name.into(), self.datatype, self.shape, self.data)
    }

    /// The raw little-endian bytes of a fixed-size tensor; `None` for `BYTES`.
    pub fn raw(&self) -> Option<&Bytes> {
        match &self.data {
            TensorData::Raw(b) => Some(b),
            TensorData::Strings(_) => None,
        }
    }

    /// The elements of a `BYTES` tensor; `None` for fixed-size datatypes.
    pub fn strings(&self) -> Option<&[Bytes]> {
        match &self.data {
            TensorData::Strings(s) => Some(s),
            TensorData::Raw(_) => None,
        }
    }

    fn check_type<T: Element>(&self) -> Result<&Bytes> {
        match (&self.data, self.datatype == T::DATATYPE) {
            (TensorData::Raw(b), true) => Ok(b),
            _ => Err(Error::invalid(format!(
                "tensor '{}' is {}, not {}",
                self.name,
                self.datatype,
                T::DATATYPE
            ))),
        }
    }

    /// Borrows the elements as a typed slice, without copying. Fails when the datatype differs,
    /// or when the buffer is not aligned for `T` (a view into a larger message may not be): use
    /// [`Tensor::to_vec`] then.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        let bytes = self.check_type::<T>()?;
        bytemuck::try_cast_slice(bytes).map_err(|e| {
            Error::invalid(format!(
                "tensor '{}' cannot be viewed as {}: {e}",
                self.name,
                T::DATATYPE
            ))
        })
    }

    /// Copies the elements into a typed vector; works whatever the buffer's alignment.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let bytes = self.check_type::<T>()?;
        Ok(bytes
            .chunks_exact(std::mem::size_of::<T>())
            .map(bytemuck::pod_read_unaligned)
            .collect())
    }

    /// The elements of a `BYTES` tensor as text, for runtimes whose string tensors hold UTF-8;
    /// `runtime` names the runtime in the error for elements that are not UTF-8.
    pub fn to_utf8_strings(&self, runtime: &str) -> Result<Vec<String>> {
        let items = self.strings().ok_or_else(|| {
            Error::invalid(format!(
                "tensor '{}' is {}, not BYTES",
                self.name, self.datatype
            ))
        })?;
        items
            .iter()
            .map(|b| {
                String::from_utf8(b.to_vec()).map_err(|_| {
                    Error::invalid(format!(
                        "input '{}': {runtime} needs UTF-8 text in BYTES tensors",
                        self.name
                    ))
                })
            })
            .collect()
    }

    /// The number of rows: the size of the first dimension (1 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Concatenates tensors along the first dimension (a dynamic batcher joining requests). All
    /// parts must share the datatype and every dimension after the first; the result takes the
    /// first part's name. One part is returned as it is, without a copy.
    pub fn concat_rows(mut parts: Vec<Tensor>) -> Result<Tensor> {
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        let Some(first) = parts.first() else {
            return Err(Error::Internal("concat_rows of no tensors".into()));
        };
        let (datatype, tail) = (first.datatype, first.shape.get(1..).unwrap_or(&[]));
        if first.shape.is_empty()
            || parts
                .iter()
                .any(|p| p.datatype != datatype || p.shape.get(1..) != Some(tail))
        {
            return Err(Error::Internal(format!(
                "cannot batch tensors '{}' of different datatypes or trailing dimensions",
                first.name
            )));
        }
        let mut shape = first.shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        let name = first.name.clone();
        let data = match &first.data {
            TensorData::Raw(_) => {
                let total = parts.iter().filter_map(|p| p.raw()).map(Bytes::len).sum();
                let mut joined = Vec::with_capacity(total);
                for part in &parts {
                    joined.extend_from_slice(part.raw().map_or(&[][..], |b| &b[..]));
                }
                TensorData::Raw(Bytes::from(joined))
            }
            TensorData::Strings(_) => TensorData::Strings(
                parts
                    .iter()
                    .flat_map(|p| p.strings().unwrap_or_default().iter().cloned())
                    .collect(),
            ),
        };
        Tensor::new(name, datatype, shape, data)
    }

    /// Splits a tensor along its first dimension into consecutive pieces of `rows` rows each
    /// (they must add up to the first dimension). Fixed-size data is shared, not copied.
    pub fn split_rows(self, rows: &[usize]) -> Result<Vec<Tensor>> {
        if self.shape.first().copied() != Some(rows.iter().sum()) {
            return Err(Error::Internal(format!(
                "output '{}' of shape {:?} cannot be split into batches of {rows:?} rows",
                self.name, self.shape
            )));
        }
        if rows.len() == 1 {
            return Ok(vec![self]);
        }
        let per_row = element_count(&self.shape[1..]).unwrap_or(0);
        let mut pieces = Vec::with_capacity(rows.len());
        let mut start = 0;
        for &n in rows {
            let mut shape = self.shape.clone();
            shape[0] = n;
            let (from, to) = (start * per_row, (start + n) * per_row);
            let data = match &self.data {
                TensorData::Raw(bytes) => {
                    let size = self.datatype.size().unwrap_or(1);
                    TensorData::Raw(bytes.slice(from * size..to * size))
                }
                TensorData::Strings(items) => TensorData::Strings(items[from..to].to_vec()),
            };
            pieces.push(Tensor {
                name: self.name.clone(),
                datatype: self.datatype,
                shape,
                data,
            });
            start += n;
        }
        Ok(pieces)
    }

    /// The elements of a `BOOL` tensor.
    pub fn to_bools(&self) -> Result<Vec<bool>> {
        match (&self.data, self.datatype) {
            (TensorData::Raw(b), DataType::Bool) => Ok(b.iter().map(|&x| x != 0).collect()),
            _ => Err(Error::invalid(format!(
                "tensor '{}' is {}, not BOOL",
                self.name, self.datatype
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_name_is_built_from_any_string_and_reads_as_one() {
        let long = "x".repeat(100);
        let names: [TensorName; 6] = [
            "in".into(),
            String::from("in").into(),
            (&String::from("in")).into(),
            std::borrow::Cow::Borrowed("in").into(),
            Box::<str>::from("in").into(),
            long.as_str().into(),
        ];
        for name in &names[..5] {
            assert_eq!(name, "in");
            assert_eq!(name.as_str(), "in");
            assert_eq!(format!("{name}/{name:?}"), "in/\"in\"");
        }
        assert_eq!(names[5].as_str(), long);
        let t = Tensor::from_vec(names[5].clone(), vec![1], vec![1u8]).unwrap();
        assert_eq!(t.clone().name(), long);
        assert_eq!(t.with_name("out").into_parts().0, "out");
    }

    #[test]
    fn rows_concatenate_and_split_back_exactly() {
        let a = Tensor::from_vec("x", vec![1, 2], vec![1f32, 2.]).unwrap();
        let b = Tensor::from_vec("x", vec![2, 2], vec![3f32, 4., 5., 6.]).unwrap();
        let joined = Tensor::concat_rows(vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(joined.shape(), [3, 2]);
        assert_eq!(joined.to_vec::<f32>().unwrap(), [1., 2., 3., 4., 5., 6.]);
        assert_eq!(joined.split_rows(&[1, 2]).unwrap(), vec![a.clone(), b]);
        let s1 = Tensor::from_strings("t", vec![1], vec!["a"]).unwrap();
        let s2 = Tensor::from_strings("t", vec![2], vec!["bb", "c"]).unwrap();
        let joined = Tensor::concat_rows(vec![s1.clone(), s2.clone()]).unwrap();
        assert_eq!(joined.split_rows(&[1, 2]).unwrap(), vec![s1, s2]);
        let odd = Tensor::from_vec("x", vec![1, 3], vec![1f32, 2., 3.]).unwrap();
        assert!(Tensor::concat_rows(vec![a.clone(), odd]).is_err());
        assert!(a.split_rows(&[2]).is_err());
    }

    #[test]
    fn from_vec_keeps_the_vector_without_copying() {
        let values = vec![1.5f32, -2.0, 3.25, 4.0];
        let ptr = values.as_ptr() as *const u8;
        let t = Tensor::from_vec("x", vec![2, 2], values).unwrap();
        assert_eq!(t.raw().unwrap().as_ptr(), ptr);
        assert_eq!(t.as_slice::<f32>().unwrap(), &[1.5, -2.0, 3.25, 4.0]);
        assert_eq!(t.element_count(), 4);
    }

    #[test]
    fn typed_access_checks_the_datatype() {
        let t = Tensor::from_vec("x", vec![2], vec![1i32, 2]).unwrap();
        assert!(t.as_slice::<f32>().is_err());
        assert!(t.to_vec::<i64>().is_err());
        assert_eq!(t.to_vec::<i32>().unwrap(), vec![1, 2]);
    }

    #[test]
    fn unaligned_views_are_refused_but_copies_work() {
        let mut raw = vec![0u8];
        raw.extend_from_slice(&7i32.to_le_bytes());
        raw.extend_from_slice(&(-9i32).to_le_bytes());
        let all = Bytes::from(raw);
        let t = Tensor::new(
            "x",
            DataType::Int32,
            vec![2],
            TensorData::Raw(all.slice(1..)),
        )
        .unwrap();
        // A 1-byte offset into a heap buffer is never 4-aligned.
        assert!(t.as_slice::<i32>().is_err());
        assert_eq!(t.to_vec::<i32>().unwrap(), vec![7, -9]);
    }

    #[test]
    fn constructor_checks_data_against_shape() {
        let e = Tensor::new(
            "x",
            DataType::Fp32,
            vec![3],
            TensorData::Raw(Bytes::from(vec![0u8; 8])),
        );
        assert!(e.unwrap_err().to_string().contains("needs 12 bytes, got 8"));
        let e = Tensor::from_strings("s", vec![2], ["a"]);
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("needs 2 elements, got 1")
        );
        let e = Tensor::new(
            "x",
            DataType::Uint8,
            vec![usize::MAX, 3],
            TensorData::Raw(Bytes::new()),
        );
        assert!(e.unwrap_err().to_string().contains("too large"));
        let e = Tensor::new(
            "b",
            DataType::Bool,
            vec![1],
            TensorData::Raw(Bytes::from(vec![2u8])),
        );
        assert!(e.unwrap_err().to_string().contains("0 or 1"));
    }

    #[test]
    fn bools_and_strings_round_trip() {
        let t = Tensor::from_bools("b", vec![3], &[true, false, true]).unwrap();
        assert_eq!(t.to_bools().unwrap(), vec![true, false, true]);
        let s = Tensor::from_strings("s", vec![2], [&b"ab"[..], b"\xff"]).unwrap();
        assert_eq!(s.strings().unwrap()[1].as_ref(), b"\xff");
    }

    #[test]
    fn half_precision_elements() {
        let t =
            Tensor::from_vec("h", vec![2], vec![half::f16::from_f32(1.5), half::f16::ONE]).unwrap();
        assert_eq!(t.datatype(), DataType::Fp16);
        assert_eq!(t.raw().unwrap().len(), 4);
    }
}
