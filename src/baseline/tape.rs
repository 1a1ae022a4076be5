//! What the baseline forward keeps for its backward (see the module docs of
//! [`crate::baseline`]). Dropping a buffer returns its bytes to the allocator, so the
//! backward frees a stored buffer by dropping it as soon as it is no longer read.

use crate::backend::Backend;

/// One feature tensor of a dense block (the block input or a layer's k new channels), or
/// its gradient: `rows × cols`, dense.
pub(super) struct Feature<B: Backend> {
    pub buf: B::Buf,
    pub cols: usize,
}

/// A BN → ReLU pair with everything the textbook keeps: the BN input (a concatenation, a
/// bottleneck output, or the ImageNet stem's conv output), its batch statistics
/// `[mean | var]`, the BN output and the ReLU output, each `rows × channels`, dense.
pub(super) struct BnRelu<B: Backend> {
    pub x: B::Buf,
    pub stats: B::Buf,
    pub bn: B::Buf,
    pub relu: B::Buf,
    pub rows: usize,
    pub channels: usize,
}

/// A dense layer: BN-ReLU of the concatenation, then (after the 1×1 conv) of the bottleneck.
/// Its output, the k new channels, is a [`Feature`] of the block.
pub(super) struct LayerTape<B: Backend> {
    pub concat: BnRelu<B>,
    pub bottleneck: BnRelu<B>,
}

/// A transition: BN-ReLU of the block's concatenation and the 1×1 conv output (the pooled
/// output is the next block's first feature).
pub(super) struct TransitionTape<B: Backend> {
    pub stage: BnRelu<B>,
    pub conv: B::Buf,
}

/// Everything a training forward stored, in the order backward consumes it from the back.
pub(super) struct Tape<B: Backend> {
    /// ImageNet stem: BN-ReLU of the conv output (whose max-pool is block 1's input).
    pub stem: Option<BnRelu<B>>,
    /// `features[b]`: block b's input, then each layer's new channels.
    pub features: Vec<Vec<Feature<B>>>,
    pub layers: Vec<Vec<LayerTape<B>>>,
    pub transitions: Vec<TransitionTape<B>>,
    /// BN-ReLU of the last block's concatenation (norm5).
    pub head: BnRelu<B>,
    /// Global average pool of the head's ReLU output (N × C).
    pub pooled: B::Buf,
}
