//! Benchmark tools for `bench/run.py`; nothing here is part of the oxinfer server.
//!
//! - `bench-floor`: the floor, a bare axum handler that parses an OIP JSON request with two
//!   FP32 inputs, adds them and writes an OIP JSON response; what HTTP + JSON cost with nothing
//!   else.
//! - `grpc-load`: a closed-loop gRPC load generator for `ModelInfer` (any KServe v2 server),
//!   reporting requests/s and latency percentiles.
