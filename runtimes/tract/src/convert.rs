//! Conversions between oxinfer tensors and tract tensors, and between their datatypes.

use std::sync::Arc;

use bytes::Bytes;
use oxinfer_core::protocol::TensorMetadata;
use oxinfer_core::{DataType, Error, Result, Tensor, TensorData};
use tract_onnx::prelude::*;

pub(crate) fn datum_type(dt: DataType) -> Option<DatumType> {
    Some(match dt {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp16 => DatumType::F16,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Bytes => DatumType::String,
        DataType::Bf16 => return None,
    })
}

pub(crate) fn oip_type(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::I8 => DataType::Int8,
        DatumType::I16 => DataType::Int16,
        DatumType::I32 => DataType::Int32,
        DatumType::I64 => DataType::Int64,
        DatumType::F16 => DataType::Fp16,
        DatumType::F32 => DataType::Fp32,
        DatumType::F64 => DataType::Fp64,
        DatumType::String => DataType::Bytes,
        _ => return None,
    })
}

pub(crate) fn to_tract(t: &Tensor) -> Result<TValue> {
    let tensor = match t.data() {
        TensorData::Raw(bytes) => {
            let dt = datum_type(t.datatype()).ok_or_else(|| {
                Error::invalid(format!("tract does not support {}", t.datatype()))
            })?;
            #[allow(unsafe_code)]
            // SAFETY: `dt` is a plain fixed-size type (never String, TDim or Blob), for which any
            // byte pattern of the right length is a valid value except BOOL, whose 0/1 values
            // `Tensor::new` has checked; `from_raw_dt` checks the length against the shape and
            // copies into an aligned buffer.
            unsafe { tract_onnx::prelude::Tensor::from_raw_dt(dt, t.shape(), bytes) }
                .map_err(|e| Error::Internal(format!("{e:#}")))?
        }
        TensorData::Strings(_) => {
            let strings = t.to_utf8_strings("tract")?;
            tract_ndarray::ArrayD::from_shape_vec(t.shape(), strings)
                .map_err(|e| Error::Internal(e.to_string()))?
                .into()
        }
    };
    Ok(tensor.into_tvalue())
}

/// Lends a tract tensor's memory to a [`Bytes`] without copying it.
struct TractBytes(Arc<tract_onnx::prelude::Tensor>);

impl AsRef<[u8]> for TractBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

pub(crate) fn from_tract(meta: &TensorMetadata, value: TValue) -> Result<Tensor> {
    let tensor = value.into_arc_tensor();
    let datatype = oip_type(tensor.datum_type()).ok_or_else(|| {
        Error::Execution(format!(
            "output '{}' has type {:?}, which OIP cannot carry",
            meta.name,
            tensor.datum_type()
        ))
    })?;
    let shape = tensor.shape().to_vec();
    let plain = tensor
        .try_as_plain_ram()
        .map_err(|e| Error::Execution(format!("output '{}': {e:#}", meta.name)))?;
    let data = if datatype == DataType::Bytes {
        let strings = plain
            .as_slice::<String>()
            .map_err(|e| Error::Execution(format!("{e:#}")))?;
        TensorData::Strings(
            strings
                .iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        )
    } else {
        TensorData::Raw(Bytes::from_owner(TractBytes(tensor.clone())))
    };
    Tensor::new(&meta.name, datatype, shape, data)
}
