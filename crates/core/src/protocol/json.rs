//! The REST JSON codec: `POST /v2/models/{m}/infer` bodies in, responses out.
//!
//! Decoding parses the request envelope once and keeps each input's `data` as a borrowed raw
//! JSON slice, then parses that slice straight into a typed buffer once the datatype is known
//! (the `datatype` key may come after `data`). Nested and flat arrays are both accepted and
//! flattened row-major; no intermediate `serde_json::Value` tree is built. Numeric data is read
//! by a byte loop of its own (the private `numbers` module) that gives serde_json's values bit
//! for bit and leaves everything else, errors included, to serde_json.
//!
//! Choices where the protocol is silent (documented for users in the README):
//! - FP16 and BF16 are accepted and returned as JSON numbers (Triton refuses them in JSON).
//! - For floating point inputs `null` means NaN (MLServer's convention); NaN and infinite outputs
//!   are written as `null`, as JSON has no token for them.
//! - Integer inputs must be JSON integers in range: `1.5`, `1.0`, `300` for UINT8 are errors.

use std::fmt;

use bytes::Bytes;
use half::{bf16, f16};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{self, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::numbers::{self, Scalar};
use super::{InferRequest, InferResponse, Parameter, Parameters, RequestedOutput, raw};
use crate::tensor::{Shape, bytes_from_vec, element_count};
use crate::{DataType, Element, Error, Result, Tensor, TensorData};

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow)]
    inputs: Vec<WireInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<WireRequestedOutput>>,
}

#[derive(Deserialize)]
struct WireInput<'a> {
    // The name and the datatype borrowed from the body unless escaped, and the shape inline up
    // to 4 dimensions: no allocation per input for any of them (a tensor's name is inline too).
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    shape: smallvec::SmallVec<[i64; 4]>,
    #[serde(borrow)]
    datatype: std::borrow::Cow<'a, str>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireRequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

/// serde_json appends " at line L column C" to its messages; inside a tensor's `data` slice those
/// positions are relative to the slice and would mislead, so they are dropped there.
fn without_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Checks a wire shape (`int64` dims) and returns it as `usize` dims and their element count.
pub fn check_shape(name: &str, shape: &[i64]) -> Result<(Shape, usize)> {
    let dims = shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Shape, _>>()
        .map_err(|_| {
            Error::invalid(format!(
                "input '{name}': shape {shape:?} has a negative dimension"
            ))
        })?;
    let count = element_count(&dims)
        .ok_or_else(|| Error::invalid(format!("input '{name}': shape {shape:?} is too large")))?;
    Ok((dims, count))
}

fn contains_non_finite_token(body: &[u8]) -> bool {
    [&b"NaN"[..], b"Infinity"]
        .iter()
        .any(|token| body.windows(token.len()).any(|w| w == *token))
}

/// Decodes a REST inference request: `body` is JSON, or, with the binary tensor extension,
/// `json_len` bytes of JSON (the `Inference-Header-Content-Length` header) followed by the raw
/// data of every input that carries a `binary_data_size` parameter, in input order. Binary input
/// data is sliced out of `body` without copying.
pub fn decode_infer_request(body: &Bytes, json_len: Option<usize>) -> Result<InferRequest> {
    decode_infer_request_checked(body, json_len, &|_, _, _, _| Ok(()))
}

/// The `id` of a REST inference request, read without decoding anything else (tensor data is
/// skipped, not allocated): for answering and recording a request that is refused before its
/// body is decoded. `None` when there is none or the JSON is malformed.
pub fn peek_request_id(body: &Bytes, json_len: Option<usize>) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    let json = body.get(..json_len.unwrap_or(body.len()))?;
    serde_json::from_slice::<IdOnly>(json).ok()?.id
}

/// Checks one input's name, datatype and shape before its data is decoded; the last argument
/// says whether the data will be copied out of the message (JSON values, typed gRPC contents)
/// rather than viewed in place (binary extension data, gRPC raw contents).
pub type InputCheck<'a> = dyn Fn(&str, DataType, &[usize], bool) -> Result<()> + 'a;

/// [`decode_infer_request`], calling `check` with each input's name, datatype and shape before
/// its data is decoded: a server checks them against the model first, so that data for an input
/// the model would refuse is never decoded (nor allocated).
pub fn decode_infer_request_checked(
    body: &Bytes,
    json_len: Option<usize>,
    check: &InputCheck<'_>,
) -> Result<InferRequest> {
    let json_len = match json_len {
        None => body.len(),
        Some(0) => {
            return Err(Error::invalid(
                "Inference-Header-Content-Length: 0 (a raw binary request without JSON) is not \
                 supported; send a JSON header describing the inputs",
            ));
        }
        Some(n) if n > body.len() => {
            return Err(Error::invalid(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => n,
    };
    let json = &body[..json_len];
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid(
            "request body is empty: expected a JSON inference request",
        ));
    }
    let wire: WireRequest<'_> = serde_json::from_slice(json).map_err(|e| {
        let hint = if e.is_syntax() && contains_non_finite_token(json) {
            " (JSON has no NaN or Infinity: send null for NaN in floating point data)"
        } else {
            ""
        };
        Error::invalid(format!("malformed inference request: {e}{hint}"))
    })?;
    let mut binary = body.slice(json_len..);
    let mut inputs = Vec::with_capacity(wire.inputs.len());
    for input in wire.inputs {
        inputs.push(decode_input(input, &mut binary, check)?);
    }
    if !binary.is_empty() {
        return Err(Error::invalid(format!(
            "{} bytes of binary data follow the JSON header but no input's binary_data_size \
             accounts for them",
            binary.len()
        )));
    }
    let outputs = wire
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| RequestedOutput {
            name: o.name,
            parameters: o.parameters.unwrap_or_default(),
        })
        .collect();
    Ok(InferRequest {
        id: wire.id,
        parameters: wire.parameters.unwrap_or_default(),
        inputs,
        outputs,
    })
}

fn decode_input(
    input: WireInput<'_>,
    binary: &mut Bytes,
    check: &InputCheck<'_>,
) -> Result<Tensor> {
    let name = input.name;
    let datatype: DataType = input
        .datatype
        .parse()
        .map_err(|e| Error::invalid(format!("input '{name}': {e}")))?;
    let params = input.parameters.unwrap_or_default();
    if params.contains_key("shared_memory_region") {
        return Err(Error::invalid(format!(
            "input '{name}': the shared memory extension is not supported; send the data in the \
             request"
        )));
    }
    let (shape, count) = check_shape(&name, &input.shape)?;
    check(
        &name,
        datatype,
        &shape,
        !params.contains_key("binary_data_size"),
    )?;
    if let Some(size) = params.get("binary_data_size") {
        let size = size.as_u64().ok_or_else(|| {
            Error::invalid(format!(
                "input '{name}': binary_data_size must be a non-negative integer"
            ))
        })?;
        if input.data.is_some() {
            return Err(Error::invalid(format!(
                "input '{name}' has both 'data' and binary_data_size; send one or the other"
            )));
        }
        if size > binary.len() as u64 {
            return Err(Error::invalid(format!(
                "input '{name}': binary_data_size is {size} but only {} bytes of binary data remain",
                binary.len()
            )));
        }
        let data = binary.split_to(size as usize);
        return raw::tensor_from_raw(name, datatype, shape, data);
    }
    let raw = input
        .data
        .ok_or_else(|| Error::invalid(format!("input '{name}' has no 'data'")))?;
    let data = decode_data(datatype, raw, count).map_err(|e| {
        Error::invalid(format!(
            "input '{name}' ({datatype}, shape {:?}): {e}",
            input.shape
        ))
    })?;
    Tensor::new(name, datatype, shape, data)
}

