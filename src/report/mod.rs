//! What a person looks at: sample grids and plots now; the HTML report later.
pub mod grid;
pub mod plots;
