//! Pooling token vectors into one sentence vector, with the attention mask keeping padding out.

use std::path::Path;

use candle_core::{D, DType, Tensor};
use oxinfer_core::{Error, Result};
use serde::Deserialize;

/// How token vectors `[batch, seq, hidden]` become one vector per sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The mean of the token vectors the attention mask keeps (sentence-transformers'
    /// `pooling_mode_mean_tokens`).
    Mean,
    /// The first token's vector (`[CLS]`).
    Cls,
    /// The element-wise maximum over the kept tokens.
    Max,
}

/// A sentence-transformers `1_Pooling/config.json`.
#[derive(Debug, Default, Deserialize)]
struct StPoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

impl Pooling {
    /// Reads a sentence-transformers pooling config; exactly one supported mode must be on.
    pub fn from_sentence_transformers(path: &Path) -> Result<Pooling> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Load(format!("cannot read {}: {e}", path.display())))?;
        let c: StPoolingConfig = serde_json::from_str(&text)
            .map_err(|e| Error::Load(format!("cannot parse {}: {e}", path.display())))?;
        let modes = [
            (c.pooling_mode_mean_tokens, Some(Pooling::Mean), "mean"),
            (c.pooling_mode_cls_token, Some(Pooling::Cls), "cls"),
            (c.pooling_mode_max_tokens, Some(Pooling::Max), "max"),
            (c.pooling_mode_mean_sqrt_len_tokens, None, "mean_sqrt_len"),
            (c.pooling_mode_weightedmean_tokens, None, "weightedmean"),
            (c.pooling_mode_lasttoken, None, "lasttoken"),
        ];
        let on: Vec<_> = modes.iter().filter(|m| m.0).collect();
        match on.as_slice() {
            [(_, Some(p), _)] => Ok(*p),
            _ => Err(Error::Load(format!(
                "{}: pooling modes {:?} are not supported (exactly one of mean, cls, max); set \
                 the option pooling to override",
                path.display(),
                on.iter().map(|m| m.2).collect::<Vec<_>>()
            ))),
        }
    }

    /// Pools `hidden` `[batch, seq, h]` under `mask` `[batch, seq]` (1 keeps a token) into
    /// `[batch, h]`.
    pub fn apply(self, hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
            Pooling::Mean => {
                let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                // sentence-transformers clamps the token count at 1e-9.
                let counts = mask.sum(1)?.to_dtype(DType::F32)?.clamp(1e-9, f64::MAX)?;
                summed
                    .to_dtype(DType::F32)?
                    .broadcast_div(&counts)?
                    .to_dtype(hidden.dtype())
            }
            Pooling::Max => {
                // Padded positions get the dtype's lowest value, so they never win.
                let keep = mask
                    .to_dtype(DType::U8)?
                    .unsqueeze(2)?
                    .broadcast_as(hidden.shape())?;
                let floor = Tensor::new(f32::MIN, hidden.device())?
                    .to_dtype(hidden.dtype())?
                    .broadcast_as(hidden.shape())?;
                keep.where_cond(hidden, &floor)?.max(1)
            }
        }
    }
}

/// Scales each row of `[batch, h]` to unit L2 norm (norms below 1e-12 are clamped, as in
/// `torch.nn.functional.normalize`). Computed in FP32 whatever the model's dtype.
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn hidden() -> (Tensor, Tensor) {
        // Two sentences, three positions, two features; the second has one padded position
        // holding a large value that must not leak into any pooling.
        let h = Tensor::new(
            &[
                [[1f32, 2.], [3., 4.], [5., 6.]],
                [[1., -1.], [3., -3.], [100., 100.]],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &Device::Cpu).unwrap();
        (h, mask)
    }

    fn rows(t: Tensor) -> Vec<Vec<f32>> {
        t.to_vec2().unwrap()
    }

    #[test]
    fn pooling_ignores_padding() {
        let (h, m) = hidden();
        assert_eq!(
            rows(Pooling::Mean.apply(&h, &m).unwrap()),
            [[3., 4.], [2., -2.]]
        );
        assert_eq!(
            rows(Pooling::Cls.apply(&h, &m).unwrap()),
            [[1., 2.], [1., -1.]]
        );
        assert_eq!(
            rows(Pooling::Max.apply(&h, &m).unwrap()),
            [[5., 6.], [3., -1.]]
        );
    }

    #[test]
    fn normalize_gives_unit_rows() {
        let x = Tensor::new(&[[3f32, 4.], [0., 0.]], &Device::Cpu).unwrap();
        assert_eq!(rows(l2_normalize(&x).unwrap()), [[0.6, 0.8], [0., 0.]]);
    }

    #[test]
    fn sentence_transformers_config_picks_one_mode() {
        let dir = std::env::temp_dir().join(format!("oxinfer-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, r#"{"pooling_mode_cls_token": true}"#).unwrap();
        assert_eq!(
            Pooling::from_sentence_transformers(&path).unwrap(),
            Pooling::Cls
        );
        std::fs::write(
            &path,
            r#"{"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true}"#,
        )
        .unwrap();
        let e = Pooling::from_sentence_transformers(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains(r#"["mean", "max"]"#), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