fn decode_data(datatype: DataType, raw: &RawValue, count: usize) -> Result<TensorData, String> {
    fn typed<T: JsonScalar + Element>(raw: &RawValue, count: usize) -> Result<TensorData, String> {
        Ok(TensorData::Raw(bytes_from_vec(collect::<T>(raw, count)?)))
    }
    match datatype {
        DataType::Bool => {
            let values = collect::<JsonBool>(raw, count)?;
            Ok(TensorData::Raw(Bytes::from(
                values.into_iter().map(|b| b.0 as u8).collect::<Vec<u8>>(),
            )))
        }
        DataType::Uint8 => typed::<u8>(raw, count),
        DataType::Uint16 => typed::<u16>(raw, count),
        DataType::Uint32 => typed::<u32>(raw, count),
        DataType::Uint64 => typed::<u64>(raw, count),
        DataType::Int8 => typed::<i8>(raw, count),
        DataType::Int16 => typed::<i16>(raw, count),
        DataType::Int32 => typed::<i32>(raw, count),
        DataType::Int64 => typed::<i64>(raw, count),
        DataType::Fp32 => typed::<f32>(raw, count),
        DataType::Fp64 => typed::<f64>(raw, count),
        DataType::Fp16 | DataType::Bf16 => {
            // A finite number beyond the type's range is an error, not a silent infinity (JSON
            // could not send an infinity, nor give this one back).
            fn narrow<T: Element>(
                values: Vec<f32>,
                convert: fn(f32) -> T,
                infinite: fn(&T) -> bool,
                what: DataType,
            ) -> Result<Bytes, String> {
                let out = values
                    .into_iter()
                    .map(|v| {
                        let x = convert(v);
                        if v.is_finite() && infinite(&x) {
                            Err(format!("{v} is out of range for {what}"))
                        } else {
                            Ok(x)
                        }
                    })
                    .collect::<Result<Vec<T>, String>>()?;
                Ok(bytes_from_vec(out))
            }
            let values = collect::<f32>(raw, count)?;
            Ok(TensorData::Raw(if datatype == DataType::Fp16 {
                narrow(values, f16::from_f32, |x| x.is_infinite(), datatype)?
            } else {
                narrow(values, bf16::from_f32, |x| x.is_infinite(), datatype)?
            }))
        }
        DataType::Bytes => Ok(TensorData::Strings(collect::<Bytes>(raw, count)?)),
    }
}

/// Parses `raw` (a scalar or arbitrarily nested arrays) into exactly `count` elements.
fn collect<T: JsonScalar>(raw: &RawValue, count: usize) -> Result<Vec<T>, String> {
    let text = raw.get();
    if T::NUMERIC
        && let Some(out) = collect_numeric(text, count)
    {
        return Ok(out);
    }
    collect_serde(text, count)
}

/// [`collect`] by serde_json: reads every kind of element and words every error.
fn collect_serde<T: JsonScalar>(text: &str, count: usize) -> Result<Vec<T>, String> {
    // Every element but the last takes at least two bytes of JSON (the value and a comma), so
    // this never reserves more than the data could fill for an absurd shape; and at most 64 Ki
    // elements up front, growing from there with what is really there.
    let mut out = Vec::with_capacity(count.min(text.len() / 2 + 1).min(1 << 16));
    let mut de = serde_json::Deserializer::from_str(text);
    Flatten {
        out: &mut out,
        max: count,
    }
    .deserialize(&mut de)
    .map_err(|e| without_position(&e))?;
    if out.len() != count {
        return Err(format!(
            "the shape needs {count} elements but 'data' has {}",
            out.len()
        ));
    }
    Ok(out)
}

/// [`collect`]'s fast path for numbers, booleans and nulls ([`numbers`]): the same values as the
/// serde path, or `None` for data it does not read or that does not fit (wrong type, too many or
/// too few elements), which the serde path then reads and refuses in its own words.
fn collect_numeric<T: JsonScalar>(text: &str, count: usize) -> Option<Vec<T>> {
    // Every element but the last takes at least two bytes of JSON: at most the body's size again
    // (four times, for 8-byte elements), held only while the body is.
    let mut out = Vec::with_capacity(count.min(text.len() / 2 + 1));
    let read = numbers::for_each_scalar(text.as_bytes(), |scalar| {
        let value = match scalar {
            Scalar::U64(v) => T::from_u64(v),
            Scalar::I64(v) => T::from_i64(v),
            Scalar::F64(v) => T::from_f64(v),
            Scalar::Bool(v) => T::from_bool(v),
            Scalar::Null => T::from_null(),
        };
        match value {
            Some(value) if out.len() < count => {
                out.push(value);
                true
            }
            _ => false,
        }
    });
    (read && out.len() == count).then_some(out)
}

/// An element type that can be read from one JSON scalar.
trait JsonScalar: Sized {
    const WHAT: &'static str;
    /// Read from numbers, booleans or null (the fast path applies); `false` for strings.
    const NUMERIC: bool = true;
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_null() -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

macro_rules! json_int {
    ($($t:ty => $what:literal),*) => {$(
        impl JsonScalar for $t {
            const WHAT: &'static str = $what;
            fn from_u64(v: u64) -> Option<Self> { <$t>::try_from(v).ok() }
            fn from_i64(v: i64) -> Option<Self> { <$t>::try_from(v).ok() }
        }
    )*};
}
json_int!(u8 => "UINT8 integer", u16 => "UINT16 integer", u32 => "UINT32 integer",
    u64 => "UINT64 integer", i8 => "INT8 integer", i16 => "INT16 integer",
    i32 => "INT32 integer", i64 => "INT64 integer");

impl JsonScalar for f32 {
    const WHAT: &'static str = "number";
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_f64(v: f64) -> Option<Self> {
        let x = v as f32;
        // A finite double beyond f32's range is an error, not a silent infinity.
        (x.is_finite() || !v.is_finite()).then_some(x)
    }
    fn from_null() -> Option<Self> {
        Some(f32::NAN)
    }
}

impl JsonScalar for f64 {
    const WHAT: &'static str = "number";
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_f64(v: f64) -> Option<Self> {
        Some(v)
    }
    fn from_null() -> Option<Self> {
        Some(f64::NAN)
    }
}

struct JsonBool(bool);

impl JsonScalar for JsonBool {
    const WHAT: &'static str = "boolean (true or false)";
    fn from_bool(v: bool) -> Option<Self> {
        Some(JsonBool(v))
    }
}

impl JsonScalar for Bytes {
    const WHAT: &'static str = "string";
    const NUMERIC: bool = false;
    fn from_str(v: &str) -> Option<Self> {
        Some(Bytes::copy_from_slice(v.as_bytes()))
    }
}

/// A serde seed that flattens nested arrays of scalars into `out`, refusing more than `max`.
struct Flatten<'v, T> {
    out: &'v mut Vec<T>,
    max: usize,
}

