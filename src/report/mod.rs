//! What a person looks at: sample grids, plots, the HTML run report, TensorBoard event files.
pub mod compare;
pub mod grid;
pub mod html;
pub mod plots;
pub mod study;
pub mod tensorboard;
