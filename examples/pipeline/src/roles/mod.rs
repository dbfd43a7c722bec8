//! The three roles, each a process of this binary (its `producer`, `filter` and `sink`
//! subcommands) started by the pipeline: [`producer`] renders frames with Vulkan, [`filter`]
//! inverts them (CUDA, or Vulkan and the host), [`sink`] checks, measures and reports them.

pub(crate) mod filter;
pub(crate) mod producer;
pub(crate) mod sink;