impl<T: JsonScalar> Flatten<'_, T> {
    fn push<E: de::Error>(self, v: Option<T>, shown: impl fmt::Display) -> Result<(), E> {
        let v = v.ok_or_else(|| E::custom(format!("{shown} is not a valid {}", T::WHAT)))?;
        if self.out.len() >= self.max {
            return Err(E::custom(format!(
                "'data' has more elements than the shape's {}",
                self.max
            )));
        }
        self.out.push(v);
        Ok(())
    }
}

impl<'de, T: JsonScalar> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: JsonScalar> Visitor<'de> for Flatten<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} or an array of them", T::WHAT)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Flatten {
                out: &mut *self.out,
                max: self.max,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v), v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v), v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v), v)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v), v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.push(T::from_null(), "null")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(T::from_str(v), format_args!("{v:?}"))
    }
}

/// Which outputs of a response go out as binary data (the binary tensor extension): a requested
/// output's `binary_data` parameter, else the request's `binary_data_output`, else JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BinaryOutputs {
    default: bool,
    per_output: Vec<(String, bool)>,
}

impl BinaryOutputs {
    /// Reads the choice from a request's parameters.
    pub fn from_request(request: &InferRequest) -> Self {
        let flag = |p: &Parameters, key: &str| p.get(key).and_then(Parameter::as_bool);
        BinaryOutputs {
            default: flag(&request.parameters, "binary_data_output").unwrap_or(false),
            per_output: request
                .outputs
                .iter()
                .filter_map(|o| flag(&o.parameters, "binary_data").map(|b| (o.name.clone(), b)))
                .collect(),
        }
    }

    /// Whether output `name` is sent as binary data.
    pub fn is_binary(&self, name: &str) -> bool {
        self.per_output
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.default, |(_, b)| *b)
    }

    /// Checks that [`encode_infer_response`] can write `response`: every BYTES output that goes
    /// out as JSON must be UTF-8. Lets a server count such a response as failed before it is
    /// recorded as a success.
    pub fn check_encodable(&self, response: &InferResponse) -> Result<()> {
        for t in &response.outputs {
            if self.is_binary(t.name()) {
                continue;
            }
            if let Some(items) = t.strings()
                && items.iter().any(|b| std::str::from_utf8(b).is_err())
            {
                return Err(Error::invalid(format!(
                    "output '{}' holds bytes that are not UTF-8 and cannot be sent as JSON; ask \
                     for it as binary data (binary_data_output)",
                    t.name()
                )));
            }
        }
        Ok(())
    }
}

/// An encoded REST response: the JSON, then the binary outputs' bytes, each its own buffer
/// (the output tensors' own bytes, not copied into the body; they go out as separate frames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedResponse {
    /// The JSON.
    pub json: Vec<u8>,
    /// The binary outputs' bytes, in output order, to follow the JSON (empty for a pure JSON
    /// body).
    pub binary: Vec<Bytes>,
    /// The JSON's length when binary data follows it (the `Inference-Header-Content-Length`
    /// header, with `Content-Type: application/octet-stream`); `None` for a pure JSON body.
    pub json_len: Option<usize>,
}

impl EncodedResponse {
    /// The body's length: the JSON and the binary outputs.
    pub fn len(&self) -> usize {
        self.json.len() + self.binary.iter().map(Bytes::len).sum::<usize>()
    }

    /// Whether the body is empty (never, for an encoded response).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole body in one buffer (a copy; for tests and small bodies).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.len());
        body.extend_from_slice(&self.json);
        for blob in &self.binary {
            body.extend_from_slice(blob);
        }
        body
    }
}

/// Serializes a tensor as an OIP JSON tensor: `{"name", "datatype", "shape", "data"}` with flat
/// data (fails for BYTES that are not UTF-8).
pub struct JsonTensor<'a>(pub &'a Tensor);

impl Serialize for JsonTensor<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            name: &'a str,
            datatype: DataType,
            shape: &'a [usize],
            data: JsonData<'a>,
        }
        Wire {
            name: self.0.name(),
            datatype: self.0.datatype(),
            shape: self.0.shape(),
            data: JsonData(self.0),
        }
        .serialize(s)
    }
}

/// Serializes a tensor's elements as a flat JSON array.
struct JsonData<'a>(&'a Tensor);

fn seq<T: Element + Serialize, S: Serializer>(raw: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        raw.chunks_exact(std::mem::size_of::<T>())
            .map(bytemuck::pod_read_unaligned::<T>),
    )
}

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let raw = match t.data() {
            TensorData::Raw(b) => b.as_ref(),
            TensorData::Strings(items) => {
                return s.collect_seq(
                    items
                        .iter()
                        .map(|b| std::str::from_utf8(b))
                        .map(|r| {
                            r.map_err(|_| {
                        ser::Error::custom(format!(
                            "output '{}' holds bytes that are not UTF-8 and cannot be sent as JSON",
                            t.name()
                        ))
                    })
                        })
                        .collect::<Result<Vec<_>, S::Error>>()?,
                );
            }
        };
        match t.datatype() {
            DataType::Bool => s.collect_seq(raw.iter().map(|&b| b != 0)),
            DataType::Uint8 => seq::<u8, S>(raw, s),
            DataType::Uint16 => seq::<u16, S>(raw, s),
            DataType::Uint32 => seq::<u32, S>(raw, s),
            DataType::Uint64 => seq::<u64, S>(raw, s),
            DataType::Int8 => seq::<i8, S>(raw, s),
            DataType::Int16 => seq::<i16, S>(raw, s),
            DataType::Int32 => seq::<i32, S>(raw, s),
            DataType::Int64 => seq::<i64, S>(raw, s),
            DataType::Fp32 => seq::<f32, S>(raw, s),
            DataType::Fp64 => seq::<f64, S>(raw, s),
            DataType::Fp16 => s.collect_seq(
                raw.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            DataType::Bf16 => s.collect_seq(
                raw.chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            DataType::Bytes => Err(ser::Error::custom("BYTES tensor without strings")),
        }
    }
}

/// Appends `s` to `out` as a JSON string, escaped as serde_json escapes it: a string with
/// nothing to escape is copied whole.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // No short cut: a loop without an early exit is vectorised.
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serializes");
    }
}

/// Appends an integer to `out` as JSON (as serde_json writes it).
pub fn write_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends the start of a tensor's JSON object to `out`: `{"name":...,"datatype":...,"shape":[...]`
/// (the caller adds its other fields and the closing brace).
pub fn write_tensor_head(out: &mut Vec<u8>, t: &Tensor) {
    out.extend_from_slice(b"{\"name\":");
    write_str(out, t.name());
    out.extend_from_slice(b",\"datatype\":\"");
    out.extend_from_slice(t.datatype().as_str().as_bytes());
    out.extend_from_slice(b"\",\"shape\":[");
    for (i, &d) in t.shape().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_int(out, d);
    }
    out.push(b']');
}

