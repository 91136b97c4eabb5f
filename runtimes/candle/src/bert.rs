//! The BERT encoder: candle-transformers' layers, with the embeddings and the attention mask
//! built here.
//!
//! candle-transformers 0.11's `BertModel` turns the attention mask into an additive bias with
//! `(1 - mask) * f32::MIN` in the model's dtype. In f16 and bf16 `f32::MIN` rounds to `-inf`,
//! and `0 * -inf` is NaN, so every embedding comes out NaN. This module builds the bias from the
//! dtype's lowest *finite* value instead and reuses the library's `BertEncoder` for the layers;
//! the embeddings (word + position + token type, LayerNorm) are the same computation as the
//! library's.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder, embedding, layer_norm};
use candle_transformers::models::bert::{BertEncoder, Config};

/// A BERT encoder: token ids in, one hidden vector per token out.
pub struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: LayerNorm,
    encoder: BertEncoder,
    dtype: DType,
}

impl Bert {
    /// Loads the weights, with or without a `bert.` prefix on their names.
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let e = vb.pp("embeddings");
        let hidden = config.hidden_size;
        Ok(Bert {
            word: embedding(config.vocab_size, hidden, e.pp("word_embeddings"))?,
            position: embedding(
                config.max_position_embeddings,
                hidden,
                e.pp("position_embeddings"),
            )?,
            token_type: embedding(
                config.type_vocab_size,
                hidden,
                e.pp("token_type_embeddings"),
            )?,
            norm: layer_norm(hidden, config.layer_norm_eps, e.pp("LayerNorm"))?,
            encoder: BertEncoder::load(vb.pp("encoder"), config)?,
            dtype: vb.dtype(),
        })
    }

    /// `ids`, `types`, `mask`: U32 `[batch, seq]`; returns `[batch, seq, hidden]`.
    pub fn forward(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (_, seq) = ids.dims2()?;
        let positions = Tensor::arange(0u32, seq as u32, ids.device())?;
        let embeddings = (self.word.forward(ids)? + self.token_type.forward(types)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        let hidden = self.norm.forward(&embeddings)?;
        self.encoder.forward(&hidden, &self.attention_bias(mask)?)
    }

    /// `[batch, 1, 1, seq]`: 0 where the mask keeps a token, the dtype's lowest finite value
    /// where it is padding.
    fn attention_bias(&self, mask: &Tensor) -> Result<Tensor> {
        let lowest = match self.dtype {
            DType::F16 => f64::from(half::f16::MIN),
            DType::BF16 => f64::from(half::bf16::MIN),
            _ => f64::from(f32::MIN),
        };
        let keep = mask.to_dtype(DType::F32)?;
        ((1.0 - keep)? * lowest)?
            .to_dtype(self.dtype)?
            .unsqueeze(1)?
            .unsqueeze(1)
    }
}
