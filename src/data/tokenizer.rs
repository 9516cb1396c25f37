//! BERT uncased WordPiece tokenisation (the `tokenizers` crate), as ViLT's `BertTokenizerFast`.
//!
//! A text becomes `[CLS] wordpieces… [SEP]`, truncated to `max_len` tokens by dropping word
//! pieces from the end (the `[CLS]`/`[SEP]` pair is always kept), and a batch is right-padded
//! with `[PAD]` to its longest text. The empty string (a missing text) is `[CLS] [SEP]`.

use std::path::Path;

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The bert-base-uncased vocabulary (30522 lines), embedded so `delo init-model` needs no files.
pub const BERT_UNCASED_VOCAB: &str = include_str!("../../tests/data/bert-base-uncased-vocab.txt");

/// BERT's special tokens, matched verbatim in the input text (before lower-casing) like
/// `BertTokenizerFast` does, so "[MASK]" in a prompt stays one token.
const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// A batch of tokenised texts.
#[derive(Clone, Debug)]
pub struct TextBatch {
    /// `[B, T]` i32 token ids, `[PAD]`-padded on the right.
    pub input_ids: Tensor,
    /// `[B, T]` i32, 1 on real tokens, 0 on padding.
    pub attention_mask: Tensor,
    /// Real length of each text (with `[CLS]` and `[SEP]`).
    pub lengths: Vec<usize>,
}

/// A BERT WordPiece tokenizer with ids for the special tokens it adds.
#[derive(Clone)]
pub struct BertTokenizer {
    inner: Tokenizer,
    cls: i32,
    sep: i32,
    pad: i32,
    vocab_size: usize,
}

impl std::fmt::Debug for BertTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("cls", &self.cls)
            .field("sep", &self.sep)
            .field("pad", &self.pad)
            .finish()
    }
}