/// The largest integer up to which every integer is an `f32` (2^24), and each is written as
/// itself: the spacing of `f32`s there is at most 1, so no shorter decimal reads back as it.
const F32_EXACT: u32 = 1 << 24;

/// The same for `f64` (2^53).
const F64_EXACT: u64 = 1 << 53;

/// Appends an `f32` as serde_json writes it: the shortest decimal that reads back as it, `null`
/// for NaN and the infinities. An integer value (pixels, labels, masks, counts: common in
/// tensors) is written as `N.0` at once, without the shortest-digits search, which gives the
/// same bytes for it (tests: every 7th integer to 2^25, and every one to 70,000) at a third of
/// the cost.
fn write_f32(out: &mut Vec<u8>, v: f32) {
    use serde_json::ser::{CompactFormatter, Formatter};
    // NaN and out-of-range values saturate to an `i32` that does not convert back to `v`.
    let i = v as i32;
    if i as f32 == v && i.unsigned_abs() <= F32_EXACT && (i != 0 || v.is_sign_positive()) {
        write_int(out, i);
        out.extend_from_slice(b".0");
    } else if v.is_finite() {
        let _ = CompactFormatter.write_f32(out, v);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// [`write_f32`] for an `f64`.
fn write_f64(out: &mut Vec<u8>, v: f64) {
    use serde_json::ser::{CompactFormatter, Formatter};
    let i = v as i64;
    if i as f64 == v && i.unsigned_abs() <= F64_EXACT && (i != 0 || v.is_sign_positive()) {
        write_int(out, i);
        out.extend_from_slice(b".0");
    } else if v.is_finite() {
        let _ = CompactFormatter.write_f64(out, v);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends a tensor to `out` as [`JsonTensor`] serializes it, byte for byte, without serde's
/// calls per element (for REST responses and the inference log's records). Fails, writing
/// nothing, for BYTES that are not UTF-8.
pub fn write_tensor(out: &mut Vec<u8>, t: &Tensor) -> Result<()> {
    /// `[a,b,...]` of the `T`s in `raw`, each written by `write`.
    fn each<T: bytemuck::Pod>(out: &mut Vec<u8>, raw: &[u8], write: impl Fn(&mut Vec<u8>, T)) {
        let size = std::mem::size_of::<T>();
        out.reserve(2 + raw.len() / size * 4);
        out.push(b'[');
        for (i, c) in raw.chunks_exact(size).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write(out, bytemuck::pod_read_unaligned(c));
        }
        out.push(b']');
    }

    let strings = match (t.data(), t.datatype()) {
        (TensorData::Strings(items), _) => Some(
            items
                .iter()
                .map(|b| std::str::from_utf8(b))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| {
                    Error::invalid(format!(
                        "output '{}' holds bytes that are not UTF-8 and cannot be sent as JSON",
                        t.name()
                    ))
                })?,
        ),
        (TensorData::Raw(_), DataType::Bytes) => {
            return Err(Error::Internal("BYTES tensor without strings".into()));
        }
        (TensorData::Raw(_), _) => None,
    };
    write_tensor_head(out, t);
    out.extend_from_slice(b",\"data\":");
    if let Some(items) = strings {
        out.push(b'[');
        for (i, s) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, s);
        }
        out.push(b']');
    } else if let TensorData::Raw(raw) = t.data() {
        match t.datatype() {
            DataType::Bool => each::<u8>(out, raw, |out, b| {
                out.extend_from_slice(if b != 0 { b"true" } else { b"false" })
            }),
            DataType::Uint8 => each::<u8>(out, raw, write_int),
            DataType::Uint16 => each::<u16>(out, raw, write_int),
            DataType::Uint32 => each::<u32>(out, raw, write_int),
            DataType::Uint64 => each::<u64>(out, raw, write_int),
            DataType::Int8 => each::<i8>(out, raw, write_int),
            DataType::Int16 => each::<i16>(out, raw, write_int),
            DataType::Int32 => each::<i32>(out, raw, write_int),
            DataType::Int64 => each::<i64>(out, raw, write_int),
            DataType::Fp32 => each::<f32>(out, raw, write_f32),
            DataType::Fp64 => each::<f64>(out, raw, write_f64),
            DataType::Fp16 => each::<[u8; 2]>(out, raw, |out, b| {
                write_f32(out, f16::from_le_bytes(b).to_f32())
            }),
            DataType::Bf16 => each::<[u8; 2]>(out, raw, |out, b| {
                write_f32(out, bf16::from_le_bytes(b).to_f32())
            }),
            // Refused above.
            DataType::Bytes => {}
        }
    }
    out.push(b'}');
    Ok(())
}

