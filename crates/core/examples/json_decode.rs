//! Times the REST JSON codec on one FP32 tensor of `N` elements (default 150,528: a
//! `[1,3,224,224]` image): decoding a request, against serde_json's own parse of the same body
//! into a `Value` and its scan of it as a `RawValue` for reference, and encoding the tensor back
//! as a response:
//!
//! ```text
//! cargo run --release -p oxinfer-core --example json_decode [N]
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use oxinfer_core::bytes::Bytes;
use oxinfer_core::protocol::InferResponse;
use oxinfer_core::protocol::json::{
    BinaryOutputs, decode_infer_request_checked, encode_infer_response,
};
use serde_json::value::RawValue;

/// Runs `f` repeatedly for about half a second; the time of one run.
fn time<T>(mut f: impl FnMut() -> T) -> Duration {
    let started = Instant::now();
    let mut runs = 0u32;
    while started.elapsed() < Duration::from_millis(500) || runs < 3 {
        black_box(f());
        runs += 1;
    }
    started.elapsed() / runs
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("N: a number of elements"))
        .unwrap_or(3 * 224 * 224);
    // Values as a client formats an f32 image: the shortest text that reads back the same.
    let data: Vec<String> = (0..n)
        .map(|i| (i as f32 * 0.37).sin().to_string())
        .collect();
    let body = Bytes::from(format!(
        r#"{{"inputs":[{{"name":"x","shape":[1,{n}],"datatype":"FP32","data":[{}]}}]}}"#,
        data.join(",")
    ));
    let accept = |_: &str, _, _: &[usize], _| Ok(());
    let decode = time(|| decode_infer_request_checked(&body, None, &accept).expect("decodes"));
    let value = time(|| serde_json::from_slice::<serde_json::Value>(&body).expect("parses"));
    let scan = time(|| {
        serde_json::from_slice::<&RawValue>(&body)
            .expect("scans")
            .get()
            .len()
    });
    let request = decode_infer_request_checked(&body, None, &accept).expect("decodes");
    let response = InferResponse {
        model_name: "identity".into(),
        model_version: "1".into(),
        id: None,
        parameters: Default::default(),
        outputs: request.inputs,
    };
    let all_json = BinaryOutputs::default();
    let encode = time(|| encode_infer_response(&response, &all_json).expect("encodes"));
    let mb_s = |t: Duration| body.len() as f64 / t.as_secs_f64() / 1e6;
    println!(
        "{} bytes of JSON, {n} FP32 elements: decode {decode:.2?} ({:.0} MB/s); \
         serde_json::Value {value:.2?} ({:.0} MB/s); RawValue scan {scan:.2?} ({:.0} MB/s); \
         encode {encode:.2?}",
        body.len(),
        mb_s(decode),
        mb_s(value),
        mb_s(scan)
    );
}
