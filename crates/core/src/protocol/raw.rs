//! Raw tensor bytes as the binary tensor extension and gRPC carry them: fixed-size elements
//! little-endian and row-major; each `BYTES` element a little-endian `u32` length followed by
//! its bytes. Decoding slices the buffer it is given, without copying.

use bytes::{BufMut, Bytes, BytesMut};

use crate::tensor::{Shape, element_count};
use crate::{DataType, Error, Result, Tensor, TensorData};

/// Splits length-prefixed `BYTES` elements out of `data` (zero-copy slices).
pub fn decode_bytes_elements(name: &str, data: &Bytes) -> Result<Vec<Bytes>> {
    let mut items = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let Some(len) = data.get(at..at + 4) else {
            return Err(Error::invalid(format!(
                "input '{name}': BYTES data ends inside an element's 4-byte length prefix"
            )));
        };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let start = at + 4;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "input '{name}': BYTES element {} claims {len} bytes but only {} remain",
                    items.len(),
                    data.len() - start
                ))
            })?;
        items.push(data.slice(start..end));
        at = end;
    }
    Ok(items)
}

/// Serializes `BYTES` elements with their length prefixes.
pub fn encode_bytes_elements(items: &[Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(items.iter().map(|b| 4 + b.len()).sum());
    for item in items {
        out.put_u32_le(item.len() as u32);
        out.put_slice(item);
    }
    out.freeze()
}

/// Builds a tensor from raw bytes, checking the size against the shape.
pub fn tensor_from_raw(
    name: impl Into<crate::TensorName>,
    datatype: DataType,
    shape: impl Into<Shape>,
    data: Bytes,
) -> Result<Tensor> {
    let name = name.into();
    let shape = shape.into();
    let count = element_count(&shape)
        .ok_or_else(|| Error::invalid(format!("input '{name}': shape {shape:?} is too large")))?;
    let data = match datatype.size() {
        Some(size) => {
            if Some(data.len()) != count.checked_mul(size) {
                return Err(Error::invalid(format!(
                    "input '{name}': shape {shape:?} of {datatype} needs {} bytes of raw data, got {}",
                    count.saturating_mul(size),
                    data.len()
                )));
            }
            TensorData::Raw(data)
        }
        None => {
            let items = decode_bytes_elements(&name, &data)?;
            if items.len() != count {
                return Err(Error::invalid(format!(
                    "input '{name}': shape {shape:?} needs {count} BYTES elements, raw data has {}",
                    items.len()
                )));
            }
            TensorData::Strings(items)
        }
    };
    Tensor::new(name, datatype, shape, data)
}

/// The length of [`raw_bytes`], counted without building them: the data's bytes (`BYTES`: the
/// strings and their 4-byte length prefixes).
pub fn raw_len(tensor: &Tensor) -> usize {
    match tensor.data() {
        TensorData::Raw(b) => b.len(),
        TensorData::Strings(items) => items.iter().map(|b| b.len().saturating_add(4)).sum(),
    }
}

/// A tensor's data as raw bytes (a cheap clone for fixed-size types, an encoding for `BYTES`).
pub fn raw_bytes(tensor: &Tensor) -> Bytes {
    match tensor.data() {
        TensorData::Raw(b) => b.clone(),
        TensorData::Strings(items) => encode_bytes_elements(items),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_elements_round_trip_without_copying() {
        let items = vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"\xff\x00z"),
        ];
        let raw = encode_bytes_elements(&items);
        assert_eq!(raw.len(), 4 * 3 + 5);
        let tensor = Tensor::from_strings("s", vec![3], items.clone()).unwrap();
        assert_eq!(raw_len(&tensor), raw.len());
        let floats = Tensor::from_vec("f", vec![3], vec![1f32, 2.0, 3.0]).unwrap();
        assert_eq!(raw_len(&floats), raw_bytes(&floats).len());
        let back = decode_bytes_elements("x", &raw).unwrap();
        assert_eq!(back, items);
        assert_eq!(
            back[0].as_ptr(),
            raw[4..].as_ptr(),
            "a slice of the buffer, not a copy"
        );
    }

    #[test]
    fn truncated_bytes_are_errors() {
        let e = decode_bytes_elements("x", &Bytes::from_static(b"\x05\x00\x00\x00ab")).unwrap_err();
        assert!(
            e.to_string().contains("claims 5 bytes but only 2 remain"),
            "{e}"
        );
        let e = decode_bytes_elements("x", &Bytes::from_static(b"\x01\x00")).unwrap_err();
        assert!(
            e.to_string()
                .contains("inside an element's 4-byte length prefix"),
            "{e}"
        );
    }

    #[test]
    fn raw_sizes_are_checked() {
        let e =
            tensor_from_raw("x", DataType::Fp32, vec![2], Bytes::from(vec![0u8; 7])).unwrap_err();
        assert!(
            e.to_string().contains("needs 8 bytes of raw data, got 7"),
            "{e}"
        );
        let two = encode_bytes_elements(&[Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        let e = tensor_from_raw("s", DataType::Bytes, vec![3], two.clone()).unwrap_err();
        assert!(
            e.to_string()
                .contains("needs 3 BYTES elements, raw data has 2"),
            "{e}"
        );
        let t = tensor_from_raw("s", DataType::Bytes, vec![2], two.clone()).unwrap();
        assert_eq!(raw_bytes(&t), two);
    }
}
