//! ViLT's pre-processing as the loader's [`SamplePrep`]: images decoded and resized on the
//! worker threads, texts tokenized and padded per batch.

use std::sync::Arc;

use crate::data::image::{collate_images, ImageProcessor, PixelImage};
use crate::data::tokenizer::BertTokenizer;
use crate::data::{Item, SamplePrep};
use crate::error::Result;
use crate::vilt::ViltInputs;

pub struct ViltPrep {
    pub tokenizer: Arc<BertTokenizer>,
    pub images: ImageProcessor,
    pub max_text_len: usize,
    /// Text lengths are rounded up to a multiple of this (1: the longest text of the batch).
    pub text_bucket: usize,
}

impl SamplePrep for ViltPrep {
    type Image = PixelImage;
    type Batch = ViltInputs;

    fn image(&self, item: &Item) -> Result<PixelImage> {
        self.images.load(&item.image_path)
    }
    fn missing_image(&self) -> Result<PixelImage> {
        Ok(self.images.missing())
    }
    fn collate(&self, images: &[&PixelImage], texts: &[&str]) -> Result<ViltInputs> {
        let img = collate_images(images)?;
        let txt =
            self.tokenizer
                .encode_batch_bucketed(texts, self.max_text_len, self.text_bucket)?;
        Ok(ViltInputs {
            input_ids: txt.input_ids,
            attention_mask: txt.attention_mask,
            token_type_ids: None,
            pixel_values: img.pixel_values.into(),
            pixel_mask: img.pixel_mask,
        })
    }
}
