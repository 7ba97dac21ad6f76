//! What a person looks at: sample grids now; plots and the HTML report later.
pub mod grid;