/// Encodes an inference response: JSON with flat, row-major data, except the outputs `binary`
/// selects, whose raw bytes follow the JSON in output order.
pub fn encode_infer_response(
    response: &InferResponse,
    binary: &BinaryOutputs,
) -> Result<EncodedResponse> {
    let json_estimate: usize = response
        .outputs
        .iter()
        .filter(|t| !binary.is_binary(t.name()))
        .map(|t| t.raw().map_or(16 * t.element_count(), |b| 4 * b.len()))
        .sum();
    let mut json = Vec::with_capacity(128 + json_estimate);
    // Written field by field (serde's bytes, see the tests): a fifth less time than serde's
    // calls per key and per element, on the tiny model's response.
    json.extend_from_slice(b"{\"model_name\":");
    write_str(&mut json, &response.model_name);
    json.extend_from_slice(b",\"model_version\":");
    write_str(&mut json, &response.model_version);
    if let Some(id) = response.id.as_deref() {
        json.extend_from_slice(b",\"id\":");
        write_str(&mut json, id);
    }
    if !response.parameters.is_empty() {
        json.extend_from_slice(b",\"parameters\":");
        serde_json::to_writer(&mut json, &response.parameters)
            .map_err(|e| Error::invalid(without_position(&e)))?;
    }
    json.extend_from_slice(b",\"outputs\":[");
    let mut blobs = Vec::new();
    for (i, t) in response.outputs.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        // No `parameters` on outputs that carry JSON data: the C++ tritonclient treats any
        // output with parameters as binary (it reads a binary blob for it). Binary outputs carry
        // only `binary_data_size`.
        if binary.is_binary(t.name()) {
            let blob = raw::raw_bytes(t);
            write_tensor_head(&mut json, t);
            json.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            write_int(&mut json, blob.len());
            json.extend_from_slice(b"}}");
            blobs.push(blob);
        } else {
            write_tensor(&mut json, t)?;
        }
    }
    json.extend_from_slice(b"]}");
    blobs.retain(|b| !b.is_empty());
    let json_len = (!blobs.is_empty()).then_some(json.len());
    Ok(EncodedResponse {
        json,
        binary: blobs,
        json_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Parameter;

    fn decode(s: &str) -> Result<InferRequest> {
        decode_infer_request(&Bytes::copy_from_slice(s.as_bytes()), None)
    }

    fn err(s: &str) -> String {
        decode(s).unwrap_err().to_string()
    }

    #[test]
    fn decodes_flat_and_nested_data_the_same() {
        let flat = decode(
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2.5,3,4]}]}"#,
        )
        .unwrap();
        let nested = decode(
            r#"{"inputs":[{"name":"x","datatype":"FP32","data":[[1,2.5],[3,4]],"shape":[2,2]}]}"#,
        )
        .unwrap();
        assert_eq!(flat, nested);
        assert_eq!(
            flat.inputs[0].to_vec::<f32>().unwrap(),
            vec![1.0, 2.5, 3.0, 4.0]
        );
    }

    #[test]
    fn input_names_are_read_whether_borrowed_escaped_or_long() {
        let long = "an_input_name_longer_than_twenty_four_bytes";
        let body = format!(
            r#"{{"inputs":[
            {{"name":"plain","shape":[1],"datatype":"INT32","data":[1]}},
            {{"name":"quo\"te\u00e9","shape":[1],"datatype":"INT32","data":[2]}},
            {{"name":"{long}","shape":[1],"datatype":"INT32","data":[3]}}]}}"#
        );
        let request = decode_infer_request(&Bytes::from(body), None).unwrap();
        let names: Vec<&str> = request.inputs.iter().map(Tensor::name).collect();
        assert_eq!(names, ["plain", "quo\"te\u{e9}", long]);
        let copy = request.inputs[2].clone();
        assert_eq!(copy.name(), long);
    }

    #[test]
    fn decodes_every_json_datatype() {
        let body = r#"{"id":"r1","parameters":{"a":1,"b":"s","c":true,"d":0.5},"inputs":[
            {"name":"b","shape":[2],"datatype":"BOOL","data":[true,false]},
            {"name":"u8","shape":[2],"datatype":"UINT8","data":[0,255]},
            {"name":"u16","shape":[1],"datatype":"UINT16","data":[65535]},
            {"name":"u32","shape":[1],"datatype":"UINT32","data":[4294967295]},
            {"name":"u64","shape":[1],"datatype":"UINT64","data":[18446744073709551615]},
            {"name":"i8","shape":[2],"datatype":"INT8","data":[-128,127]},
            {"name":"i16","shape":[1],"datatype":"INT16","data":[-32768]},
            {"name":"i32","shape":[1],"datatype":"INT32","data":[-7]},
            {"name":"i64","shape":[1],"datatype":"INT64","data":[-9223372036854775808]},
            {"name":"h","shape":[1],"datatype":"FP16","data":[1.5]},
            {"name":"bh","shape":[1],"datatype":"BF16","data":[2.0]},
            {"name":"f","shape":[2],"datatype":"FP32","data":[null,1e-3]},
            {"name":"d","shape":[1],"datatype":"FP64","data":[1e300]},
            {"name":"s","shape":[2],"datatype":"BYTES","data":["h\u00e9llo",""]}
        ],"outputs":[{"name":"y","parameters":{"binary_data":false}}],"model_name":"ignored"}"#;
        let r = decode(body).unwrap();
        assert_eq!(r.id.as_deref(), Some("r1"));
        assert_eq!(r.parameters["a"], Parameter::Int64(1));
        assert_eq!(r.parameters["c"], Parameter::Bool(true));
        assert_eq!(r.outputs[0].name, "y");
        let by = |n: &str| r.inputs.iter().find(|t| t.name() == n).unwrap();
        assert_eq!(by("b").to_bools().unwrap(), vec![true, false]);
        assert_eq!(by("u8").to_vec::<u8>().unwrap(), vec![0, 255]);
        assert_eq!(by("u64").to_vec::<u64>().unwrap(), vec![u64::MAX]);
        assert_eq!(by("i8").to_vec::<i8>().unwrap(), vec![-128, 127]);
        assert_eq!(by("i64").to_vec::<i64>().unwrap(), vec![i64::MIN]);
        assert_eq!(by("h").to_vec::<f16>().unwrap(), vec![f16::from_f32(1.5)]);
        assert_eq!(
            by("bh").to_vec::<bf16>().unwrap(),
            vec![bf16::from_f32(2.0)]
        );
        assert!(by("f").to_vec::<f32>().unwrap()[0].is_nan());
        assert_eq!(by("d").to_vec::<f64>().unwrap(), vec![1e300]);
        assert_eq!(by("s").strings().unwrap()[0].as_ref(), "héllo".as_bytes());
    }

    #[test]
    fn bad_input_gets_a_clear_message() {
        let one = |dt: &str, shape: &str, data: &str| {
            err(&format!(
                r#"{{"inputs":[{{"name":"x","shape":{shape},"datatype":"{dt}","data":{data}}}]}}"#
            ))
        };
        assert!(err("").contains("request body is empty"));
        assert!(err("{").contains("malformed inference request"));
        assert!(err(r#"{"inputs":[{"name":"x"}]}"#).contains("missing field `shape`"));
        assert!(one("FP33", "[1]", "[1]").contains("unknown datatype 'FP33'"));
        assert!(one("FP32", "[3]", "[1,2]").contains("needs 3 elements but 'data' has 2"));
        assert!(one("FP32", "[1]", "[1,2]").contains("more elements than the shape's 1"));
        assert!(one("FP32", "[-1]", "[1]").contains("negative dimension"));
        // Beyond the type's range: an error, not a silent infinity.
        assert!(one("FP16", "[1]", "[65520]").contains("65520 is out of range for FP16"));
        assert!(
            one("FP32", "[1]", "[1e39]").contains("is not a valid number"),
            "{}",
            one("FP32", "[1]", "[1e39]")
        );
        assert!(!one("FP16", "[1]", "[65504, 1]").contains("out of range"));
        assert!(one("FP32", "[4294967296,4294967296,4294967296]", "[1]").contains("too large"));
        assert!(one("INT32", "[1]", r#"["a"]"#).contains("\"a\" is not a valid INT32 integer"));
        assert!(one("INT32", "[1]", "[1.5]").contains("1.5 is not a valid INT32 integer"));
        assert!(one("UINT8", "[1]", "[256]").contains("256 is not a valid UINT8"));
        assert!(one("UINT8", "[1]", "[-1]").contains("-1 is not a valid UINT8"));
        assert!(one("BOOL", "[1]", "[1]").contains("not a valid boolean"));
        assert!(one("BYTES", "[1]", "[1]").contains("1 is not a valid string"));
        assert!(one("FP32", "[1]", "[1e300]").contains("not a valid number"));
        assert!(one("FP32", "[1]", "[NaN]").contains("JSON has no NaN or Infinity"));
        assert!(one("FP32", "[1]", "[Infinity]").contains("malformed inference request"));
        assert!(
            err(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#)
                .contains("has no 'data'")
        );
    }

    #[test]
    fn absurd_shapes_do_not_allocate() {
        // 2^40 elements declared, one sent: refused without reserving 4 TiB.
        let e = err(
            r#"{"inputs":[{"name":"x","shape":[1099511627776],"datatype":"FP32","data":[1]}]}"#,
        );
        assert!(
            e.contains("needs 1099511627776 elements but 'data' has 1"),
            "{e}"
        );
    }

    #[test]
    fn encodes_flat_data_and_echoes_id() {
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: "2".into(),
            id: Some("abc".into()),
            parameters: Parameters::new(),
            outputs: vec![
                Tensor::from_vec("y", vec![2, 2], vec![1.5f32, f32::NAN, -0.0, 4.0]).unwrap(),
                Tensor::from_bools("b", vec![1], &[true]).unwrap(),
                Tensor::from_strings("s", vec![1], ["héllo"]).unwrap(),
                Tensor::from_vec("h", vec![1], vec![f16::from_f32(0.5)]).unwrap(),
            ],
        };
        let json: serde_json::Value = serde_json::from_slice(
            &encode_infer_response(&resp, &BinaryOutputs::default())
                .unwrap()
                .json,
        )
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"model_name":"m","model_version":"2","id":"abc","outputs":[
                {"name":"y","datatype":"FP32","shape":[2,2],"data":[1.5,null,-0.0,4.0]},
                {"name":"b","datatype":"BOOL","shape":[1],"data":[true]},
                {"name":"s","datatype":"BYTES","shape":[1],"data":["héllo"]},
                {"name":"h","datatype":"FP16","shape":[1],"data":[0.5]}
            ]})
        );
    }

    #[test]
    fn non_utf8_bytes_output_is_an_error_not_garbage() {
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
            parameters: Parameters::new(),
            outputs: vec![Tensor::from_strings("s", vec![1], [&b"\xff"[..]]).unwrap()],
        };
        assert!(
            encode_infer_response(&resp, &BinaryOutputs::default())
                .unwrap_err()
                .to_string()
                .contains("not UTF-8")
        );
    }

    fn binary_body(json: &str, blobs: &[&[u8]]) -> (Bytes, usize) {
        let mut body = json.as_bytes().to_vec();
        for b in blobs {
            body.extend_from_slice(b);
        }
        (Bytes::from(body), json.len())
    }

    #[test]
    fn binary_inputs_are_sliced_from_the_body() {
        let floats: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let strings =
            raw::encode_bytes_elements(&[Bytes::from_static(b"ab"), Bytes::from_static(b"\xff")]);
        let json = r#"{"inputs":[
            {"name":"f","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},
            {"name":"j","shape":[1],"datatype":"INT32","data":[7]},
            {"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}}]}"#;
        let (body, len) = binary_body(json, &[&floats, &strings]);
        let r = decode_infer_request(&body, Some(len)).unwrap();
        assert_eq!(r.inputs[0].to_vec::<f32>().unwrap(), vec![1.5, -2.0]);
        assert_eq!(
            r.inputs[0].raw().unwrap().as_ptr(),
            body[len..].as_ptr(),
            "no copy"
        );
        assert_eq!(r.inputs[1].to_vec::<i32>().unwrap(), vec![7]);
        assert_eq!(r.inputs[2].strings().unwrap()[1].as_ref(), b"\xff");
    }

    #[test]
    fn binary_input_mistakes_are_named() {
        let json = r#"{"inputs":[{"name":"f","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let e = |blobs: &[&[u8]], len: Option<usize>| {
            let (body, n) = binary_body(json, blobs);
            decode_infer_request(&body, len.or(Some(n)))
                .unwrap_err()
                .to_string()
        };
        assert!(e(&[&[0; 4]], None).contains("binary_data_size is 8 but only 4 bytes"));
        assert!(e(&[&[0; 12]], None).contains("4 bytes of binary data follow the JSON header"));
        assert!(e(&[&[0; 8]], Some(10_000)).contains("Inference-Header-Content-Length is 10000"));
        assert!(e(&[&[0; 8]], Some(0)).contains("raw binary request"));
        let both = r#"{"inputs":[{"name":"f","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#;
        let (body, n) = binary_body(both, &[&[0; 4]]);
        assert!(
            decode_infer_request(&body, Some(n))
                .unwrap_err()
                .to_string()
                .contains("both 'data' and binary_data_size")
        );
        let wrong = json.replace("FP32", "FP64");
        let (body, n) = binary_body(&wrong, &[&[0; 8]]);
        assert!(
            decode_infer_request(&body, Some(n))
                .unwrap_err()
                .to_string()
                .contains("needs 16 bytes of raw data, got 8")
        );
    }

    #[test]
    fn binary_outputs_follow_the_json_in_order() {
        let mut request = decode(r#"{"inputs":[],"parameters":{"binary_data_output":true},
            "outputs":[{"name":"a"},{"name":"b","parameters":{"binary_data":false}},{"name":"s"},{"name":"e"}]}"#).unwrap();
        let choice = BinaryOutputs::from_request(&request);
        assert!(choice.is_binary("a") && !choice.is_binary("b") && choice.is_binary("s"));
        request.parameters.clear();
        assert!(!BinaryOutputs::from_request(&request).is_binary("a"));
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
            parameters: Parameters::new(),
            outputs: vec![
                Tensor::from_vec("a", vec![2], vec![1u16, 2]).unwrap(),
                Tensor::from_vec("b", vec![1], vec![0.5f64]).unwrap(),
                Tensor::from_strings("s", vec![1], ["hé"]).unwrap(),
                Tensor::from_vec("e", vec![0], Vec::<f32>::new()).unwrap(),
            ],
        };
        let encoded = encode_infer_response(&resp, &choice).unwrap();
        let len = encoded.json_len.unwrap();
        assert_eq!(len, encoded.json.len());
        let body = encoded.to_vec();
        let json: serde_json::Value = serde_json::from_slice(&body[..len]).unwrap();
        assert_eq!(
            json["outputs"][0]["parameters"],
            serde_json::json!({"binary_data_size": 4})
        );
        assert!(json["outputs"][0].get("data").is_none());
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([0.5]));
        assert!(json["outputs"][1].get("parameters").is_none());
        assert_eq!(json["outputs"][2]["parameters"]["binary_data_size"], 7);
        assert_eq!(json["outputs"][3]["parameters"]["binary_data_size"], 0);
        assert_eq!(&body[len..], b"\x01\x00\x02\x00\x03\x00\x00\x00h\xc3\xa9");
        // The binary outputs are the tensors' own bytes, not copies.
        assert_eq!(
            encoded.binary[0].as_ptr(),
            resp.outputs[0].raw().unwrap().as_ptr()
        );
        // Only zero-size binary outputs: a pure JSON body, no header.
        let empty = InferResponse {
            outputs: vec![resp.outputs[3].clone()],
            ..resp
        };
        assert_eq!(
            encode_infer_response(&empty, &choice).unwrap().json_len,
            None
        );
    }

    /// The fast path's values, bit for bit, for comparison with the serde path's.
    trait Bits {
        fn bits(&self) -> u128;
    }
    macro_rules! bits_as {
        ($($t:ty => $e:expr),*) => {$(impl Bits for $t { fn bits(&self) -> u128 { let f: fn(&$t) -> u128 = $e; f(self) } })*};
    }
    bits_as!(f32 => |v| u128::from(v.to_bits()), f64 => |v| u128::from(v.to_bits()),
        u8 => |v| u128::from(*v), u64 => |v| u128::from(*v), i32 => |v| *v as u128,
        i64 => |v| *v as u128, JsonBool => |v| u128::from(v.0));

    /// Whenever the fast path reads `text`, the serde path reads the same values from it.
    fn agrees<T: JsonScalar + Bits>(text: &str, count: usize) -> Option<Vec<T>> {
        let fast = collect_numeric::<T>(text, count)?;
        let serde = collect_serde::<T>(text, count)
            .unwrap_or_else(|e| panic!("fast path read {text:?}, serde path refused: {e}"));
        assert_eq!(
            fast.iter().map(Bits::bits).collect::<Vec<_>>(),
            serde.iter().map(Bits::bits).collect::<Vec<_>>(),
            "{text:?}"
        );
        Some(fast)
    }

    /// A JSON number, often one near a boundary of some element type or of f64.
    fn number() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<f64>().prop_map(|v| format!("{v}")),
            any::<f64>().prop_map(|v| format!("{v:e}")),
            any::<f32>().prop_map(|v| format!("{v}")),
            any::<i64>().prop_map(|v| v.to_string()),
            any::<u64>().prop_map(|v| v.to_string()),
            (-400i32..400, 1u64..u64::MAX, any::<bool>())
                .prop_map(|(e, m, upper)| format!("{m}{}{e}", if upper { "E" } else { "e" })),
            ("-?(0|[1-9][0-9]{0,29})(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,4})?").prop_map(|s| s),
            prop::sample::select(vec![
                "0",
                "-0",
                "0.0",
                "-0.0",
                "255",
                "256",
                "-1",
                "-128",
                "127",
                "2147483647",
                "2147483648",
                "-2147483649",
                "9223372036854775807",
                "9223372036854775808",
                "-9223372036854775808",
                "-9223372036854775809",
                "18446744073709551615",
                "18446744073709551616",
                "3.4028235e38",
                "3.4028236e38",
                "3.5e38",
                "1e-46",
                "1.7976931348623157e308",
                "1.7976931348623159e308",
                "4.9e-324",
                "2.5e-324",
                "9007199254740993",
                "16777217",
                "0.1",
                "1e0",
                "1E-0",
                "null",
                "true",
                "false",
            ])
            .prop_map(String::from),
        ]
    }

    /// The integer shortcut writes what serde_json writes: every integer to 2^25 (past the
    /// shortcut's 2^24, where `f32`s are 2 apart) for `f32`, a sample for `f64`, and the values
    /// around it that must take the long way (-0.0, fractions, huge values, NaN).
    #[test]
    fn floats_holding_integers_are_written_as_serde_json_writes_them() {
        use serde_json::ser::{CompactFormatter, Formatter};
        fn serde_f32(v: f32) -> Vec<u8> {
            let mut out = Vec::new();
            if v.is_finite() {
                CompactFormatter.write_f32(&mut out, v).unwrap();
            } else {
                out.extend_from_slice(b"null");
            }
            out
        }
        fn serde_f64(v: f64) -> Vec<u8> {
            let mut out = Vec::new();
            if v.is_finite() {
                CompactFormatter.write_f64(&mut out, v).unwrap();
            } else {
                out.extend_from_slice(b"null");
            }
            out
        }
        let mut out = Vec::new();
        let mut check32 = |v: f32| {
            out.clear();
            write_f32(&mut out, v);
            assert_eq!(out, serde_f32(v), "{v:e}");
        };
        let limit = 1i32 << 25;
        for i in (-limit..=limit).step_by(7).chain(-70_000..70_000) {
            check32(i as f32);
        }
        for v in [
            -0.0,
            0.5,
            -0.5,
            1.5,
            0.1,
            1e-5,
            16_777_216.0,
            16_777_218.0,
            -16_777_218.0,
            2_147_483_648.0,
            -2_147_483_648.0,
            1e15,
            1e16,
            3e38,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            f32::EPSILON,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            check32(v);
        }
        let mut check64 = |v: f64| {
            out.clear();
            write_f64(&mut out, v);
            assert_eq!(out, serde_f64(v), "{v:e}");
        };
        let limit = 1i64 << 54;
        for i in (-limit..=limit)
            .step_by(1_234_567_891)
            .chain(-70_000..70_000)
        {
            check64(i as f64);
        }
        for v in [
            -0.0,
            0.5,
            0.1,
            9_007_199_254_740_992.0,
            9_007_199_254_740_994.0,
            1e15,
            1e16,
            1e17,
            9.3e18,
            -9.3e18,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
        ] {
            check64(v);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Valid numeric data: the fast path reads what it can, and every value it gives is the
        /// serde path's. Floats it always reads (the values types refuse are left to serde).
        #[test]
        fn the_fast_path_reads_what_serde_reads(
            elements in proptest::collection::vec(number(), 0..12),
            rows in 1usize..4,
            spaces in proptest::collection::vec(proptest::sample::select(vec!["", " ", "\n", "\t ", "\r\n"]), 4),
        ) {
            let flat = format!("[{}]", elements.join(&format!("{},{}", spaces[0], spaces[1])));
            // The same elements nested: `rows` rows of the first elements, then the rest.
            let per = elements.len().div_ceil(rows).max(1);
            let nested = format!("{}[{}]{}", spaces[2], elements
                .chunks(per)
                .map(|c| format!("[{}]", c.join(",")))
                .collect::<Vec<_>>()
                .join(&format!(",{}", spaces[3])), spaces[2]);
            for text in [flat.as_str(), nested.trim()] {
                let n = elements.len();
                agrees::<f32>(text, n);
                let float = agrees::<f64>(text, n);
                agrees::<u8>(text, n);
                agrees::<u64>(text, n);
                agrees::<i32>(text, n);
                agrees::<i64>(text, n);
                agrees::<JsonBool>(text, n);
                // Counts that do not match are left to serde, which refuses them.
                proptest::prop_assert!(collect_numeric::<f64>(text, n + 1).is_none());
                if n > 0 {
                    proptest::prop_assert!(collect_numeric::<f64>(text, n - 1).is_none());
                }
                let numbers_in_range = elements.iter().all(|e| {
                    e.parse::<f64>().is_ok_and(f64::is_finite)
                        && e.split(['e', 'E']).nth(1).is_none_or(|x| x.trim_start_matches(['+', '-']).len() <= 4)
                });
                if numbers_in_range {
                    proptest::prop_assert!(float.is_some(), "the fast path gave up on {}", text);
                }
            }
        }

        /// Arbitrary text: whatever the fast path reads, serde reads the same.
        #[test]
        fn the_fast_path_never_reads_what_serde_would_not(
            text in "[\\[\\], 0-9eE.+\\-nultrfas\"]{0,40}",
        ) {
            let n = text.matches(|c: char| c.is_ascii_digit()).count();
            for count in [0, 1, 2, n] {
                agrees::<f64>(&text, count);
                agrees::<i64>(&text, count);
                agrees::<JsonBool>(&text, count);
            }
        }

        /// The inference log's tensor writer gives serde's bytes for any data: every datatype,
        /// every bit pattern (NaN, the infinities, subnormals), names and strings to escape.
        #[test]
        fn write_tensor_writes_what_json_tensor_serializes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            name in "\\PC{0,6}|[\"\\\\\u{0}-\u{1f}a]{0,6}",
            strings in proptest::collection::vec("\\PC{0,6}|[\"\\\\\u{0}-\u{1f}\u{7f}a]{0,6}", 0..4),
        ) {
            let all = [
                DataType::Bool, DataType::Uint8, DataType::Uint16, DataType::Uint32,
                DataType::Uint64, DataType::Int8, DataType::Int16, DataType::Int32,
                DataType::Int64, DataType::Fp16, DataType::Bf16, DataType::Fp32, DataType::Fp64,
            ];
            let mut tensors = Vec::new();
            for dt in all {
                let size = dt.size().unwrap();
                let n = bytes.len() / size;
                let mut raw = bytes[..n * size].to_vec();
                if dt == DataType::Bool {
                    raw.iter_mut().for_each(|b| *b &= 1);
                }
                tensors.push(Tensor::new(name.clone(), dt, vec![1, n], TensorData::Raw(raw.into())).unwrap());
            }
            tensors.push(Tensor::from_strings(name.clone(), vec![strings.len()], strings.clone()).unwrap());
            for t in &tensors {
                let mut out = b"x".to_vec();
                write_tensor(&mut out, t).unwrap();
                let expected = serde_json::to_vec(&JsonTensor(t)).unwrap();
                proptest::prop_assert_eq!(
                    String::from_utf8_lossy(&out[1..]),
                    String::from_utf8_lossy(&expected)
                );
            }
            // BYTES that are not UTF-8: both refuse, and nothing is written.
            let t = Tensor::from_strings("b", vec![2], vec![bytes.clone(), vec![0xff]]).unwrap();
            let mut out = Vec::new();
            proptest::prop_assert!(write_tensor(&mut out, &t).is_err());
            proptest::prop_assert!(out.is_empty());
            proptest::prop_assert!(serde_json::to_vec(&JsonTensor(&t)).is_err());
        }
    }

    /// serde's rendering of a response, as [`encode_infer_response`] wrote it before it wrote
    /// responses field by field: the reference its bytes are checked against.
    #[derive(Serialize)]
    struct WireResponse<'a> {
        model_name: &'a str,
        model_version: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        #[serde(skip_serializing_if = "Parameters::is_empty")]
        parameters: &'a Parameters,
        outputs: Vec<WireOutput<'a>>,
    }

    #[derive(Serialize)]
    struct WireOutput<'a> {
        name: &'a str,
        datatype: DataType,
        shape: &'a [usize],
        #[serde(skip_serializing_if = "Option::is_none")]
        parameters: Option<BinarySize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<JsonData<'a>>,
    }

    #[derive(Serialize)]
    struct BinarySize {
        binary_data_size: usize,
    }

    fn reference_response(
        response: &InferResponse,
        binary: &BinaryOutputs,
    ) -> std::result::Result<(Vec<u8>, Vec<Bytes>), serde_json::Error> {
        let mut blobs = Vec::new();
        let outputs = response
            .outputs
            .iter()
            .map(|t| {
                if binary.is_binary(t.name()) {
                    let blob = raw::raw_bytes(t);
                    let size = blob.len();
                    blobs.push(blob);
                    WireOutput {
                        name: t.name(),
                        datatype: t.datatype(),
                        shape: t.shape(),
                        parameters: Some(BinarySize {
                            binary_data_size: size,
                        }),
                        data: None,
                    }
                } else {
                    WireOutput {
                        name: t.name(),
                        datatype: t.datatype(),
                        shape: t.shape(),
                        parameters: None,
                        data: Some(JsonData(t)),
                    }
                }
            })
            .collect();
        let json = serde_json::to_vec(&WireResponse {
            model_name: &response.model_name,
            model_version: &response.model_version,
            id: response.id.as_deref(),
            parameters: &response.parameters,
            outputs,
        })?;
        blobs.retain(|b| !b.is_empty());
        Ok((json, blobs))
    }

    proptest::proptest! {
        /// Responses are written as serde wrote them: any datatype and data, JSON or binary per
        /// output, with or without an id and parameters, names to escape.
        #[test]
        fn responses_are_written_as_serde_would_write_them(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
            name in "\\PC{0,6}|[\"\\\\\u{0}-\u{1f}a]{0,6}",
            id in proptest::option::of("\\PC{0,8}|[\"\\\\\u{0}-\u{1f}a]{0,6}"),
            default in proptest::prelude::any::<bool>(),
            pick in proptest::collection::vec(proptest::prelude::any::<bool>(), 14),
            parameters in proptest::prelude::any::<bool>(),
            double in proptest::prelude::any::<f64>(),
            int in proptest::prelude::any::<i64>(),
            utf8 in proptest::prelude::any::<bool>(),
        ) {
            let all = [
                DataType::Bool, DataType::Uint8, DataType::Uint16, DataType::Uint32,
                DataType::Uint64, DataType::Int8, DataType::Int16, DataType::Int32,
                DataType::Int64, DataType::Fp16, DataType::Bf16, DataType::Fp32, DataType::Fp64,
            ];
            let mut outputs = Vec::new();
            for (i, dt) in all.into_iter().enumerate() {
                let size = dt.size().unwrap();
                let n = bytes.len() / size;
                let mut raw = bytes[..n * size].to_vec();
                if dt == DataType::Bool {
                    raw.iter_mut().for_each(|b| *b &= 1);
                }
                outputs.push(Tensor::new(format!("{name}{i}"), dt, vec![n], TensorData::Raw(raw.into())).unwrap());
            }
            let text = if utf8 { name.clone().into_bytes() } else { vec![0xff] };
            outputs.push(Tensor::from_strings(format!("{name}s"), vec![2], vec![text, bytes.clone()]).unwrap());
            let binary = BinaryOutputs {
                default,
                per_output: outputs
                    .iter()
                    .zip(&pick)
                    .filter(|(_, p)| **p)
                    .map(|(t, _)| (t.name().to_string(), !default))
                    .collect(),
            };
            let mut response = InferResponse {
                model_name: name.clone(),
                model_version: format!("{name}v"),
                id,
                parameters: Parameters::new(),
                outputs,
            };
            if parameters {
                response.parameters.insert("sha256".into(), Parameter::String(name.clone()));
                response.parameters.insert("double".into(), Parameter::Double(double));
                response.parameters.insert("int".into(), Parameter::Int64(int));
                response.parameters.insert("flag".into(), Parameter::Bool(utf8));
            }
            match (encode_infer_response(&response, &binary), reference_response(&response, &binary)) {
                (Ok(encoded), Ok((json, blobs))) => {
                    proptest::prop_assert_eq!(
                        String::from_utf8_lossy(&encoded.json),
                        String::from_utf8_lossy(&json)
                    );
                    proptest::prop_assert_eq!(&encoded.binary, &blobs);
                    proptest::prop_assert_eq!(encoded.json_len, (!blobs.is_empty()).then_some(json.len()));
                }
                (Err(e), Err(reference)) => {
                    proptest::prop_assert_eq!(e.to_string(), Error::invalid(without_position(&reference)).to_string());
                }
                (encoded, reference) => proptest::prop_assert!(
                    false,
                    "encoded {:?}, serde {:?}",
                    encoded.map(|e| e.json),
                    reference.map(|r| r.0)
                ),
            }
        }
    }
}
