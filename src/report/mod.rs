//! What a person looks at: sample grids, plots, and the HTML run report.
pub mod compare;
pub mod grid;
pub mod html;
pub mod plots;