impl BertTokenizer {
    /// An uncased BERT tokenizer over a `vocab.txt` text (one token a line, id = line number);
    /// `source` names the vocabulary in errors.
    pub fn from_vocab_str(vocab: &str, source: &Path) -> Result<Self> {
        let map = WordPiece::read_bytes(vocab.as_bytes())
            .map_err(|e| Error::format(source, format!("reading the vocabulary: {e}")))?;
        let wp = WordPiece::builder()
            .vocab(map)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| Error::format(source, format!("building WordPiece: {e}")))?;
        let mut tok = Tokenizer::new(wp);
        // clean_text, handle_chinese_chars, strip_accents follows lowercase, lowercase: the
        // `BertTokenizerFast(do_lower_case=True)` pipeline of bert-base-uncased and ViLT.
        tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
        tok.with_pre_tokenizer(Some(BertPreTokenizer));
        let specials: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        tok.add_special_tokens(&specials);
        Self::wrap(tok, source)
    }

    /// Reads a `vocab.txt` file.
    pub fn from_vocab_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_vocab_str(&text, path)
    }

    /// Reads a Hugging Face `tokenizer.json` (its normaliser, pre-tokeniser and model are used
    /// as configured; its truncation, padding and post-processor are replaced by this type's
    /// BERT single-text rules).
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        // The tokenizers crate panics on a syntax error inside `decoder` (an `expect` in its
        // deserialiser) instead of returning an error: check the JSON first, with line and
        // column, and turn any other panic of the crate into an error too.
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| crate::data::cmml::json_error(path, &e))?;
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(&bytes)).map_err(|p| {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Error::format(
                path,
                format!("not a valid tokenizer.json: the tokenizers library failed on it ({why})"),
            )
        })?;
        let mut tok =
            parsed.map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))?;
        tok.with_truncation(None)
            .map_err(|e| Error::format(path, format!("disabling truncation: {e}")))?;
        tok.with_padding(None);
        Self::wrap(tok, path)
    }

    /// The tokenizer of a model directory: `tokenizer.json` when present (what
    /// `ViltProcessor` loads), else `vocab.txt`.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        if json.is_file() {
            Self::from_tokenizer_json(&json)
        } else if vocab.is_file() {
            Self::from_vocab_file(&vocab)
        } else {
            Err(Error::format(
                dir,
                "no tokenizer.json or vocab.txt in the model directory",
            ))
        }
    }

    /// bert-base-uncased from the embedded vocabulary.
    pub fn bert_base_uncased() -> Self {
        Self::from_vocab_str(
            BERT_UNCASED_VOCAB,
            Path::new("<embedded bert-base-uncased vocab>"),
        )
        .expect("the embedded vocabulary is a valid BERT vocabulary")
    }

    fn wrap(tok: Tokenizer, source: &Path) -> Result<Self> {
        let id = |t: &str| -> Result<i32> {
            tok.token_to_id(t)
                .map(|i| i as i32)
                .ok_or_else(|| Error::format(source, format!("the vocabulary has no {t} token")))
        };
        let (cls, sep, pad) = (id("[CLS]")?, id("[SEP]")?, id("[PAD]")?);
        let vocab_size = tok.get_vocab_size(true);
        Ok(BertTokenizer {
            inner: tok,
            cls,
            sep,
            pad,
            vocab_size,
        })
    }

    /// Vocabulary size including added tokens (30522 for bert-base-uncased).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The `[PAD]` id (0 for BERT).
    pub fn pad_id(&self) -> i32 {
        self.pad
    }

    /// `[CLS] pieces… [SEP]`, at most `max_len` ids (`max_len` ≥ 2).
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<i32>> {
        if max_len < 2 {
            return Err(Error::Msg(format!(
                "max_text_len {max_len} cannot hold [CLS] and [SEP]; use at least 2"
            )));
        }
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Msg(format!("tokenising {text:?}: {e}")))?;
        let pieces = enc.get_ids();
        let keep = pieces.len().min(max_len - 2);
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.cls);
        ids.extend(pieces[..keep].iter().map(|&i| i as i32));
        ids.push(self.sep);
        Ok(ids)
    }

    /// Tokenises a batch: ids and attention mask `[B, T]` with T the longest (truncated) text.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S], max_len: usize) -> Result<TextBatch> {
        self.encode_batch_bucketed(texts, max_len, 1)
    }

    /// [`BertTokenizer::encode_batch`] with the batch's length rounded up to a multiple of
    /// `bucket` tokens (at most `max_len`): batches of a run then come in a few lengths, each
    /// a static shape for a CUDA graph. Padding is masked out of attention and of q_t, so only
    /// the summation order of the padded rows' neighbours can change.
    pub fn encode_batch_bucketed<S: AsRef<str>>(
        &self,
        texts: &[S],
        max_len: usize,
        bucket: usize,
    ) -> Result<TextBatch> {
        let seqs = texts
            .iter()
            .map(|t| self.encode(t.as_ref(), max_len))
            .collect::<Result<Vec<_>>>()?;
        let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let len = longest.div_ceil(bucket.max(1)) * bucket.max(1);
        pad_batch_to(&seqs, self.pad, len.min(max_len.max(longest)))
    }
}

/// Right-pads token sequences with `pad_id` to the longest one: ids, mask and lengths.
pub fn pad_batch(seqs: &[Vec<i32>], pad_id: i32) -> Result<TextBatch> {
    pad_batch_to(seqs, pad_id, 0)
}

/// [`pad_batch`] to at least `len` tokens.
pub fn pad_batch_to(seqs: &[Vec<i32>], pad_id: i32, len: usize) -> Result<TextBatch> {
    if seqs.is_empty() {
        return Err(Error::Msg("cannot build a text batch of zero texts".into()));
    }
    let b = seqs.len();
    let t = seqs.iter().map(Vec::len).max().unwrap_or(0).max(len);
    let mut ids = vec![pad_id; b * t];
    let mut mask = vec![0i32; b * t];
    for (i, s) in seqs.iter().enumerate() {
        ids[i * t..i * t + s.len()].copy_from_slice(s);
        mask[i * t..i * t + s.len()].fill(1);
    }
    Ok(TextBatch {
        input_ids: Tensor::from_i32(ids, &[b, t])?,
        attention_mask: Tensor::from_i32(mask, &[b, t])?,
        lengths: seqs.iter().map(Vec::len).collect(),
    })
}
