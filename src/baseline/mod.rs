//! The concatenation baseline: DenseNet-BC built the textbook way on any [`Backend`], through the same
//! byte-counting allocator as the efficient path, so that its memory is *measured*, not
//! estimated. It computes the same function as [`crate::efficient::Network`] (same loss,
//! gradients and running statistics, up to f32 rounding) and is the "before" of every
//! memory and speed comparison.
//!
//! What sets it apart from the efficient path is what it keeps. Every op keeps its input for its backward, as a
//! textbook layer cache (or autograd without in-place ops) does:
//! * each dense layer builds a **fresh concatenation** of all earlier features (`c_l`
//!   channels), computes its batch statistics, and stores the **BN output** and the **ReLU
//!   output** — three `P × c_l` buffers per layer, so stored activations grow as O(L²·k);
//! * the bottleneck likewise stores the 1×1 conv output, its BN output and ReLU output
//!   (`P × 4k` each), and the layer's k new channels;
//! * a transition stores its block's concatenation, BN and ReLU outputs, the 1×1 conv output
//!   and the pooled output (textbook order: conv, then pool); the head stores the last
//!   concatenation, BN and ReLU outputs and the pooled features; the ImageNet stem stores the
//!   conv output, its BN and ReLU outputs and the max-pool output.
//!
//! Backward frees each stored buffer as soon as it has gone past the op that reads it, keeps
//! one gradient buffer per feature tensor of the block being back-propagated (as autograd
//! accumulates into each concatenated tensor's gradient), and works in place where the
//! textbook formula allows it (ReLU and BN backward overwrite the incoming gradient), so at
//! most two gradient temporaries exist besides the per-feature gradients.
//!
//! Everything a step allocates is counted under [`Category::Baseline`]; parameters, their
//! gradients, optimiser state and running statistics under [`Category::Parameters`]; the
//! input batch, labels, logits, loss and its gradient under [`Category::StemHead`]. The exact
//! schedule is replayed by [`BaselinePlan`](crate::plan::BaselinePlan) to predict the peak before
//! anything is allocated.
//!
//! [`Backend`]: crate::backend::Backend
//! [`Category::Baseline`]: crate::backend::Category::Baseline
//! [`Category::Parameters`]: crate::backend::Category::Parameters
//! [`Category::StemHead`]: crate::backend::Category::StemHead

mod network;
mod tape;

pub use network::BaselineNetwork;
